"""Training-state checkpoints for `--resume`: written atomically, read back exactly.

A state file holds everything needed to continue a stage as if it had never stopped: model, optimizer and
schedule state, the step, the epoch and the position in it, the data order's generator, the RNG states
(dropout), and the loss sums. It is written to a temporary file in the same folder, fsynced, and renamed
over the previous one, so a kill at any moment leaves either the old state or the new one, never half.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from greendistil.runtime.rng import rng_states, set_rng_states
from greendistil.runtime.signals import signals_deferred
from greendistil.testing import faults

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
    set_rng_states(rank_rngs[rank] if rank_rngs and rank < len(rank_rngs) else state["rng"])
    return TrainPosition(**state["position"])



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
