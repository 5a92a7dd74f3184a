"""``scoresde-fit-grid`` and ``scoresde-sample sampler.grid=fit | <file>`` (issue 17)."""
from __future__ import annotations

import json

import pytest

from scoresde.apps import fit_grid, sample, train
from scoresde.grids import FittedGrid
from test_apps import FAST, TINY_TRAIN, read_metrics, run_app

SMALL_FIT = ["fit.num_train=64", "fit.num_val=64", "fit.iterations=10"]


def test_fit_grid_writes_a_grid_file(tmp_path):
    fit_dir = tmp_path / "fit"
    run_app(fit_grid, "sampler=unipc", "sampler.num_steps=6", *SMALL_FIT, f"hydra.run.dir={fit_dir}")
    m = read_metrics(fit_dir)
    assert m["status"] == "ok" and m["app"] == "fit-grid"
    grid = FittedGrid.load(fit_dir / "grid.json")
    assert len(grid.ts) == 6 and m["fitted_grid"]["ts"] == list(grid.ts) and m["fitted_grid"]["method"] == grid.method
    val = m["fitted_grid"]["val_rmse"]
    chosen = "fitted" if grid.method == "ld3" else grid.method
    assert val[chosen] <= min(val[k] for k in ("uniform", "karras", "log_snr"))  # never worse than a standard grid
    assert m["fitted_grid"]["fit_cpu_s"] > 0
    assert not (fit_dir / "fitted_grid.json").exists()  # one file per fit


def test_sample_with_grid_fit_on_the_exact_score(tmp_path):
    run_app(sample, "sampler=dpmpp_2m", "sampler.num_steps=5", "sampler.grid=fit", *FAST, f"hydra.run.dir={tmp_path}")
    m = read_metrics(tmp_path)
    assert m["status"] == "ok" and m["nfe"] == 5
    fg = m["fitted_grid"]
    assert fg["cached"] is False and fg["path"] == str(tmp_path / "fitted_grid.json") and fg["fit_cpu_s"] > 0
    assert json.loads((tmp_path / "fitted_grid.json").read_text())["ts"] == fg["ts"]


@pytest.mark.parametrize("args, match", [
    (["sampler=pc", "sampler.grid=fit"], "deterministic fixed-grid sampler"),
    (["sampler=dpmpp_2m", "sampler.grid=fit", "guidance=exact"], "not supported with guidance"),
    (["sampler=dpmpp_2m", "sampler.grid=/no/such/grid.json"], "does not exist"),
])
def test_bad_fit_requests_fail_before_any_work(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit):
        run_app(sample, *args, *FAST, f"hydra.run.dir={tmp_path}")
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_grid_fit_is_cached_beside_the_checkpoint(tmp_path):
    run_dir = tmp_path / "train"
    run_app(train, *TINY_TRAIN, *FAST, "sampler=ddim", "sampler.num_steps=10", f"hydra.run.dir={run_dir}")
    ckpt = run_dir / "last.pt"
    args = ["sampler=dpmpp_2m", "sampler.num_steps=6", "sampler.grid=fit", f"checkpoint={ckpt}", *FAST]
    run_app(sample, *args, f"hydra.run.dir={tmp_path / 's1'}")
    first = read_metrics(tmp_path / "s1")["fitted_grid"]
    assert first["cached"] is False and first["path"].startswith(str(run_dir / "fitted_grids"))
    run_app(sample, *args, f"hydra.run.dir={tmp_path / 's2'}")
    second = read_metrics(tmp_path / "s2")["fitted_grid"]
    assert second["cached"] is True and second["path"] == first["path"] and second["ts"] == first["ts"]
    # scoresde-fit-grid with the same settings finds the same cache; its grid.json drives scoresde-sample
    run_app(fit_grid, "sampler=dpmpp_2m", "sampler.num_steps=6", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'f'}")
    assert read_metrics(tmp_path / "f")["fitted_grid"]["cached"] is True
    run_app(sample, "sampler=dpmpp_2m", "sampler.num_steps=6", f"sampler.grid={tmp_path / 'f' / 'grid.json'}",
            f"checkpoint={ckpt}", *FAST, f"hydra.run.dir={tmp_path / 's3'}")
    s3 = read_metrics(tmp_path / "s3")
    assert s3["status"] == "ok" and s3["nfe"] == 6 and "grid.json" in s3["sampler"]
