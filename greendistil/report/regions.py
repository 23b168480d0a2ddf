"""What-if: the same energy on other grids, with codecarbon's offline energy-mix intensities."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from greendistil.errors import GreendistilError
from greendistil.data.grid import country_names, grid_intensity

logger = logging.getLogger(__name__)

# Low- to high-carbon grids that span the range a reader is likely to run on.
DEFAULT_REGIONS: tuple[str, ...] = ("SWE", "FRA", "CAN", "GBR", "USA", "DEU", "AUS", "CHN", "POL", "IND")


@dataclass(frozen=True, kw_only=True)
class RegionCost:
    """CO2 of a fixed facility energy on one country's grid."""

    country_iso_code: str
    country_name: str
    intensity_g_per_kwh: float
    intensity_source: str
    co2_g: float

    @property
    def co2_kg(self) -> float:
        return self.co2_g / 1000.0


def region_costs(facility_energy_kwh: float, codes: Sequence[str] = DEFAULT_REGIONS) -> list[RegionCost]:
    """CO2 = facility kWh (energy × PUE) × grid intensity, per country, lowest intensity first.

    A code codecarbon does not know is skipped with a warning.
    """
    costs = []
    for code in dict.fromkeys(codes):
        try:
            intensity_g_per_kwh, source = grid_intensity(code, None)
        except GreendistilError as err:
            logger.warning("what-if table: skipping %s: %s", code, err)
            continue
        costs.append(RegionCost(country_iso_code=code, country_name=country_names().get(code, code),
                                intensity_g_per_kwh=intensity_g_per_kwh, intensity_source=source,
                                co2_g=facility_energy_kwh * intensity_g_per_kwh))
    return sorted(costs, key=lambda cost: cost.intensity_g_per_kwh)
