"""scoresde.grids.FittedGrid: a fitted grid is a value like any other grid (issue 17)."""
from __future__ import annotations

import json

import pytest
import torch

from scoresde import grids, toy
from scoresde.samplers import DPMSolverPP, EDMHeun, UniPC
from scoresde.sdes import VESDE, VPSDE

F64 = torch.float64


def a_grid(sde=None, num_steps=6) -> grids.FittedGrid:
    sde = sde or VPSDE()
    ts = grids.karras(sde, num_steps, sigma_min=0.05)  # any strictly decreasing grid stands in for a fit
    return grids.FittedGrid(tuple(ts.tolist()), repr(sde), "DPMSolverPP(num_steps=6)", "ld3",
                            {"val_rmse": {"fitted": 0.01, "karras": 0.3}, "cpu_s": 1.5, "seed": 0})


def test_save_load_round_trip_is_exact(tmp_path):
    g = a_grid()
    path = g.save(tmp_path / "grid.json")
    back = grids.FittedGrid.load(path)
    assert back == g and back.ts == g.ts and back.info == g.info  # floats survive JSON bit for bit
    assert torch.equal(back.ts_tensor(), torch.tensor(g.ts, dtype=F64))
    d = json.loads(path.read_text())
    assert d["format"] == "scoresde.FittedGrid" and d["method"] == "ld3" and d["sde"] == repr(VPSDE())
    assert grids.resolve_grid(str(path)) == g and grids.resolve_grid(path) == g


@pytest.mark.parametrize("cls", [DPMSolverPP, UniPC, EDMHeun])
def test_a_fitted_grid_is_usable_everywhere_a_grid_is(cls, tmp_path):
    sde = VPSDE()
    g = a_grid(sde)
    path = str(g.save(tmp_path / "g.json"))
    score = toy.TARGETS["eight_gaussians"]().score_fn(sde)
    x = sde.prior_sample((16, 2), torch.Generator().manual_seed(0))
    by_ts = cls(num_steps=6).run(score, sde, x_init=x, ts=g.ts_tensor()).x
    by_object = cls(num_steps=6, grid=g).run(score, sde, x_init=x).x
    by_file = cls(num_steps=6, grid=path).run(score, sde, x_init=x).x
    assert torch.equal(by_ts, by_object) and torch.equal(by_ts, by_file)
    assert hash(cls(num_steps=6, grid=g)) == hash(cls(num_steps=6, grid=grids.FittedGrid.load(path)))


def test_wrong_sde_or_num_steps_is_an_error_naming_it():
    g = a_grid(VPSDE())
    with pytest.raises(ValueError, match="fitted for sde VPSDE"):
        g(VESDE(), 6)
    with pytest.raises(ValueError, match="`num_steps` = 8"):
        g(VPSDE(), 8)
    sampler = DPMSolverPP(num_steps=8, grid=g)  # construction is fine; the run says what to change
    with pytest.raises(ValueError, match="set num_steps=6"):
        sampler.run(toy.TARGETS["eight_gaussians"]().score_fn(VPSDE()), VPSDE(), (4, 2))


@pytest.mark.parametrize("ts, match", [((1.0,), "strictly decreasing"), ((1.0, 1.0, 0.5), "strictly decreasing"),
                                       ((1.0, float("nan")), "strictly decreasing"), ((0.5, 0.7), "strictly decreasing")])
def test_bad_times_are_rejected(ts, match):
    with pytest.raises(ValueError, match=match):
        grids.FittedGrid(ts, repr(VPSDE()))


def test_times_outside_the_sdes_range_are_rejected_when_used():
    g = grids.FittedGrid((1.5, 0.5, 0.1), repr(VPSDE()))
    with pytest.raises(ValueError, match=r"fitted grid` must lie in \[t_min, T\]"):
        g(VPSDE(), 3)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scoresde-fit-grid"):
        grids.FittedGrid.load(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DPMSolverPP(grid=str(tmp_path / "missing.json"))  # at construction, before any work
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ValueError, match="not a fitted grid file"):
        grids.FittedGrid.load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"ts": [1.0, 0.5]}))
    with pytest.raises(ValueError, match="format"):
        grids.FittedGrid.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="`grid` must be one of .* or the path of a fitted grid"):
        grids.resolve_grid("karas")
    with pytest.raises(TypeError, match="`sde`"):
        grids.FittedGrid((1.0, 0.5), VPSDE())
