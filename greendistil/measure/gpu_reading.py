"""What a GPU meter reads in one window (`GpuReading`), and the two pure helpers behind it: which devices
CUDA_VISIBLE_DEVICES shows, and the integral of power samples over a window."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GpuReading:
    """GPU energy of one measurement window.

    ``energy_j`` is the sum over the measured devices, or ``None`` when unavailable (never a fake 0).
    ``source`` is ``measured:nvml-counter``, ``measured:nvml-power-samples`` (if any device needed samples),
    or ``unavailable:<reason>``. ``error`` says why it is unavailable, or what failed along the way.
    ``devices`` holds one dict per GPU: ``index`` (NVML), ``name``, ``uuid``, ``energy_j``, ``source``,
    ``error``. ``power_samples`` are ``(elapsed_s since start, NVML device index, power_w)``.
    """

    energy_j: float | None
    source: str
    error: str | None = None
    duration_s: float | None = None
    devices: tuple[dict[str, Any], ...] = ()
    power_samples: tuple[tuple[float, int, float], ...] = ()
    flags: tuple[str, ...] = ()

    @classmethod
    def unavailable(cls, reason: str, error: str, **fields: Any) -> GpuReading:
        """A reading with no energy: ``source="unavailable:<reason>"``."""
        return cls(energy_j=None, source=f"unavailable:{reason}", error=error, **fields)


def parse_visible_devices(value: str | None) -> list[int | str] | None:
    """Parse CUDA_VISIBLE_DEVICES into NVML indices (int) and UUIDs (str); ``None`` = unset (all devices).

    Follows CUDA: comma-separated entries, and the list ends at the first entry that is neither a
    non-negative index nor a ``GPU-``/``MIG-`` UUID, so ``""`` and ``"-1"`` hide every device.
    """
    if value is None:
        return None
    entries: list[int | str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.startswith(("GPU-", "MIG-")):
            entries.append(entry)
            continue
        try:
            index = int(entry)
        except ValueError:
            index = -1
        if index < 0:
            if entry not in ("", "-1"):
                logger.warning("CUDA_VISIBLE_DEVICES=%r: %r is not a device; CUDA ignores it and the rest",
                               value, entry)
            break
        entries.append(index)
    return entries


def integrate_power(
    samples: Sequence[tuple[float, float]], duration_s: float, max_gap_s: float
) -> tuple[float | None, str | None]:
    """Trapezoid integral (J) of ``(elapsed_s, power_w)`` samples over ``[0, duration_s]``.

    Returns ``(None, why)`` unless the samples cover the window: at least two, and no gap (at either edge
    or between samples) longer than ``max_gap_s``; a series that died mid-window is not a measurement.
    """
    if len(samples) < 2:
        return None, f"{len(samples)} power sample(s), need 2"
    points = sorted(samples)
    times_s = [0.0] + [t for t, _ in points] + [duration_s]
    gap_s = max(b - a for a, b in zip(times_s, times_s[1:]))
    if gap_s > max_gap_s:
        return None, f"power samples leave a {gap_s:.3g} s gap (limit {max_gap_s:.3g} s)"
    energy_j = sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(points, points[1:]))
    # The edge samples land a few microseconds inside the window: hold their power out to the edges.
    energy_j += points[0][1] * max(points[0][0], 0.0) + points[-1][1] * max(duration_s - points[-1][0], 0.0)
    return energy_j, None
