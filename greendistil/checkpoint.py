"""Training-state checkpoints for `--resume`: written atomically, read back exactly.

A state file holds everything needed to continue a stage as if it had never stopped: model, optimizer and
schedule state, the step, the epoch and the position in it, the data order's generator, the RNG states
(dropout), and the loss sums. It is written to a temporary file in the same folder, fsynced, and renamed
over the previous one, so a kill at any moment leaves either the old state or the new one, never half.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from greendistil import faults

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
TEMP_SUFFIX = ".partial"


@dataclass(frozen=True, kw_only=True)
class StateFile:
    """Where a stage keeps its training state, and whether an existing one may be continued."""

    path: Path
    resume: bool  # True only under `greendistil run --resume`: a fresh run never loads a stale state


@dataclass(frozen=True, kw_only=True)
class TrainPosition:
    """Where training stands: `step` optimizer steps done, `batch_in_epoch` batches into `epoch`."""

    step: int
    epoch: int
    batch_in_epoch: int
    epoch_generator_state: torch.Tensor | None  # the data order's generator at the start of `epoch`
    loss_sums: dict[str, float]
    recent_losses: list[dict[str, float]]


def save_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, position: TrainPosition) -> None:
    """Write the training state atomically (temporary file, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": STATE_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "position": position.__dict__,
        "rng": _rng_states(),
    }
    temp = path.with_name(path.name + TEMP_SUFFIX)
    with signals_deferred(), open(temp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    faults.point("checkpoint-write")  # tests kill here: the temporary file exists, the rename has not happened
    os.replace(temp, path)
    _fsync_dir(path.parent)


def load_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler) -> TrainPosition:
    """Restore model, optimizer, schedule and RNG states from `path`; returns where training stood."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: training-state format {state.get('format')!r}, expected {STATE_FORMAT}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"])
    return TrainPosition(**state["position"])


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver the first one to the handler that was there.

    A signal's exception raised inside torch.save or save_pretrained is replaced by the writer's own error
    when it unwinds (torch: "unexpected pos ..."), which would turn an interruption into a failure.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            os.kill(os.getpid(), received[0])  # now, with the run's own handler back in place


def rank_rng_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.rng-rank{rank}")


def _rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_rank_rng(path: Path, rank: int, step: int) -> None:
    """A DDP rank > 0's RNG states at `step`, beside rank 0's training state `path` (atomically)."""
    target = rank_rng_path(path, rank)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(target.name + TEMP_SUFFIX)
    with signals_deferred():
        torch.save({"step": step, "rng": _rng_states()}, temp)
        os.replace(temp, target)


def load_rank_rng(path: Path, rank: int, step: int) -> bool:
    """Restore rank `rank`'s own RNG states saved at `step`; False (with a warning) when there are none."""
    target = rank_rng_path(path, rank)
    saved = torch.load(target, map_location="cpu", weights_only=False) if target.is_file() else None
    if saved is None or saved["step"] != step:
        logger.warning("rank %d: no RNG state for step %d beside %s; its dropout continues from rank 0's RNG "
                       "(training continues, not bit-identical to an unbroken run)", rank, step, path)
        return False
    _set_rng_states(saved["rng"])
    return True


def discard_state(path: Path) -> None:
    """Remove a stage's state file, the RNG files of DDP ranks and any temporary file left by a kill (the
    stage has finished)."""
    for candidate in (path, path.with_name(path.name + TEMP_SUFFIX), *path.parent.glob(f"{path.name}.rng-rank*")):
        candidate.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
