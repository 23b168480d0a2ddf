"""Capturing and restoring this process's random-number generators: torch, CUDA, numpy and python.

A checkpoint saves them so a resumed stage draws the dropout it would have drawn; a step redone without
the FLOP counter restores them so it draws the same dropout as the failed attempt.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """This process's torch, numpy, python and (current device's) CUDA RNG states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_states(rng: dict[str, Any]) -> None:
    """Restore what `rng_states()` captured."""
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (every device), numpy and python's `random`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
