"""The reverse-process animation is recorded from the sampling run itself (issue 16): ``TrajectoryRecorder``."""
import numpy as np
import pytest
import torch

from scoresde import VPSDE
from scoresde.animation import TrajectoryRecorder, record_trajectory
from scoresde.data.toy import eight_gaussians
from scoresde.samplers import DDIM, AnnealedLangevin


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_recorder_keeps_the_first_particles_and_leaves_the_samples_alone():
    sde, target = VPSDE(), eight_gaussians()
    score = target.score_fn(sde)
    plain = DDIM(num_steps=8).run(score, sde, (100, 2), generator=gen())
    recorder = TrajectoryRecorder(30)
    recorded = DDIM(num_steps=8).run(score, sde, (100, 2), generator=gen(), callback=recorder)
    recorder.finish(recorded.x)
    assert torch.equal(plain.x, recorded.x) and plain.nfe == recorded.nfe  # a passive callback
    assert len(recorder.states) == 8  # one state per step; the last is the final samples: nothing appended
    assert torch.equal(recorder.states[-1][1], recorded.x[:30].double())
    frames, times = recorder.frames(max_frames=4)
    assert len(frames) == 4 and times[0] == recorder.states[0][0] and times[-1] == 0.0
    assert np.array_equal(frames[-1], recorded.x[:30].double().numpy())
    # the function that runs its own sampler gives the same frames for the same particles
    again, _ = record_trajectory(DDIM(num_steps=8), score, sde, 100, gen(), max_frames=4)
    assert np.array_equal(again[-1][:30], frames[-1])


def test_recorder_appends_a_final_denoise_that_no_step_showed():
    sde, target = VPSDE(), eight_gaussians()
    sampler = AnnealedLangevin(num_levels=3, steps_per_level=2)  # its final denoise follows the last callback
    recorder = TrajectoryRecorder(10)
    result = sampler.run(target.score_fn(sde), sde, (20, 2), generator=gen(), callback=recorder)
    recorder.finish(result.x)
    assert len(recorder.states) == 3 * 2 + 1 and recorder.states[-1][0] == 0.0
    assert torch.equal(recorder.states[-1][1], result.x[:10].double())
    assert not torch.equal(recorder.states[-2][1], recorder.states[-1][1])


@pytest.mark.slow  # a whole app run: ~40 s on a loaded 2-core machine
def test_train_app_samples_once_and_animates_that_run(tmp_path, monkeypatch):
    import scoresde.animation
    from scoresde.apps import train as train_app
    from test_apps import TINY_TRAIN, run_app

    runs, shown = [], {}
    original_run = DDIM.run
    monkeypatch.setattr(DDIM, "run", lambda self, *a, **k: runs.append(k.get("callback")) or original_run(self, *a, **k))
    original_save = scoresde.animation.save_animation
    monkeypatch.setattr(scoresde.animation, "save_animation",
                        lambda frames, path, **k: shown.update(frames=frames) or original_save(frames, path, **k))
    run_app(train_app, *TINY_TRAIN, "train.num_steps=20", "sampler=ddim", "sampler.num_steps=5", "num_samples=200",
            "eval.repeats=2", "eval.num_projections=16", "plot.animation=true", "plot.animation_points=50",
            "plot.animation_frames=3", f"hydra.run.dir={tmp_path}")
    assert len(runs) == 1 and isinstance(runs[0], TrajectoryRecorder)  # one sampling run, recorded
    samples = np.load(tmp_path / "samples.npz")["samples"]
    assert len(shown["frames"]) == 3 and np.array_equal(shown["frames"][-1].astype(np.float32), samples[:50])
    assert (tmp_path / "animation.gif").stat().st_size > 0
