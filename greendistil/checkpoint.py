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
    world_size: int = 1  # DDP processes that trained it: the batches per step and the data shards follow it


def save_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, position: TrainPosition,
               rank_rngs: list[dict[str, Any]] | None = None) -> None:
    """Write the training state atomically (temporary file, fsync, rename, fsync of the folder).

    `rank_rngs`: under DDP, every rank's RNG states (rank order), so each resumes its own dropout stream.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": STATE_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "position": position.__dict__,
        "rng": rng_states(), "rank_rngs": rank_rngs,
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
               scheduler: torch.optim.lr_scheduler.LRScheduler, rank: int = 0) -> TrainPosition:
    """Restore model, optimizer, schedule and RNG states from `path` (DDP: rank `rank`'s own RNG states);
    returns where training stood."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: training-state format {state.get('format')!r}, expected {STATE_FORMAT}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rank_rngs = state.get("rank_rngs")
    _set_rng_states(rank_rngs[rank] if rank_rngs and rank < len(rank_rngs) else state["rng"])
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


def rng_states() -> dict[str, Any]:
    """This process's torch, numpy, python and (current device's) CUDA RNG states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_states(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        if isinstance(rng["cuda"], list):  # states written before 2026-11: every device's
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            torch.cuda.set_rng_state(rng["cuda"])


def discard_state(path: Path) -> None:
    """Remove a stage's state file and any temporary one left by a kill (the stage has finished)."""
    for candidate in (path, path.with_name(path.name + TEMP_SUFFIX)):
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
