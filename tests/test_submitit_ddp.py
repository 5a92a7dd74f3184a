"""Multi-node entry through Hydra's submitit launcher (issue 19, test 3).

``scoresde.training.distributed.cluster_variables`` maps a submitit job's or SLURM's environment to
torch.distributed's ``env://`` variables; ``scoresde.apps.ranks.task_on_ranks`` runs one DDP job
over the tasks of a submitit job.  The mapping is tested on faked environments (fast); the whole
path with submitit's local executor and 2 tasks (slow: 3 Python processes import the apps).
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde.training import load_checkpoint
from scoresde.training.distributed import cluster_variables

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    """No torchrun, SLURM or submitit variables (the test process may run inside a SLURM job)."""
    for key in list(os.environ):
        if key in TORCHRUN or key.startswith(("SLURM_", "SUBMITIT_")):
            monkeypatch.delenv(key)
    return monkeypatch


def _slurm(monkeypatch, procid: int, job_id: str = "4242") -> dict:
    """Task ``procid`` of a SLURM job of 2 nodes x 2 tasks (srun --ntasks-per-node=2), as SLURM sets it."""
    env = {"SLURM_JOB_ID": job_id, "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_PROCID": str(procid),
           "SLURM_LOCALID": str(procid % 2), "SLURM_NODEID": str(procid // 2), "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cluster_variables()


def test_slurm_tasks_map_to_torch_distributed_variables(clean_env):
    pytest.importorskip("submitit")
    tasks = [_slurm(clean_env, procid) for procid in range(4)]
    assert [t["RANK"] for t in tasks] == ["0", "1", "2", "3"]
    assert [t["LOCAL_RANK"] for t in tasks] == ["0", "1", "0", "1"]
    assert all(t["WORLD_SIZE"] == "4" and t["LOCAL_WORLD_SIZE"] == "2" for t in tasks)
    assert {t["MASTER_ADDR"] for t in tasks} == {"gpu07"}  # the job's first node
    ports = {t["MASTER_PORT"] for t in tasks}
    assert len(ports) == 1 and 20000 <= int(ports.pop()) <= 60000  # every task of the job agrees
    assert _slurm(clean_env, 0, job_id="4243")["MASTER_PORT"] != tasks[0]["MASTER_PORT"]  # another job, another port
    clean_env.setenv("MASTER_PORT", "29511")  # a port the user exported wins
    assert _slurm(clean_env, 1)["MASTER_PORT"] == "29511"


def test_submitit_local_tasks_map_to_torch_distributed_variables(clean_env):
    pytest.importorskip("submitit")
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        clean_env.setenv(key, value)
    got = cluster_variables()
    assert {k: got[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == \
        {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert got["MASTER_ADDR"] == socket.gethostname()


def test_no_cluster_variables_for_torchrun_one_task_or_none(clean_env):
    assert cluster_variables() == {}  # a plain process
    _slurm(clean_env, 0)
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "1")  # one SLURM task (a sweep job of the `cluster` launcher)
    assert cluster_variables() == {}
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.delenv("SLURM_STEP_NUM_TASKS")  # the batch script of a 4-task job: one process, not a rank
    assert cluster_variables() == {}
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "4")
    clean_env.setenv("WORLD_SIZE", "2")  # torchrun inside a SLURM allocation: torchrun's variables stand
    assert cluster_variables() == {}


def test_task_on_ranks_runs_the_task_alone_outside_a_job(clean_env):
    from scoresde.apps.ranks import task_on_ranks

    assert task_on_ranks(lambda cfg: ("ran", cfg), lambda *a: pytest.fail("no ranks here"), 3) == ("ran", 3)
    assert not torch.distributed.is_initialized()


def test_ddp_launcher_presets_compose():
    """`ddp` (SLURM): one GPU per task; `ddp_local`: 2 tasks of submitit's local executor."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scoresde.apps.schemas import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            slurm = compose("train", overrides=["hydra/launcher=ddp", "hydra.launcher.tasks_per_node=8"],
                            return_hydra_config=True).hydra.launcher
            local = compose("train", overrides=["hydra/launcher=ddp_local"], return_hydra_config=True).hydra.launcher
    finally:
        GlobalHydra.instance().clear()
    assert slurm._target_.endswith("SlurmLauncher") and slurm.tasks_per_node == slurm.gpus_per_node == 8
    assert local._target_.endswith("LocalLauncher") and local.tasks_per_node == 2


# -- the whole path: scoresde-train -m hydra/launcher=ddp_local (submitit's local executor, 2 tasks) --------


def _app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for key in list(env):
        if key in TORCHRUN or key.startswith(("SLURM_", "SUBMITIT_")):
            del env[key]
    done = subprocess.run([sys.executable, "-m", "scoresde.apps.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_submitit_launcher_with_two_tasks_trains_one_ddp_run(tmp_path):
    """`hydra/launcher=ddp_local hydra.launcher.tasks_per_node=2`: the job's 2 tasks train one DDP run
    (gloo) that equals a one-process run with the same global batch to float round-off (the bound of
    test_distributed's test 1: 1e-4 relative, ~1e-7 per step expected); rank 0 alone writes the run
    directory (one last.pt, its log file without rank 1's lines), rank 1 logs to submitit's log."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    common = ["train.num_steps=20", "train.batch_size=64", "num_samples=200", "sampler=reverse_diffusion",
              "sampler.num_steps=30"]
    _app("-m", "hydra/launcher=ddp_local", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         f"hydra.launcher.submitit_folder={tmp_path / 'submitit'}", *common, cwd=tmp_path)
    _app(f"hydra.run.dir={tmp_path / 'one'}", *common, cwd=tmp_path)

    job = tmp_path / "sweep" / "0"
    two, one = load_checkpoint(job / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert two["step"] == one["step"] == 20
    for key in ("model", "ema"):
        rel = max(float((two[key][k] - one[key][k]).abs().max() / one[key][k].abs().max().clamp_min(1e-12))
                  for k in one[key])
        assert rel < 1e-4, (key, rel)
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]
    assert (job / "metrics.json").is_file() and (job / "samples.npz").is_file()
    log = (job / "train.log").read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" not in log
    rank1 = "".join(p.read_text() for p in (tmp_path / "submitit").glob("*_1_log.*"))
    assert "rank 1 of 2" in rank1 and "training ScoreMLP" in rank1
