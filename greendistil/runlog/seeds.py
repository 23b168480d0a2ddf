"""Over the seeds of a multi-seed run (`run.seeds`): one row per (run, task, stage) from its seeds' rows.

DistilBERT's Table 1 gives the median of five runs per task; a spread needs the mean, the standard deviation
(sample, ddof = 1: NaN for one seed) and the range too. Costs are the other way round: the run paid for every
seed, so the additive columns (energy, CO2, FLOPs, time, counts) are summed (of the seeds that have the
figure: `seeds_incomplete` names the columns some seed lacks), and `per_seed_<figure>` gives the mean cost
of one seed, over the seeds that have it. A row that no seed repeats (a single-seed run's, a teacher shared by the seeds)
is kept as it is, with `num_seeds` 1 and `shared_by_seeds` saying whether the run's seeds share it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from greendistil.runlog.schema import is_additive

# The statistics of every metric over the seeds; `metric.<name>` itself holds the median (the headline).
METRIC_STATISTICS = ("mean", "std", "min", "max")
PER_SEED_FIGURES = ("duration_s", "flops", "energy_kwh", "co2_kg")  # -> per_seed_<figure>: the cost of one seed
_GROUP = ["run_dir", "task", "stage"]


def aggregate_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (a `load_runs` frame, one row per task, seed and stage) with each stage's seeds combined: see
    the module's docstring. Columns added: `num_seeds`, `seeds` ("1,2,3"), `shared_by_seeds`,
    `metric.<name>.<statistic>` for each of METRIC_STATISTICS, and `per_seed_<figure>`."""
    if frame.empty:
        return frame.copy()
    if "seed" not in frame:
        frame = frame.assign(seed=None)
    seeded_runs = set(frame.loc[frame["seed"].notna(), "run_dir"])
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, key in enumerate(zip(*(frame[c] if c in frame else [None] * len(frame) for c in _GROUP))):
        groups.setdefault(tuple(None if pd.isna(k) else k for k in key), []).append(position)
    rows = [_combined(frame.iloc[positions], shared=frame["run_dir"].iloc[positions[0]] in seeded_runs)
            for positions in groups.values()]
    return pd.DataFrame(rows)


def _combined(group: pd.DataFrame, *, shared: bool) -> dict[str, Any]:
    seeded = group[group["seed"].notna()]
    if seeded.empty:  # not repeated per seed
        row = group.iloc[-1].to_dict()
        row.update(num_seeds=1, seeds=None, shared_by_seeds=shared)
        return row
    seeded = seeded.sort_values("seed", kind="stable")
    row = seeded.iloc[0].to_dict()
    row.update(num_seeds=len(seeded), seeds=",".join(str(int(s)) for s in seeded["seed"]), shared_by_seeds=False,
               seed=None)
    incomplete: list[str] = []
    statuses = list(dict.fromkeys(str(s) for s in seeded["status"]))
    row["status"] = statuses[0] if len(statuses) == 1 else ",".join(statuses)
    for column in seeded.columns:
        values = pd.to_numeric(seeded[column], errors="coerce") if _numeric(seeded[column]) else None
        if values is None:
            continue
        if column.startswith("metric."):
            row[column] = values.median()
            for statistic in METRIC_STATISTICS:
                row[f"{column}.{statistic}"] = getattr(values, statistic)()
        elif is_additive(column):
            row[column] = values.sum(min_count=1)  # null when no seed has the figure
            if values.notna().any() and values.isna().any():
                incomplete.append(column)
    for figure in PER_SEED_FIGURES:
        known = pd.to_numeric(seeded[figure], errors="coerce").dropna() if figure in seeded else pd.Series([])
        if len(known):
            row[f"per_seed_{figure}"] = float(known.mean())  # one seed's cost, over the seeds that have it
    row["seeds_incomplete"] = incomplete  # summed figures that some seed lacks: the sum is of the known ones
    return row


def _numeric(column: pd.Series) -> bool:
    known = column.dropna()
    return not known.empty and all(pd.api.types.is_number(v) and not pd.api.types.is_bool(v) for v in known)
