"""Sweep folders (`greendistil sweep`): their layout, and reading a sweep's definition back.

A sweep folder holds `sweep.json` (written once: the base config's hash, the axes, each trial's values and
config hash, whether one teacher serves every trial), the shared teacher's run directory (`teacher/`)
when there is one, and one run directory per trial (`t000/`, `t001/`, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SWEEP_VERSION = 1
SWEEP_FILE = "sweep.json"
SWEEPS_FOLDER = "sweeps"
TEACHER_RUN = "teacher"


def read_sweep(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The definition of the sweep in `sweep_dir` (None: not a sweep folder)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
