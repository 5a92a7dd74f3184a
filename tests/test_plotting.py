"""Each figure builds on tiny inputs, returns a Figure and writes a readable PNG (Agg, no pyplot)."""
import math

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from scoresde.plotting import (
    TrajectoryRecorder,
    plot_quality_vs_nfe,
    plot_sample_grid,
    plot_samples,
    plot_score_field,
    plot_trajectories,
)
from scoresde.samplers import Langevin
from scoresde.sdes import VPSDE
from scoresde.data.toy import eight_gaussians


@pytest.fixture(scope="module")
def target():
    return eight_gaussians()


def _png_ok(fig, path):
    assert isinstance(fig, Figure)
    assert path.exists() and path.stat().st_size > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_plot_samples(tmp_path, target):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "sub" / "samples.png"  # parent folders are created
    fig = plot_samples(target.sample(200, g), target.sample(300, g), title="exact", path=path)
    _png_ok(fig, path)
    assert plot_samples(torch.randn(5, 2)).axes  # no path: nothing written, figure returned


def test_plot_samples_takes_image_shaped_and_numpy_inputs(tmp_path):
    x = torch.randn(50, 1, 2, 2)  # first two of the four flattened coordinates are drawn
    path = tmp_path / "img.png"
    _png_ok(plot_samples(x.numpy(), x[:10], path=path), path)


def test_plot_samples_rejects_bad_shapes():
    with pytest.raises(ValueError, match="samples"):
        plot_samples(torch.randn(10))
    with pytest.raises(ValueError, match="at least 2 coordinates"):
        plot_samples(torch.randn(10, 1))


def test_plot_sample_grid(tmp_path, target):
    g = torch.Generator().manual_seed(1)
    panels = {f"sampler {i}": target.sample(100, g) * (1 + 0.1 * i) for i in range(5)}
    path = tmp_path / "grid.png"
    fig = plot_sample_grid(panels, target.sample(200, g), suptitle="grid", path=path)
    _png_ok(fig, path)
    assert len(fig.axes) == 5
    assert len(plot_sample_grid([("a", torch.randn(10, 2))]).axes) == 1
    with pytest.raises(ValueError, match="panels"):
        plot_sample_grid({})


def test_plot_score_field_reports_zero_error_for_identical_scores(tmp_path, target):
    sde = VPSDE()
    exact = target.score_fn(sde)
    path = tmp_path / "field.png"
    fig = plot_score_field(exact, exact, sde, [0.01, 0.3, 0.9], grid_size=7, data=target.sample(50), path=path)
    _png_ok(fig, path)
    assert len(fig.axes) == 3
    assert "error 0.000" in fig.axes[0].get_title()

    def perturbed(x, t):
        return 1.5 * exact(x, t)

    fig = plot_score_field(perturbed, exact, sde, [0.5], grid_size=5)
    assert "error 0.500" in fig.axes[0].get_title()
    assert len(plot_score_field(exact, None, sde, [0.5], grid_size=5).axes) == 1
    with pytest.raises(ValueError, match="ts"):
        plot_score_field(exact, exact, sde, [1.5])


def test_trajectory_recorder_and_plot(tmp_path, target):
    sde = VPSDE()
    x_init = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    rec = TrajectoryRecorder(4, start=x_init)
    result = Langevin(step_size=0.01, num_steps=15).run(
        target.score_fn(sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(3), callback=rec
    )
    traj = rec.trajectory
    assert traj.shape == (16, 4, 2) and traj.dtype == torch.float64
    torch.testing.assert_close(traj[0], x_init[:4].double())
    torch.testing.assert_close(traj[-1], result.x[:4].double())
    assert len(rec.times) == 16 and math.isnan(rec.times[0])
    path = tmp_path / "traj.png"
    _png_ok(plot_trajectories(rec, target.sample(100), path=path), path)
    assert plot_trajectories(traj.numpy()).axes
    sparse = TrajectoryRecorder(2, every=4)
    Langevin(step_size=0.01, num_steps=10).run(target.score_fn(sde), sde, x_init=x_init, callback=sparse)
    assert sparse.trajectory.shape == (3, 2, 2)  # steps 3, 7 and the last one, 9
    with pytest.raises(ValueError, match="every"):
        TrajectoryRecorder(2, every=0)
    with pytest.raises(ValueError, match="no steps"):
        TrajectoryRecorder(2).trajectory
    with pytest.raises(ValueError, match="num_samples"):
        TrajectoryRecorder(0)


def test_plot_quality_vs_nfe(tmp_path):
    rows = [
        {"target": tgt, "sampler": s, "nfe": nfe, "sw2_ratio": 1 + k / nfe}
        for tgt in ("a", "b")
        for k, s in enumerate(("DDPM", "DDIM", "PC"), start=1)
        for nfe in (10, 20, 50)
    ]
    rows.append({"target": "a", "sampler": "broken", "nfe": 10, "sw2_ratio": None})  # skipped
    rows.append({"target": "b", "sampler": "only_b", "nfe": 10, "sw2_ratio": 3.0})  # legend gathers all hues
    path = tmp_path / "nfe.png"
    fig = plot_quality_vs_nfe(rows, title="quality", path=path)
    _png_ok(fig, path)
    assert len(fig.axes) == 2
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"DDPM", "DDIM", "PC", "only_b"}
    assert len(plot_quality_vs_nfe(rows, panel=None, logy=False).axes) == 1
    with pytest.raises(ValueError, match="no rows"):
        plot_quality_vs_nfe(rows, y="missing")
