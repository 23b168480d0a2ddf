"""Run directories and the append-only run log (`records.jsonl`), and `load_runs()` -> pandas.

A run directory holds: records.jsonl (one JSON object per stage, appended as each stage ends), config.toml
(the resolved config), emissions.csv (codecarbon's rows), power.csv (GPU power samples, when any) and
checkpoints/<stage>/ (save_pretrained folders).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from greendistil.errors import GreendistilError, RunDirError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"


def new_run_id(name: str) -> str:
    """`<name>-<UTC time>-<random>`: distinct even for runs started in the same second."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def create_run_dir(output_dir: Path, run_id: str, *, force: bool = False) -> Path:
    """Create `<output_dir>/<run_id>` and prove it is writable, before any training starts."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"run.output_dir: cannot create {str(output_dir)!r}: {err.strerror}; "
                          "choose a writable folder with --set run.output_dir=...") from None
    if not os.access(output_dir, os.W_OK):
        raise RunDirError(f"run.output_dir: {str(output_dir)!r} is not writable; "
                          "choose a writable folder with --set run.output_dir=...")
    run_dir = output_dir / run_id
    if run_dir.exists() and not force:
        raise RunDirError(f"run directory {str(run_dir)!r} already exists; pick another run id or pass --force")
    run_dir.mkdir(exist_ok=force)
    if force:  # a forced rerun starts a clean log: two attempts in one log would be summed as one run
        for name in (RECORDS_FILE, "emissions.csv", "power.csv", "config.toml"):
            (run_dir / name).unlink(missing_ok=True)
    probe = run_dir / ".write-probe"
    try:
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"cannot write into {str(run_dir)!r}: {err.strerror}") from None
    return run_dir


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record as a single whole line, flushed and fsynced."""
    line = json.dumps(record, default=_json_default, allow_nan=False) + "\n"
    with open(run_dir / RECORDS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """All records of one run; a torn (unparseable) last line is skipped with a warning."""
    path = run_dir / RECORDS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: skipping a torn last line ({len(line)} characters)", stacklevel=2)
            else:
                raise GreendistilError(f"{path}:{number}: not a JSON record (only a torn last line is skipped); "
                                       "repair or remove that line") from None
    return records


def find_run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories named by a run dir, a runs root (its run dirs), or a list of either."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: dict[Path, Path] = {}  # resolved -> as given: a run named twice (dir and its root) counts once
    for path in map(Path, paths):
        candidates = [path] if (path / RECORDS_FILE).is_file() else sorted(
            p.parent for p in path.glob(f"*/{RECORDS_FILE}")) if path.is_dir() else []
        for run_dir in candidates:
            found.setdefault(run_dir.resolve(), run_dir)
    return list(found.values())


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One tidy DataFrame, one row per stage record, from run dirs, runs roots, or a list of them.

    Nested fields are flattened with dots (`metrics.accuracy` -> `metric.accuracy`, `hardware.cpu_count`);
    timestamps become datetimes; a `run_dir` column says where each row came from.
    """
    rows = []
    for run_dir in find_run_dirs(paths):
        for record in read_records(run_dir):
            row = _flatten(record)
            row["run_dir"] = str(run_dir)
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("started_at", "ended_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key == "metrics" and isinstance(value, dict):
            row.update({f"metric.{name}": metric for name, metric in value.items()})
        elif isinstance(value, dict):
            row.update({f"{key}.{name}": inner for name, inner in _flatten(value).items()})
        else:
            row[key] = value
    return row


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
