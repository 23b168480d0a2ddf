"""Run directories and the append-only run log (`records.jsonl`): create, lock, append, read.

A run directory holds: records.jsonl (one JSON object per stage, appended as each stage ends), config.toml
(the resolved config), emissions.csv (codecarbon's rows), power.csv (GPU power samples, when any),
checkpoints/<stage>/ (save_pretrained folders), checkpoints/<stage>.state.pt (training state while a stage
runs, for --resume) and .lock (held by the process writing the run).

A stage resumed after an interruption has one record per segment (`segment` 1, 2, ...);
`runlog.frame.load_runs()` sums them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from greendistil.errors import GreendistilError, RunDirError

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
RANKS_DIR = "ranks"  # DDP: readings of ranks > 0 that never reached rank 0 (a stage that failed or was interrupted)
LOCK_FILE = ".lock"


def node_emissions_file(node_rank: int) -> str:
    """codecarbon's CSV of one node: emissions.csv on node 0, emissions-node<k>.csv on the others (on a
    shared file system, trackers on several machines must not append to one file)."""
    return "emissions.csv" if node_rank == 0 else f"emissions-node{node_rank}.csv"


def _node_emissions(run_dir: Path) -> list[str]:
    return [path.name for path in run_dir.glob("emissions-node*.csv")]


class RunLock:
    """An exclusive lock on a run directory, held while a process writes it (`fcntl.flock`: released by
    the kernel if the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: Path) -> None:
        self._handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            owner = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise RunDirError(f"run directory {str(run_dir)!r} is in use by another greendistil process "
                              f"(pid {owner}); wait for it to finish or stop it first") from None
        self._handle.truncate(0)
        self._handle.write(f"{os.getpid()}\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def new_run_id(name: str) -> str:
    """`<name>-<UTC time>-<random>`: distinct even for runs started in the same second."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def create_run_dir(output_dir: Path, run_id: str, *, force: bool = False) -> tuple[Path, RunLock]:
    """Create `<output_dir>/<run_id>`, lock it, and prove it is writable, before any training starts.

    With `force`, an existing run directory is emptied of its log, checkpoints and report: a forced rerun
    starts clean (two attempts in one log would be summed as one run; a stale state must never be resumed).
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"run.output_dir: cannot create {str(output_dir)!r}: {err.strerror}; "
                          "choose a writable folder with --set run.output_dir=...") from None
    if not os.access(output_dir, os.W_OK):
        raise RunDirError(f"run.output_dir: {str(output_dir)!r} is not writable; "
                          "choose a writable folder with --set run.output_dir=...")
    run_dir = output_dir / run_id
    try:
        run_dir.mkdir(exist_ok=force)  # atomic: of two runs given one id, exactly one gets it
    except FileExistsError:
        raise RunDirError(f"run directory {str(run_dir)!r} already exists; continue it with --resume {run_dir}, "
                          "start it over with --force, or pick another --run-id") from None
    lock = RunLock(run_dir)
    if force:
        for name in (RECORDS_FILE, "emissions.csv", "power.csv", "config.toml", *_node_emissions(run_dir)):
            (run_dir / name).unlink(missing_ok=True)
        for name in ("checkpoints", "report", RANKS_DIR):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    check_writable(run_dir)
    return run_dir, lock


def open_run_dir(run_dir: Path) -> RunLock:
    """Lock an existing run directory to continue it (`--resume`)."""
    if not (run_dir / RECORDS_FILE).is_file() or not (run_dir / "config.toml").is_file():
        raise RunDirError(f"--resume: {str(run_dir)!r} is not a run directory (it needs {RECORDS_FILE} and "
                          "config.toml); give the folder a run printed as 'run directory: ...'")
    lock = RunLock(run_dir)
    check_writable(run_dir)
    return lock


def check_writable(run_dir: Path, probe_bytes: int = 4096) -> None:
    """Write and remove a probe file: catches read-only mounts and full disks that os.access misses."""
    probe = run_dir / ".write-probe"
    try:
        probe.write_bytes(b"\0" * probe_bytes)
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"cannot write into {str(run_dir)!r}: {err.strerror}") from None


def append_record(run_dir: Path, record: dict[str, Any], *, rank: int = 0) -> None:
    """Append one record as a single whole line, flushed and fsynced. Only rank 0 writes the run log; a
    DDP rank > 0 writes only a window whose reading never reached rank 0, into ranks/rank-<r>.jsonl."""
    line = json.dumps(record, default=_json_default, allow_nan=False) + "\n"
    path = run_dir / RECORDS_FILE if rank == 0 else run_dir / RANKS_DIR / f"rank-{rank}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
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


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_text_atomically(path: Path, text: str) -> Path:
    """Write `path` through a temporary file in its folder, fsync'd, then renamed over it: a reader (or a
    crash) sees the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path
