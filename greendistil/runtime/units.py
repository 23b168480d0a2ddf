"""Unit constants and conversions: the one place they are written."""

from __future__ import annotations

from typing import overload

J_PER_KWH = 3.6e6  # 1 kWh = 3.6 MJ


@overload
def joules_to_kwh(energy_j: float) -> float: ...
@overload
def joules_to_kwh(energy_j: None) -> None: ...
def joules_to_kwh(energy_j: float | None) -> float | None:
    """Joules to kilowatt-hours. ``None`` (unavailable) stays ``None``."""
    return None if energy_j is None else energy_j / J_PER_KWH

