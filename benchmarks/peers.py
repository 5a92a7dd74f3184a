"""Peer samplers (diffusers, k-diffusion) driven by the exact score of a ``scoresde.data.toy`` mixture.

Used by ``quality_vs_nfe.py --parts low_nfe`` for the side-by-side comparison; ``python
benchmarks/peers.py --verify`` checks every score conversion on one case.  Nothing here is library
API, and the library never imports diffusers or k-diffusion (``pip install -e ".[bench]"``).

Conventions (``shared/MATH.md``): a mixture p_0 = sum_k w_k N(mu_k, Sigma_k) perturbed to
x = alpha x_0 + sigma z has the exact score ``mixture.noisy_score(x, alpha, sigma)``.  Each peer
only needs the noise level sigma_ve = sigma / alpha of the call, from which

* diffusers (epsilon prediction, VP coordinates, the DDPM chain beta 1e-4 ... 0.02 over 1000 steps
  = ``VPSDE().discrete(1000)``):  alpha = 1 / sqrt(1 + sigma_ve^2), sigma = sigma_ve alpha,
  eps(x) = -sigma * score(x; alpha, sigma).  The noise level of a call is read from the
  scheduler's own ``sigmas[i]`` (with Karras sigmas diffusers rounds the *timestep* passed to the
  model, but its solver uses the exact sigma: the exact model must be evaluated at that sigma).
  EulerDiscreteScheduler works in VE-ised coordinates; its ``scale_model_input`` divides by
  sqrt(sigma^2 + 1), after which the same eps applies.
* k-diffusion (denoiser, VE-ised coordinates x / alpha, noise level sigma_ve):
  D(x; sigma_ve) = x + sigma_ve^2 * score(x; 1, sigma_ve), on the Karras grid (rho = 7) between the
  SDE's own sigma_ve(t_min) and sigma_ve(T) with k-diffusion's appended 0.

All peers start from one standard normal draw ``z`` (common random numbers with the scoresde
samplers): diffusers' DPM / UniPC from x_T = z (their ``init_noise_sigma`` is 1), Euler from
z * init_noise_sigma, k-diffusion from z * sigma_ve(T).  NFE = model calls (counted).

k-diffusion does not install cleanly here (see pyproject.toml, extra ``bench``); when
``k_diffusion.sampling`` is not importable, ``sample_heun`` (Karras et al. 2022, Alg. 1 with the
final Euler step to sigma = 0) and ``sample_dpmpp_2m`` (Lu et al. 2022, DPM-Solver++(2M), first order
on the first step and into sigma = 0) are transcribed below from the papers, in k-diffusion's
form; they were checked against k-diffusion 0.1.1.post1's ``sampling.py`` (see RESULTS.md).
"""
from __future__ import annotations

import argparse
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000
DDPM_CONFIG = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                   prediction_type="epsilon")


# -- exact models in each library's convention ------------------------------------------------------
def exact_eps(mixture, x: torch.Tensor, sigma_ve: float) -> torch.Tensor:
    """eps-prediction at VP-coordinate ``x`` of noise level sigma_ve: -sigma * score(x; alpha, sigma)."""
    alpha = 1.0 / math.sqrt(1.0 + sigma_ve * sigma_ve)
    sigma = sigma_ve * alpha
    b = x.shape[0]
    score = mixture.noisy_score(x, x.new_full((b,), alpha), x.new_full((b,), sigma))
    return -sigma * score


def exact_denoiser(mixture, x: torch.Tensor, sigma_ve: torch.Tensor) -> torch.Tensor:
    """k-diffusion's denoiser D(x; sigma) in VE-ised coordinates: x + sigma^2 score(x; 1, sigma), ``sigma_ve: [B]``."""
    s = sigma_ve.to(x.dtype)
    score = mixture.noisy_score(x, torch.ones_like(s), s)
    return x + (s * s).reshape(-1, *([1] * (x.ndim - 1))) * score


class Counted:
    """Wrap a model to count its calls (the NFE)."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


# -- diffusers -----------------------------------------------------------------------------------
def _diffusers():
    import diffusers  # noqa: PLC0415  (optional extra)
    return diffusers


def diffusers_sample(scheduler, mixture, z: torch.Tensor, num_steps: int, *, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Run a diffusers scheduler for ``num_steps`` with the exact eps; returns (x_0 [B, d], NFE)."""
    scheduler.set_timesteps(num_steps)
    sigmas = scheduler.sigmas.to(torch.float64)
    model = Counted(lambda x, i: exact_eps(mixture, x, float(sigmas[i])))
    x = z * float(scheduler.init_noise_sigma)
    g = torch.Generator().manual_seed(seed)  # Euler draws (unused at s_churn = 0) noise at every step
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            eps = model(scheduler.scale_model_input(x, t), i)
            kwargs = {"generator": g} if "generator" in inspect.signature(scheduler.step).parameters else {}
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x, model.calls


def make_scheduler(name: str, **overrides):
    d = _diffusers()
    cls, kw = {
        "DPMSolverMultistep": (d.DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2)),
        "UniPCMultistep": (d.UniPCMultistepScheduler, dict(solver_order=2, solver_type="bh2")),
        "EulerDiscrete": (d.EulerDiscreteScheduler, {}),
    }[name]
    return cls(**DDPM_CONFIG, **{**kw, **overrides})


# -- k-diffusion ----------------------------------------------------------------------------------
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5, with k-diffusion's appended 0: ``[n + 1]`` float64."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def _heun(model, x, sigmas):
    """EDM Alg. 1: Heun steps in sigma, Euler into sigma = 0 (k-diffusion's sample_heun, no churn)."""
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, s * ones)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - model(x_next, s_next * ones)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


def _dpmpp_2m(model, x, sigmas):
    """DPM-Solver++(2M) in lambda = -log sigma (k-diffusion's sample_dpmpp_2m)."""
    ones = x.new_ones(x.shape[0])
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s * ones)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            d = denoised if old is None else (1 + h / (2 * h_last)) * denoised - h / (2 * h_last) * old
            x = (s_next / s) * x - math.expm1(-h) * d
            h_last = h
        old = denoised
    return x


@functools.lru_cache(maxsize=None)
def _kdiffusion_sampling():
    try:
        import k_diffusion.sampling  # noqa: PLC0415
        return k_diffusion.sampling
    except Exception:  # noqa: BLE001  (not installed, or its heavy package __init__ fails)
        return None


def kdiffusion_source() -> str:
    if _kdiffusion_sampling() is None:
        return "k-diffusion form, transcribed from the papers (k-diffusion not importable)"
    import k_diffusion  # noqa: PLC0415
    return f"k-diffusion {getattr(k_diffusion, '__version__', '?')}"


def kdiffusion_sample(method: str, mixture, z: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``method`` in {"heun", "dpmpp_2m"} on ``sigmas`` (with the trailing 0); returns (x_0, NFE)."""
    model = Counted(lambda x, s: exact_denoiser(mixture, x, s))
    kds = _kdiffusion_sampling()
    if kds is not None:
        fn = {"heun": kds.sample_heun, "dpmpp_2m": kds.sample_dpmpp_2m}[method]
        with torch.no_grad():
            x = fn(model, z * sigmas[0], sigmas.to(z.dtype), disable=True)
    else:
        fn = {"heun": _heun, "dpmpp_2m": _dpmpp_2m}[method]
        with torch.no_grad():
            x = fn(model, z * float(sigmas[0]), [float(s) for s in sigmas])
    return x, model.calls


# -- the peers of the benchmark -----------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    name: str
    library: str  # "diffusers" | "k-diffusion"
    method: str
    options: tuple = ()  # scheduler overrides, as (key, value) pairs
    evals_per_step: int = 1  # heun: 2 (NFE = 2 n - 1)

    def steps_for(self, nfe: int) -> int:
        """Steps (diffusers: inference steps; k-diffusion: sigmas before the 0) giving NFE <= ``nfe``."""
        return nfe if self.evals_per_step == 1 else max(1, (nfe + 1) // 2)

    def sample(self, mixture, z: torch.Tensor, nfe: int, sde, *, seed: int = 0) -> tuple[torch.Tensor, int]:
        """Samples ``[B, d]`` in data coordinates and the actual NFE, from the standard normal ``z``.

        ``sde``: the scoresde SDE whose sigma_ve range k-diffusion's Karras grid spans (diffusers
        always runs its own DDPM chain)."""
        steps = self.steps_for(nfe)
        if self.library == "diffusers":
            return diffusers_sample(make_scheduler(self.method, **dict(self.options)), mixture, z, steps, seed=seed)
        ends = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
        lo, hi = (float(v) for v in sde.sigma_ve(ends))
        return kdiffusion_sample(self.method, mixture, z, karras_sigmas(steps, lo, hi))


PEERS = (
    Peer("diffusers DPM++2M", "diffusers", "DPMSolverMultistep"),
    Peer("diffusers DPM++2M karras", "diffusers", "DPMSolverMultistep", (("use_karras_sigmas", True),)),
    Peer("diffusers UniPC", "diffusers", "UniPCMultistep"),
    Peer("diffusers UniPC karras", "diffusers", "UniPCMultistep", (("use_karras_sigmas", True),)),
    Peer("diffusers Euler karras", "diffusers", "EulerDiscrete", (("use_karras_sigmas", True),)),
    Peer("k-diffusion dpmpp_2m", "k-diffusion", "dpmpp_2m"),
    Peer("k-diffusion heun", "k-diffusion", "heun", evals_per_step=2),
)


def available_peers() -> tuple[list[Peer], dict[str, str]]:
    """The peers that can run here and, per library, what is used or why not."""
    status, peers = {}, []
    try:
        status["diffusers"] = f"diffusers {_diffusers().__version__}"
        peers += [p for p in PEERS if p.library == "diffusers"]
    except ImportError as err:
        status["diffusers"] = f"not installed ({err}); pip install -e '.[bench]'"
    status["k-diffusion"] = kdiffusion_source()
    peers += [p for p in PEERS if p.library == "k-diffusion"]
    return peers, status


# -- verification of the conversions -----------------------------------------------------------------
def _ddim_closed_form(mixture, z: torch.Tensor, sigma_ve: list[float]) -> torch.Tensor:
    """DDIM (eta = 0) in VE-ised coordinates on the noise levels ``sigma_ve`` (decreasing, > 0), then the
    final Tweedie denoise; returns data coordinates.  x~' = x~ + (s' - s) (x~ - D) / s, i.e. Euler in sigma."""
    x = z * math.sqrt(1 + sigma_ve[0] ** 2)  # VP x_T = z  ->  x~ = x / alpha
    ones = x.new_ones(x.shape[0])
    for s, s_next in zip(sigma_ve[:-1], sigma_ve[1:]):
        x = x + (s_next - s) * (x - exact_denoiser(mixture, x, s * ones)) / s
    return exact_denoiser(mixture, x, sigma_ve[-1] * ones)


def verify(n: int = 512, steps: int = 10) -> dict:
    """Max |difference| of each conversion against an independent computation of the same method (float64)."""
    from scoresde import samplers, toy  # noqa: PLC0415
    from scoresde.sdes import VPSDE  # noqa: PLC0415

    mixture = toy.anisotropic_mixture()
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    sde = VPSDE().discrete(NUM_TRAIN_TIMESTEPS)
    # (1) diffusers DPM-Solver++ order 1 (= DDIM) on its default grid vs DDIM on the same sigmas
    sched = make_scheduler("DPMSolverMultistep", solver_order=1)
    x_d, nfe = diffusers_sample(sched, mixture, z, steps)
    sig = [float(s) for s in sched.sigmas[:-1].to(torch.float64)]
    ref = _ddim_closed_form(mixture, z, sig)
    out["diffusers DPMSolverMultistep(order 1) vs DDIM closed form"] = float((x_d - ref).abs().max())
    # ... and vs scoresde's DDIM on the knots of those timesteps (needs the explicit-grid API, issue 8)
    ts = (sched.timesteps.to(torch.float64) + 1) / NUM_TRAIN_TIMESTEPS
    try:
        res = samplers.DDIM(num_steps=steps).run(mixture.score_fn(sde), sde, x_init=z.clone(),
                                                  generator=torch.Generator().manual_seed(1), ts=ts)
        out["diffusers DPMSolverMultistep(order 1) vs scoresde DDIM(ts=diffusers knots)"] = float((x_d - res.x).abs().max())
    except TypeError as err:
        out["scoresde DDIM(ts=...)"] = f"not available yet: {err}"
    # (2) diffusers Euler (Karras sigmas, VE-ised coordinates) vs DDIM on the same sigmas
    sched = make_scheduler("EulerDiscrete", use_karras_sigmas=True)
    x_e, _ = diffusers_sample(sched, mixture, z, steps)
    sig = [float(s) for s in sched.sigmas[:-1].to(torch.float64)]
    z_e = z * float(sched.init_noise_sigma) / math.sqrt(1 + sig[0] ** 2)  # Euler starts at z * sigma_max
    out["diffusers EulerDiscrete(karras) vs DDIM closed form"] = float((x_e - _ddim_closed_form(mixture, z_e, sig)).abs().max())
    # (3) k-diffusion form: one dpmpp_2m step from sigma to 0 and Heun's Euler step to 0 are the denoiser
    vp = VPSDE()
    peers = {p.method: p for p in PEERS if p.library == "k-diffusion"}
    ends = torch.tensor([vp.t_min, vp.T], dtype=torch.float64)
    lo, hi = (float(v) for v in vp.sigma_ve(ends))
    sigmas = karras_sigmas(steps, lo, hi)
    x_k, _ = peers["dpmpp_2m"].sample(mixture, z, steps, vp)
    # DPM-Solver++ order 1 (no history) = DDIM: check the 2M code path's first-order branch via a 1-step grid
    x_1, _ = kdiffusion_sample("dpmpp_2m", mixture, z, karras_sigmas(2, lo, hi))
    out["k-diffusion-form dpmpp_2m (2 sigmas) vs DDIM closed form"] = float(
        (x_1 - _ddim_closed_form(mixture, z * hi / math.sqrt(1 + hi * hi), [hi, lo])).abs().max())
    # (4) scoresde's own EDMHeun / DPMSolverPP (issue 8) against the k-diffusion forms on the same grid
    ts = vp.t_from_sigma_ve(sigmas[:-1])
    x_h, _ = peers["heun"].sample(mixture, z, 2 * steps - 1, vp)
    for label, name, kw, ref_x in (("EDMHeun", "EDMHeun", {}, x_h), ("DPMSolverPP(order 2)", "DPMSolverPP", {"order": 2}, x_k)):
        cls = getattr(samplers, name, None)
        if cls is None:
            out[f"scoresde {label}"] = "not available yet"
            continue
        x0 = z * hi * float(vp.alpha(ends[1:]))  # the same start: x = alpha(T) x~, x~ = sigma_ve(T) z
        res = cls(num_steps=steps, **kw).run(mixture.score_fn(vp), vp, x_init=x0,
                                              generator=torch.Generator().manual_seed(1), ts=ts)
        out[f"scoresde {label} vs k-diffusion form, same Karras grid"] = float((res.x - ref_x).abs().max())
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--verify", action="store_true", help="check the score conversions (float64)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(available_peers()[1])
    if args.verify:
        for k, v in verify().items():
            print(f"{k}: {v if isinstance(v, str) else f'{v:.3g}'}")
