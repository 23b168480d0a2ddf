"""Device synchronisation: queued GPU work belongs to the window (or the timed batch) that queued it."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def synchronize(device: torch.device | None = None) -> None:
    """Wait for the GPU's queued work (all of the current device's when `device` is None); nothing on a
    CPU. Never raises: a failed sync is logged, and the caller's measurement goes on."""
    if device is not None and device.type != "cuda":
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize(device)
    except Exception as err:
        logger.warning("device synchronize failed: %s", err)
