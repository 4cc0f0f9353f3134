"""What finished runs report: final and best `val/` metrics from `metrics.jsonl`, as tables.

`run_result(workdir)` reads one run's workdir (from a sweep or made by hand);
`markdown_table` and `write_csv` lay rows out; `aggregate_seeds` folds rows
that differ only in `seed` into mean ± std.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

NUMBER = (int, float)


def read_records(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`; [] if the run never logged."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash mid-write ends the readable part
    return records


def run_result(workdir: str, monitor: str = "val/loss", mode: str = "min") -> dict[str, Any]:
    """Final `val/` metrics, the best `monitor` value, steps and logged wall time of one run.

    Args:
      workdir: the run's workdir (holding metrics.jsonl).
      monitor: the logged key whose best value is reported.
      mode: "min" or "max": which value of `monitor` is best.

    Returns:
      {"steps", "epochs", "log_seconds", "final": {val/key: value}, "best": value or None,
       "best_step": step or None}. A resumed run's repeated evaluations count once, the last.

    Raises:
      ValueError: `mode` is not "min" or "max".
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
    records = read_records(workdir)
    evals: dict[int, dict] = {}
    for record in records:
        if record.get("kind") == "eval":
            evals[record["step"]] = record
    final = {}
    if evals:
        last = evals[max(evals)]
        final = {k: v for k, v in last.items() if k.startswith("val/") and isinstance(v, NUMBER)}
    scores = [(r[monitor], s) for s, r in evals.items() if isinstance(r.get(monitor), NUMBER)]
    scores = [(v, s) for v, s in scores if math.isfinite(v)]
    best = (min if mode == "min" else max)(scores, key=lambda p: p[0]) if scores else (None, None)
    times = [r["time"] for r in records if isinstance(r.get("time"), NUMBER)]
    return {
        "steps": max((r.get("step", 0) for r in records), default=0),
        "epochs": max((r.get("epoch", 0) for r in records), default=0),
        "log_seconds": (max(times) - min(times)) if times else 0.0,
        "final": final,
        "best": best[0],
        "best_step": best[1],
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]:.4g}" if value[1] is None else f"{value[0]:.4g} ± {value[1]:.2g}"
    return str(value).replace("|", "\\|")


def columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; floats to 4 significant digits, (mean, std) pairs as mean ± std."""
    columns = list(columns or columns_of(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV with full precision; (mean, std) pairs become two columns."""
    columns = list(columns or columns_of(rows))
    flat_columns, flat_rows = [], []
    for column in columns:
        paired = any(isinstance(r.get(column), tuple) for r in rows)
        flat_columns += [f"{column} mean", f"{column} std"] if paired else [column]
    for row in rows:
        flat = {}
        for column in columns:
            value = row.get(column)
            if isinstance(value, tuple):
                flat[f"{column} mean"], flat[f"{column} std"] = value
            else:
                flat[column] = value
        flat_rows.append(flat)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=flat_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(flat_rows)


def aggregate_seeds(
    rows: Sequence[Mapping[str, Any]], point_keys: Sequence[str], metric_keys: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per point (its `point_keys` but `seed`), metrics as (mean, std) over its done runs.

    Args:
      rows: per-run rows with a "status" column ("done" counts).
      point_keys: the override columns; `seed` among them is folded.
      metric_keys: numeric columns to average.

    Returns:
      Rows with the point's overrides, "runs" ("done/total") and (mean, std) per metric
      (std None for a single run); empty without a `seed` key or if no point has two runs.
    """
    if "seed" not in point_keys:
        return []
    keys = [k for k in point_keys if k != "seed"]
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row.get(k)) for k in keys), []).append(row)
    if all(len(group) < 2 for group in groups.values()):
        return []
    out = []
    for group in groups.values():
        done = [r for r in group if r.get("status") == "done"]
        row: dict[str, Any] = {k: group[0].get(k) for k in keys}
        row["runs"] = f"{len(done)}/{len(group)}"
        for key in metric_keys:
            values = [r[key] for r in done if isinstance(r.get(key), NUMBER)]
            if values:
                std = float(statistics.stdev(values)) if len(values) > 1 else None
                row[key] = (float(statistics.fmean(values)), std)
        out.append(row)
    return out
