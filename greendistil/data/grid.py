"""Grid carbon intensities by country: codecarbon's offline energy-mix data, read as data.

Used before a run (the intensity every record applies) and by the report's what-if table; neither needs
a meter, so this lives with the data, not in `measure/`.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from greendistil.errors import ConfigError

logger = logging.getLogger(__name__)


def grid_intensity(country_iso_code: str, fixed_g_per_kwh: float | None) -> tuple[float, str]:
    """The carbon intensity (gCO2eq/kWh) to use and where it came from. Raises ConfigError for an unknown country."""
    if fixed_g_per_kwh is not None:
        return fixed_g_per_kwh, "configured:carbon.intensity_g_per_kwh"
    from codecarbon.core.emissions import Emissions

    mix = _energy_mix()
    if country_iso_code not in mix:
        raise ConfigError(f"carbon.country_iso_code: {country_iso_code!r} is not in codecarbon's energy-mix data; "
                          "use an ISO 3166-1 alpha-3 code such as 'USA', 'FRA', 'DEU', or set carbon.intensity_g_per_kwh")
    rate = Emissions._global_energy_mix_to_emissions_rate(mix[country_iso_code])
    return rate.kgs_per_kWh * 1000.0, f"codecarbon:energy-mix:{country_iso_code}"


def country_names() -> dict[str, str]:
    """ISO 3166-1 alpha-3 code -> country name, from the same data; {} when it cannot be read (names are
    cosmetic: never fail for them)."""
    try:
        return {code: str(entry.get("country_name", code)) for code, entry in _energy_mix().items()}
    except Exception as err:
        logger.warning("codecarbon country names unavailable: %s", err)
        return {}


@lru_cache(maxsize=1)
def _energy_mix() -> dict[str, dict]:
    from codecarbon.input import DataSource

    return DataSource().get_global_energy_mix_data()
