"""The report's view of the run log: `load_runs()` plus each run's task, and safe accessors.

The report reads only what the runs wrote: records.jsonl, and the task name from the run's resolved
config.toml (records do not carry it). Columns the report reads but a run never wrote exist as empty
columns, so a record from an older or failed run shows "n/a" instead of raising KeyError.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from greendistil.data.tasks import GLUE_ORDER
from greendistil.errors import GreendistilError
from greendistil.report.markdown import is_missing
from greendistil.runlog.frame import FRAME_COLUMNS, load_runs
from greendistil.runlog.schema import SCALAR_FIELDS
from greendistil.runlog.store import RECORDS_FILE, find_run_dirs

logger = logging.getLogger(__name__)

UNKNOWN_TASK = "unknown"
SHARED_TASK_SCHEMA = 3  # records of this schema on: a null task is a stage a suite's tasks share
CONFIG_FILE = "config.toml"

# Every column the report reads: the record's own fields (runlog.schema), then what load_runs adds.
_COLUMNS = (*SCALAR_FIELDS, *FRAME_COLUMNS)


def load_report_frame(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per stage record of every run under `paths`, with a `task` column from each config.toml.

    Raises GreendistilError when no run directory with records is found.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    run_dirs = find_run_dirs(paths)
    frame = load_runs(run_dirs) if run_dirs else pd.DataFrame()
    if frame.empty:
        missing = [str(p) for p in paths if not Path(p).exists()]
        where = ", ".join(repr(str(p)) for p in paths) or "(no paths given)"
        hint = f" ({', '.join(missing)} does not exist)" if missing else ""
        raise GreendistilError(
            f"no runs found under {where}{hint}: expected run directories holding {RECORDS_FILE}; pass a "
            f"run directory or a runs root such as runs/, or make one with `greendistil run <config>`")
    for column in _COLUMNS:
        if column not in frame:
            frame[column] = None
    # Records written before the `task` field existed are shown under their config.toml's task; from schema 3
    # on, a null task is a suite's shared stage.
    versions = pd.to_numeric(frame["schema_version"], errors="coerce").fillna(0)
    untasked = frame["task"].isna() & (versions < SHARED_TASK_SCHEMA)
    frame.loc[untasked, "task"] = frame.loc[untasked, "run_dir"].map(lambda run_dir: run_task(Path(run_dir)))
    return frame


def run_task(run_dir: Path) -> str:
    """The GLUE task name in `<run_dir>/config.toml` ([task] name), or 'unknown' (with a warning)."""
    path = run_dir / CONFIG_FILE
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except FileNotFoundError:
        logger.warning("%s is missing: the run's task is shown as %r", path, UNKNOWN_TASK)
        return UNKNOWN_TASK
    except (OSError, tomllib.TOMLDecodeError) as err:
        logger.warning("cannot read %s (%s): the run's task is shown as %r", path, err, UNKNOWN_TASK)
        return UNKNOWN_TASK
    name = config.get("task", {}).get("name") if isinstance(config.get("task"), dict) else None
    return str(name) if name else UNKNOWN_TASK


def iter_runs(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """Each run's records (in log order), runs ordered by task, then by when they started."""
    order = frame.groupby("run_dir", sort=False).agg(task=("task", "first"), started=("started_at", "min"))
    order["task"] = order["task"].fillna("")
    order = order.sort_values(["task", "started"], kind="stable", na_position="last")
    for run_dir in order.index:
        yield frame[frame["run_dir"] == run_dir]


def iter_tasks(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(task, its records), tasks in GLUE order: scores of different tasks are never mixed. A suite's
    shared stages come with each task of their run (they produced part of every task's student)."""
    for task in task_order(frame["task"]):
        runs = frame.loc[frame["task"] == task, "run_dir"].unique()
        yield task, frame[(frame["task"] == task) | (frame["task"].isna() & frame["run_dir"].isin(runs))]


def iter_units(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """Each (run, task, seed): a single-task run's records, or one task of a suite with the suite's shared
    stages, and in a multi-seed run one seed's records with the stages the seeds share (in log order). Runs
    in `iter_runs` order, a run's tasks in GLUE order, its seeds in the order they ran."""
    for records in iter_runs(frame):
        tasks = task_order(records["task"])
        for task in tasks or [None]:
            own = records if task is None else records[(records["task"] == task) | records["task"].isna()]
            seeds = run_seeds(own)
            if not seeds:
                yield own
            for seed in seeds:
                yield own[(own["seed"] == seed) | own["seed"].isna()]


def run_seeds(records: pd.DataFrame) -> list[int]:
    """The seeds of a multi-seed run's records, in the order they ran (empty: a single-seed run)."""
    if "seed" not in records:
        return []
    return [int(s) for s in dict.fromkeys(records["seed"].dropna())]


def unit_title(records: pd.DataFrame) -> str:
    """'<run id>, task <task>[, seed <seed>]' for the records of one unit (`iter_units`); '<run id>' without
    a task."""
    run_id, task, seeds = str(first_value(records, "run_id")), first_value(records, "task"), run_seeds(records)
    title = run_id if task is None else f"{run_id}, task {task}"
    return f"{title}, seed {seeds[0]}" if len(seeds) == 1 else title


def shared_records(records: pd.DataFrame) -> pd.DataFrame:
    """A suite's shared stages: the records with no task."""
    return records[records["task"].isna()]


def task_order(tasks: Iterable[Any]) -> list[str]:
    """The distinct non-null task names, GLUE tasks in GLUE order, any other name after them."""
    found = {str(t) for t in tasks if not is_missing(t)}
    return [t for t in GLUE_ORDER if t in found] + sorted(found - set(GLUE_ORDER))


def value(row: pd.Series | dict[str, Any], column: str) -> Any:
    """The row's value, or None when the column is absent or the value is missing (NaN/None)."""
    found = row.get(column)
    return None if is_missing(found) else found


def number(row: pd.Series | dict[str, Any], column: str) -> float | None:
    """The row's value as a float, or None when missing or not a number."""
    found = value(row, column)
    try:
        return None if found is None else float(found)
    except (TypeError, ValueError):
        return None


def column_sum(records: pd.DataFrame, column: str) -> float | None:
    """Sum of the known values of a column; None (not 0) when no record has one."""
    if column not in records:
        return None
    total = pd.to_numeric(records[column], errors="coerce").sum(min_count=1)
    return None if is_missing(total) else float(total)


def first_value(records: pd.DataFrame, column: str) -> Any:
    """The first non-missing value of a column, or None."""
    if column not in records:
        return None
    for found in records[column]:
        if not is_missing(found):
            return found
    return None
