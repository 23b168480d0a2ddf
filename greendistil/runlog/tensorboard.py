"""Live scalars of a run in TensorBoard (`run.tensorboard = true`): under `<run dir>/tensorboard/`.

Written at every log interval of a training stage: its loss terms, learning rate, examples/s, and what its
window has spent so far (kWh, g CO2eq, FLOPs, mean power per component; `measure.live`). They are for
watching a run; the run log's records stay the figures of record. TensorBoard is an optional extra: the
preflight refuses `run.tensorboard = true` without it. A writer that fails stops writing, never the run.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = 'pip install -e ".[tensorboard]"'


def tensorboard_missing() -> str | None:
    """Why `torch.utils.tensorboard` cannot write here (the `tensorboard` package is absent), or None."""
    if importlib.util.find_spec("tensorboard") is None:
        return f"the tensorboard package is not installed; install the extra: {INSTALL_HINT}"
    return None


class ScalarLog:
    """Scalars under `<run_dir>/tensorboard/`, tagged `<prefix>/<name>` (prefix: the stage, or task/stage)."""

    def __init__(self, run_dir: Path, *, writer: Any = None) -> None:
        self.log_dir = run_dir / TENSORBOARD_DIR
        self._writer = writer
        self._failed = False

    def add(self, prefix: str, step: int, scalars: Mapping[str, float]) -> None:
        """Write one log interval's scalars at `step`. Never raises."""
        if self._failed:
            return
        try:
            writer = self._open()
            for name, found in scalars.items():
                writer.add_scalar(f"{prefix}/{name}", float(found), step)
            writer.flush()
        except Exception as err:  # live metrics must never stop training
            self._failed = True
            logger.warning("TensorBoard scalars stopped (%s: %s); the run log is unaffected", type(err).__name__, err)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as err:
                logger.warning("closing the TensorBoard writer failed: %s", err)
            self._writer = None

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer
