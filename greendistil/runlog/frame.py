"""`load_runs()`: run logs -> one tidy pandas DataFrame, a resumed stage's segments summed into one row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from greendistil.runlog.schema import is_additive
from greendistil.runlog.seeds import aggregate_seeds
from greendistil.runlog.store import find_run_dirs, read_records

# Columns `load_runs` adds to the records' own: where each row came from, and how its segments combined.
FRAME_COLUMNS = ("run_dir", "num_segments", "resumed", "segment_statuses", "segments_incomplete")

def load_runs(paths: str | Path | Iterable[str | Path], *, by_segment: bool = False,
              over_seeds: bool = False) -> pd.DataFrame:
    """One tidy DataFrame, one row per stage (per task and stage in a suite, per seed too in a multi-seed
    run), from run dirs, runs roots, or a list of them. The `task` column names the GLUE task each stage
    served (null: a suite's shared stage); `seed` the seed of `run.seeds` (null: a single-seed run, or a
    stage every seed shares).

    Nested fields are flattened with dots (`metrics.accuracy` -> `metric.accuracy`, `hardware.cpu_count`);
    timestamps become datetimes; a `run_dir` column says where each row came from. A stage that was
    interrupted and resumed is one row whose energy, CO2, FLOPs, time and counts are the sums over its
    segments (`num_segments`, `resumed`, `segment_statuses` say so); `by_segment=True` gives one row per record.

    `over_seeds=True` gives one row per stage of a multi-seed run instead, its seeds combined
    (`runlog.seeds.aggregate_seeds`): each `metric.<name>` is the median over the seeds, with
    `metric.<name>.mean/.std/.min/.max` and `num_seeds`; costs are summed, and `per_seed_<figure>` is one
    seed's mean cost.
    """
    if over_seeds and by_segment:
        raise ValueError("load_runs: over_seeds combines whole stages; it cannot be used with by_segment")
    rows = []
    for run_dir in find_run_dirs(paths):
        flat = [flatten_record(record) for record in read_records(run_dir)]
        for row in (flat if by_segment else combine_segments(flat)):
            row["run_dir"] = str(run_dir)
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("started_at", "ended_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return aggregate_seeds(frame) if over_seeds else frame


def combine_segments(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, seed, stage) of one run: additive fields summed over its segments, the rest from the last.

    A sum over segments where some lack a figure (e.g. codecarbon failed in one) is the sum of the known
    parts, and `segments_incomplete` names the fields affected.
    """
    by_stage: dict[tuple[Any, Any, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_stage.setdefault((row.get("task"), row.get("seed"), str(row.get("stage"))), []).append(row)
    combined = []
    for segments in by_stage.values():
        row = dict(segments[-1])
        row["num_segments"] = len(segments)
        row["resumed"] = len(segments) > 1
        row["segment_statuses"] = ",".join(str(s.get("status")) for s in segments)
        row["started_at"] = segments[0].get("started_at")
        incomplete = []
        keys = {k for s in segments for k in s if is_additive(k)}
        for key in sorted(keys):
            # A segment that processed nothing (killed while loading) did no FLOPs: its missing count is 0.
            values = [0 if key.startswith("flops") and s.get(key) is None and not s.get("num_examples") else s.get(key)
                      for s in segments]
            known = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            row[key] = sum(known) if known else None
            if known and len(known) < len(values):
                incomplete.append(key)
        row["segments_incomplete"] = incomplete
        combined.append(row)
    return combined


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key == "metrics" and isinstance(value, dict):
            row.update({f"metric.{name}": metric for name, metric in value.items()})
        elif isinstance(value, dict):
            row.update({f"{key}.{name}": inner for name, inner in flatten_record(value).items()})
        else:
            row[key] = value
    return row
