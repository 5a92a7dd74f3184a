"""Mutation check: apply each one-line bug of ``mutants.py`` to a copy of the package and run its tests.

A small hand-written harness (mutmut / cosmic-ray rewrite and re-run far more than a shared 2-core
machine allows).  For each mutant:

1. the package, the tests, ``conf/`` and ``pyproject.toml`` are copied once into a temporary
   directory (the working tree is never touched: other work imports it meanwhile);
2. the mutant's file is rewritten in the copy with its one line replaced: the original line must
   occur exactly once (compared without leading/trailing white space, the indentation is kept),
   otherwise the mutant is reported "not applied" (the library moved under it);
3. ``python -m pytest -x -q -p no:cacheprovider <its tests>`` runs in the copy with ``PYTHONPATH``
   pointing there (the copy shadows the editable install) and the default ``-m 'not slow'``;
   a failing run is "killed", a passing one "survived" (exit code 5, nothing collected, is an error);
4. the file is restored from the clean copy.

Before the mutants, the union of all their test selections runs once on the clean copy.  A test
that fails there (other work in progress) makes the verdict of every mutant whose selection
contains it meaningless: those are reported "baseline fails" instead of killed / survived.

Usage (from the repository root)::

    python tests/mutation/run_mutants.py                 # every mutant; writes benchmarks/results/mutation.{md,json}
    python tests/mutation/run_mutants.py ema_weight ddim_noise   # only these ids (no results written)
    python tests/mutation/run_mutants.py --list          # the mutants and whether each applies
    python tests/mutation/run_mutants.py --update ID ...  # run these and merge them into the stored results

CPU time is the children's user + sys time (``resource.getrusage``), the figure that matters on a
shared machine; wall time is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS  # noqa: E402

COPIED = ("scoresde", "tests", "conf", "pyproject.toml")
RESULTS = ROOT / "benchmarks" / "results"


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutation")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def apply(text: str, original: str, mutated: str) -> str | None:
    """``text`` with the one line equal to ``original`` (stripped) replaced by ``mutated``; None if not exactly one."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == original.strip()]
    if len(hits) != 1:
        return None
    line = lines[hits[0]]
    indent = line[: len(line) - len(line.lstrip())]
    ending = "\n" if line.endswith("\n") else ""
    lines[hits[0]] = indent + mutated.strip() + ending
    return "".join(lines)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_pytest(copy: Path, tests: list[str], timeout: float, first_failure: bool = True) -> tuple[int, float, float, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", *(["-x"] if first_failure else ["-rf"]), "-q", "-p", "no:cacheprovider",
           "-n", "0", *tests]  # one process: a mutant stops at its first failing test
    cpu0, wall0 = _cpu(), time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, out = -1, f"timeout after {timeout:g} s\n{err.stdout or ''}"
    return code, _cpu() - cpu0, time.monotonic() - wall0, out


def _summary_line(out: str) -> str:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="run only these mutant ids")
    parser.add_argument("--list", action="store_true", help="list the mutants and whether each applies")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the clean run (only with ids)")
    parser.add_argument("--update", action="store_true", help="merge the given ids' rows into benchmarks/results/mutation.*")
    args = parser.parse_args(argv)

    ids = [m["id"] for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate mutant ids in mutants.py")
    unknown = sorted(set(args.ids) - set(ids))
    if unknown:
        raise SystemExit(f"unknown mutant ids: {unknown}")
    chosen = [m for m in MUTANTS if not args.ids or m["id"] in args.ids]

    if args.list:
        for m in chosen:
            ok = apply((ROOT / m["file"]).read_text(), m["original"], m["mutated"]) is not None
            print(f"{m['id']:28s} {m['file']:40s} {'applies' if ok else 'NOT APPLIED'}")
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="scoresde-mutation-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        if not args.no_baseline:
            union = sorted({t for m in chosen for t in m["tests"]})
            code, cpu, wall, out = run_pytest(copy, union, args.timeout * 3, first_failure=False)
            print(f"baseline (clean copy, {len(union)} selections): exit {code}, {cpu:.0f} s CPU, {wall:.0f} s wall")
            failing = sorted({line.split()[1].split("[")[0] for line in out.splitlines() if line.startswith("FAILED ")})
            if code != 0:
                print("failing on the clean copy:", *failing, sep="\n  ")
            baseline = {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "summary": _summary_line(out),
                        "failing": failing}
        else:
            baseline = {"cpu_s": 0.0, "wall_s": 0.0, "summary": "skipped", "failing": []}
        for m in chosen:
            path = copy / m["file"]
            clean = path.read_text()
            mutated = apply(clean, m["original"], m["mutated"])
            broken = [f for f in baseline["failing"] if any(f == t or f.startswith(t.rstrip("/") + "::") for t in m["tests"])]
            if broken:
                row = dict(id=m["id"], verdict="baseline fails", cpu_s=0.0, wall_s=0.0, summary=", ".join(broken)[:160])
            elif mutated is None:
                row = dict(id=m["id"], verdict="not applied", cpu_s=0.0, wall_s=0.0, summary="original line not found once")
            else:
                path.write_text(mutated)
                try:
                    code, cpu, wall, out = run_pytest(copy, m["tests"], args.timeout)
                finally:
                    path.write_text(clean)
                verdict = {0: "survived", 5: "error: no tests collected", -1: "killed (timeout)"}.get(code, "killed")
                if code in (2, 3, 4):
                    verdict = "error: pytest exit %d" % code
                row = dict(id=m["id"], verdict=verdict, cpu_s=round(cpu, 1), wall_s=round(wall, 1),
                           summary=_summary_line(out))
            row.update(item=m["item"], file=m["file"], original=m["original"].strip(), mutated=m["mutated"].strip(),
                       tests=m["tests"])
            rows.append(row)
            print(f"{row['id']:28s} {row['verdict']:12s} {row['cpu_s']:7.1f} s CPU  {row['summary']}", flush=True)
            if args.update or not args.ids:  # after every mutant, so that an interrupted run keeps what it measured
                _write(rows, baseline, args.update)

    killed = sum(r["verdict"].startswith("killed") for r in rows)
    total_cpu = sum(r["cpu_s"] for r in rows)
    print(f"{killed} of {len(rows)} killed; {total_cpu:.0f} s CPU in the mutant runs")
    return 0 if killed == len(rows) else 1


def _write(rows, baseline, update: bool) -> None:
    """benchmarks/results/mutation.{json,md}: these rows (merged into the stored ones with ``update``), every
    listed mutant not run yet marked "not run"."""
    by_id = {}
    if update and (RESULTS / "mutation.json").exists():
        stored = json.loads((RESULTS / "mutation.json").read_text())
        by_id = {r["id"]: r for r in stored["mutants"] if r["verdict"] != "not run"}
        if baseline["summary"] == "skipped":
            baseline = stored["baseline"]
    by_id.update({r["id"]: r for r in rows})
    out = []
    for m in MUTANTS:
        out.append(by_id.get(m["id"]) or dict(id=m["id"], verdict="not run", cpu_s=0.0, wall_s=0.0, summary="",
                                              item=m["item"], file=m["file"], original=m["original"].strip(),
                                              mutated=m["mutated"].strip(), tests=m["tests"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps({"baseline": baseline, "mutants": out}, indent=1) + "\n")
    (RESULTS / "mutation.md").write_text(_markdown(out, baseline))


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _markdown(rows, baseline) -> str:
    killed = sum(r["verdict"].startswith("killed") for r in rows)
    not_run = sum(r["verdict"] == "not run" for r in rows)
    total_cpu = sum(r["cpu_s"] for r in rows)
    out = [
        "# Mutation check",
        "",
        "One-line bugs in the core formulas (`tests/mutation/mutants.py`), each applied to a copy of the",
        "package and run against the listed default-run tests (`-x`, `-m 'not slow'`) by",
        "`python tests/mutation/run_mutants.py` (issue 20).  killed = the tests fail on the bug.",
        "",
        f"**{killed} of {len(rows)} mutants killed** ({not_run} not run yet).  CPU (user + sys of the pytest runs, 1 thread): "
        f"{total_cpu:.0f} s for the mutants, {baseline['cpu_s']:.0f} s for the clean baseline "
        f"({baseline['summary']}).",
        *([f"Tests failing on the clean copy (other work in progress): {', '.join(baseline['failing'])}."]
          if baseline["failing"] else []),
        *(["The clean baseline was skipped in this run (`--no-baseline`: a shared 2-core machine at load ~20); "
           "the selections were run on the unmutated working tree separately (see the note below the table)."]
          if baseline["summary"] == "skipped" else []),
        "",
        "| id | item | file | original | mutated | verdict | CPU s | tests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tests = ", ".join(t.replace("tests/", "") for t in r["tests"])
        out.append(f"| {r['id']} | {r['item']} | {r['file']} | {_cell(r['original'])} | {_cell(r['mutated'])} | "
                   f"{r['verdict']} | {r['cpu_s']:.1f} | {tests} |")
    if baseline.get("note"):
        out += ["", baseline["note"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
