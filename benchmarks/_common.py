"""Shared plumbing of the benchmark scripts: paths, machine description, timing, JSON + Markdown output.

Imported by ``benchmarks/<name>.py`` (run from anywhere as ``python benchmarks/<name>.py``); it
sets ``OMP_NUM_THREADS=1`` unless the caller set it (before torch is imported), and puts the
repository root on ``sys.path`` when ``scoresde`` is not installed.  Nothing here is library API.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: oversubscribed threads make torch ~30x slower

ROOT = Path(__file__).resolve().parents[1]
# A smoke run (--quick) writes under results/quick/ (git-ignored), never over the committed results.
RESULTS = ROOT / "benchmarks" / "results" / ("quick" if "--quick" in sys.argv[1:] else "")
if str(ROOT) not in sys.path:
    try:
        import scoresde  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root (with the thread and
    allocator environment variables that change timings)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    names = ["OMP_NUM_THREADS"] + sorted(k for k in os.environ if k.startswith(("MALLOC_", "MKL_NUM", "OPENBLAS_NUM")))
    env = "".join(f"{k}={shlex.quote(os.environ.get(k, ''))} " for k in names)
    return env + " ".join(["python", str(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where and how the run happened (load average included: timings under load are slower)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_1_5_15": [round(v, 2) for v in load],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def machine_line(info: dict) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} thread(s), "
            f"load average {info['loadavg_1_5_15'][0]} at start, {info['date']}")


class Timer:
    """``with Timer() as t: ...``; afterwards ``t.seconds`` (wall, perf_counter) and ``t.cpu_seconds``
    (this process's CPU time, process_time).  With one thread, CPU time is close to what the wall
    time would be on an idle machine, and much less disturbed by other load."""

    def __enter__(self):
        self._start, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu


def md_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; floats are printed as given (format them first)."""
    out = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if torch.is_tensor(v):
        return _jsonable(v.tolist())
    return v


def write_results(name: str, payload: dict, markdown: str, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``<name>.json`` (non-finite floats as null) and ``<name>.md``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
