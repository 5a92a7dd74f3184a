"""``scoresde-aggregate SWEEP_DIR``: summarise the jobs of a multirun directory.

Writes, in ``SWEEP_DIR``:

* ``summary.csv``: one row per job: job, status, the config-group choices, the job's overrides,
  NFE, wall times, the headline's name, the overall ``verdict`` and ``verdict_driven_by``, and for each
  metric (``metrics.json`` ``quality``) its value,
  ``<metric>_verdict`` ("at floor" / "above floor") and floor band ``<metric>_p05``, ``<metric>_p95``;
  when present, guidance
  (``guidance_scale``, ``guidance_label``, ``precision`` and ``spread`` with their per-class
  ``precision_<c>``) and likelihood (``nll``, ``nll_stderr``, ``nll_nfe``, and for exact densities
  ``nll_exact`` and ``kl_estimate`` = nll - nll_exact with ``kl_stderr``); failed jobs have
  ``status = failed`` and the error message;
* ``summary.md``: the same as a Markdown table, the headline (``floors.HEADLINE``, ``outlier_z``: the
  standardised excess of low-density samples) first, then the overall ``verdict`` (``quality.overall``:
  "at floor" / "above floor" with the metrics that drove it, Holm at 5 %), ``above_floor`` (how many
  metrics are above their own band), each metric as value and verdict, the floor bands listed once;
* ``comparison.png``: one scatter panel per job (samples over the data), titled with the job's
  overrides, its overall verdict and headline (red title: above floor), or the error of a failed job.

A job is a directory under ``SWEEP_DIR`` with Hydra's ``.hydra/`` folder; its results are its
``metrics.json`` and ``samples.npz``.  A job that died before writing ``metrics.json`` (killed, out
of memory) is reported as failed.  The ``SweepSummary`` callback runs this at the end of a
multirun; Hydra skips that hook when a job raised, hence this command.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_write, atomic_write_with
from . import figures
from ..evaluation.floors import HEADLINE

log = logging.getLogger(__name__)

__all__ = ["collect", "aggregate", "main"]

_CHOICES = ("data", "sde", "model", "sampler", "guidance", "likelihood")
_GUIDED = ("guidance_scale", "guidance_label", "precision", "spread", "spread_exact")
_NLL = ("nll", "nll_stderr", "nll_nfe", "nll_exact", "kl_estimate", "kl_stderr")
_LEADING = ("job", "status", "app", "overrides", *_CHOICES, "nfe",
            "train_s", "sample_s", "evaluate_s", "total_s")


def _job_key(path: Path) -> tuple:
    """Natural order: job 2 before job 10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path)))


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = {p.parent for p in sweep_dir.rglob("metrics.json")}
    dirs |= {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()}
    return sorted(dirs, key=lambda p: _job_key(p.relative_to(sweep_dir)))


def _overrides(job_dir: Path, record: dict) -> list[str]:
    if record.get("overrides"):
        return list(record["overrides"])
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():  # a plain YAML list of strings: "- key=value"
        return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return []


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One flat row per job of ``sweep_dir`` (see the module docstring), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        path = job_dir / "metrics.json"
        try:
            record = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError) as e:
            record = {"status": "failed", "error": f"unreadable metrics.json: {e}"}
        if record is None:
            record = {"status": "failed", "error": "no metrics.json: the job stopped before writing it"}
        rel = job_dir.relative_to(sweep_dir)
        row: dict[str, Any] = {
            "job": "." if rel == Path(".") else rel.as_posix(),
            "status": record.get("status", "failed"),
            "app": record.get("app"),
            "overrides": " ".join(_overrides(job_dir, record)),
            **{g: record.get("choices", {}).get(g) for g in _CHOICES},
            "nfe": record.get("nfe"),
            **{k: record.get("time", {}).get(k) for k in ("train_s", "sample_s", "evaluate_s", "total_s")},
        }
        quality = record.get("quality") or {}
        row["headline"] = quality.get("headline")
        overall = quality.get("overall") or {}
        row["verdict"] = overall.get("verdict")  # the overall verdict (Holm at 5 %) and what drove it
        row["verdict_driven_by"] = " ".join(overall.get("driven_by", [])) if overall else None
        if quality.get("metrics"):
            row["above_floor"] = f"{len(quality.get('above_floor', []))}/{len(quality['metrics'])}"
        for name, q in (quality.get("metrics") or {}).items():
            band = q.get("floor_band") or [None, None]
            row[name], row[f"{name}_verdict"] = q.get("value"), q.get("verdict")
            row[f"{name}_p05"], row[f"{name}_p95"] = band[0], band[1]
        row.update(_guided_columns(record))
        row.update(_nll_columns(record.get("nll")))
        row["error"] = record.get("error")
        row["_dir"] = job_dir
        rows.append(row)
    return rows


def _guided_columns(record: dict) -> dict[str, Any]:
    guidance, precision = record.get("guidance") or {}, record.get("precision")
    if guidance.get("kind") in (None, "none"):
        return {}
    row = {"guidance_scale": guidance.get("scale"), "guidance_label": guidance.get("label")}
    if precision:
        spread = record.get("spread") or {}
        row.update(precision=precision.get("mean"), spread=spread.get("mean"), spread_exact=spread.get("exact_mean"))
        row.update({f"precision_{c}": p for c, p in precision.get("per_class", {}).items()})
    return row


def _nll_columns(nll: dict | None) -> dict[str, Any]:
    if not nll:
        return {}
    keys = {"nll": "mean", "nll_stderr": "stderr", "nll_nfe": "nfe", "nll_exact": "exact_mean",
            "kl_estimate": "kl_estimate", "kl_stderr": "kl_stderr"}
    return {column: nll.get(key) for column, key in keys.items() if key in nll}


def _columns(rows: Sequence[dict]) -> list[str]:
    extra = []
    for row in rows:
        extra += [k for k in row if k not in _LEADING and k not in ("error", "_dir") and k not in extra]
    return [*_LEADING, *extra, "error"]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    columns = _columns(rows)
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write(path, f.getvalue().encode())  # a summary rewritten after every job is never half-written


def _metric_names(rows: Sequence[dict]) -> list[str]:
    """Metrics present in any row, the headline first."""
    names = [c.removesuffix("_verdict") for c in _columns(rows) if c.endswith("_verdict")]
    return sorted(names, key=lambda c: c != HEADLINE)


def _write_markdown(rows: Sequence[dict], path: Path, title: str) -> None:
    metrics = _metric_names(rows)
    common = sorted(set.intersection(*(set(r["overrides"].split()) for r in rows))) if len(rows) > 1 else []
    rows = [{**row, "overrides": label} for row, label in zip(rows, _labels(rows))]
    columns = ["job", "status", "overrides", "nfe", "sample_s", "train_s", *metrics[:1], "verdict", "above_floor",
               *metrics[1:],
               *_GUIDED[2:], *_NLL, "error"]
    columns = [c for c in columns if c in ("job", "status") or any(row.get(c) not in (None, "") for row in rows)]
    header = [f"**{c}** (headline)" if c == HEADLINE else c for c in columns]

    def cell(row, c):
        if c == "verdict" and row.get(c) is not None:
            above = row[c] == "above floor"
            text = f"**above floor** ({row.get('verdict_driven_by')})" if above else "at floor"
        elif c in metrics and row.get(c) is not None:
            above = row.get(f"{c}_verdict") == "above floor"
            text = f"{_fmt(row[c])} {'**above floor**' if above else 'at floor'}"
        else:
            text = _fmt(row.get(c))
        if c == "error":
            text = text.splitlines()[0][:120] if text else ""
        return text.replace("|", "\\|")

    bands = []
    for m in metrics:  # one line per metric when every job shares its floor band (same data and n)
        found = {(r.get(f"{m}_p05"), r.get(f"{m}_p95")) for r in rows if r.get(m) is not None}
        if len(found) == 1:
            lo, hi = found.pop()
            bands.append(f"`{m}` [{_fmt(lo)}, {_fmt(hi)}]")
    ok = sum(r["status"] == "ok" for r in rows)
    shared = f" Overrides of every job: `{' '.join(common)}`." if common else ""
    lines = [f"# {title}", "", f"{len(rows)} jobs, {ok} ok.{shared}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    lines += ["", f"Headline: `{HEADLINE}`, the larger standardised excess (k - nq) / sqrt(nq(1-q)) of samples below "
              "the 0.1 % and 1 % quantiles of the data's log-density (`outlier_rate_0.1pct`, `outlier_rate_1pct`: "
              "exact samples 0.001 and 0.01). Each metric reads *at floor* or **above floor** against the "
              "5-95 % band of the same metric between exact samples of the same size (summary.csv: `_p05`, `_p95`); "
              "`above_floor`: how many metrics are above their own band. "
              "`verdict`: the overall verdict, *at floor* or **above floor** with the metrics that drove it: "
              "Holm-Bonferroni at 5 % over the metrics' one-sided p-values against their floors, so exact samples "
              "are called above floor in at most about 5 % of jobs (one metric's band alone: 5 % each)."]
    if bands:
        lines += ["", "Floor bands: " + ", ".join(bands) + "."]
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def _labels(rows: Sequence[dict]) -> list[str]:
    """Each job's overrides less those shared by every job (what distinguishes it), else its job name."""
    split = [row["overrides"].split() for row in rows]
    common = set.intersection(*map(set, split)) if len(rows) > 1 else set()
    return [" ".join(o for o in ovr if o not in common) or row["job"] for ovr, row in zip(split, rows)]


def _panel(row: dict, title: str) -> dict:
    if len(title) > 40:
        title = title[:37] + "..."
    panel: dict = {"samples": None, "data": None}
    npz = row["_dir"] / "samples.npz"
    if npz.is_file():
        with np.load(npz) as f:
            panel["samples"], panel["data"] = f["samples"][:2000], f["reference"][:2000]
    if row["status"] != "ok":
        panel["title"] = f"{title}\nFAILED"
        panel["error"] = (row.get("error") or "failed").splitlines()[0]
    else:
        value, verdict, overall = row.get(HEADLINE), row.get(f"{HEADLINE}_verdict"), row.get("verdict")
        if overall is not None:  # the overall verdict decides the colour; older records: the headline's
            state = "ABOVE FLOOR" if overall == "above floor" else "at floor"
            if row.get("verdict_driven_by"):
                state += f" ({row['verdict_driven_by']})"
            panel["title"] = (f"{title}\n{state}; {HEADLINE} {value:.3g}, NFE {row.get('nfe')}" if value is not None
                              else f"{title}\n{state}")
        else:
            panel["title"] = (f"{title}\n{HEADLINE} {value:.3g} ({verdict}), {row.get('above_floor')} above, "
                              f"NFE {row.get('nfe')}" if value is not None else title)
        panel["above"] = (overall or verdict) == "above floor"
    return panel


def aggregate(sweep_dir: str | Path, *, figure: bool = True) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md and (unless ``figure=False``) comparison.png in ``sweep_dir``; returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"no jobs (directories with metrics.json or .hydra/) under {sweep_dir}")
    _write_csv(rows, sweep_dir / "summary.csv")
    _write_markdown(rows, sweep_dir / "summary.md", f"Sweep {sweep_dir.name}")
    if figure:
        panels = [_panel(row, label) for row, label in zip(rows, _labels(rows))]
        atomic_write_with(sweep_dir / "comparison.png", lambda f: figures.plot_comparison(panels, f))
    failed = sum(row["status"] != "ok" for row in rows)
    log.info("summarised %d jobs (%d failed) in %s", len(rows), failed, sweep_dir)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``scoresde-aggregate SWEEP_DIR [--no-figure]``.

    Exit status 0 when the summary was written (failed jobs are rows of it, also listed on
    stderr), 2 when ``SWEEP_DIR`` holds no jobs.
    """
    parser = argparse.ArgumentParser(prog="scoresde-aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (e.g. multirun/sample/<date>/<time>)")
    parser.add_argument("--no-figure", action="store_true", help="skip comparison.png")
    args = parser.parse_args(argv)
    try:
        rows = aggregate(args.sweep_dir, figure=not args.no_figure)
    except FileNotFoundError as e:
        parser.exit(2, f"scoresde-aggregate: error: {e}\n")
    print((args.sweep_dir / "summary.md").read_text())
    failed = [row["job"] for row in rows if row["status"] != "ok"]
    if failed:
        print(f"{len(failed)} of {len(rows)} jobs failed: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
