"""CPU and RAM energy from codecarbon (the grid's intensity is data: `greendistil.data.grid`).

One `OfflineEmissionsTracker` per measurement window (it writes one row of emissions.csv when the window
closes). codecarbon is given pue = 1 so that its energies are what the hardware drew; greendistil applies
the PUE once, when it turns kWh into CO2. The meter never raises: a failure leaves the fields None and says why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# codecarbon's CPU modes -> provenance of the CPU energy figure.
CPU_MODE_SOURCES: dict[str, str] = {
    "intel_rapl": "measured:rapl",
    "windows_emi": "measured:windows-emi",
    "intel_power_gadget": "measured:intel-power-gadget",
    "apple_powermetrics": "measured:powermetrics",
    "cpu_load": "estimated:tdp-load-model",  # TDP x (0.1 + 0.9 x load^3) in codecarbon 3.x
    "constant": "estimated:tdp",
}
RAM_SOURCE = "estimated:ram-model"  # codecarbon models RAM power from its size; it never measures it


@dataclass(frozen=True, kw_only=True)
class CarbonReading:
    """What codecarbon saw in one window (kWh, W). Energies are None when codecarbon failed."""

    cpu_energy_kwh: float | None
    cpu_energy_source: str
    ram_energy_kwh: float | None
    ram_energy_source: str
    cpu_power_w: float | None = None
    ram_power_w: float | None = None
    codecarbon_gpu_energy_kwh: float | None = None  # cross-check only: GPU energy comes from greendistil's NVML meter
    codecarbon_co2_kg: float | None = None  # codecarbon's own figure, at PUE 1 (greendistil applies the PUE)
    cpu_model: str | None = None
    ram_total_gb: float | None = None
    error: str | None = None
    tracking_mode: str | None = None  # machine | process: whose CPU/RAM draw the figures are
    reading_age_s: float | None = None  # live readings: seconds since codecarbon's last power reading


class CarbonMeter:
    """Wraps one codecarbon `OfflineEmissionsTracker` per window; start/stop never raise."""

    def __init__(self, *, output_dir: Path, run_id: str, country_iso_code: str, measure_power_s: float,
                 intensity_g_per_kwh: float | None = None, output_file: str = "emissions.csv",
                 tracking_mode: str = "machine") -> None:
        self._output_dir, self._output_file = output_dir, output_file
        self._run_id = run_id
        self._country_iso_code = country_iso_code
        self._measure_power_s = measure_power_s
        self._intensity_g_per_kwh = intensity_g_per_kwh  # a fixed intensity: codecarbon's CSV uses it too
        self._tracking_mode = tracking_mode  # "process": this process's share of the CPU load and its RAM
        self._tracker: Any = None
        self._start_error: str | None = None

    def start(self, window_name: str) -> None:
        self._tracker, self._start_error = None, None
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            # codecarbon swallows a missing output_dir and returns a broken tracker: create it first.
            self._output_dir.mkdir(parents=True, exist_ok=True)
            tracker = OfflineEmissionsTracker(
                country_iso_code=self._country_iso_code, output_dir=str(self._output_dir),
                output_file=self._output_file, project_name=self._run_id, experiment_name=window_name,
                measure_power_secs=self._measure_power_s, pue=1.0, log_level="error",
                save_to_file=True, tracking_mode=self._tracking_mode, allow_multiple_runs=True,
                **({"force_carbon_intensity_g_co2e_kwh": self._intensity_g_per_kwh}
                   if self._intensity_g_per_kwh is not None else {}),
            )
            tracker.start()
            self._tracker = tracker
        except Exception as err:  # a meter must never stop training
            self._start_error = f"codecarbon failed to start: {type(err).__name__}: {err}"
            logger.warning(self._start_error)

    def flush(self) -> None:
        """Write what codecarbon has measured so far to its CSV (for runs that may be killed)."""
        if self._tracker is not None:
            try:
                self._tracker.flush()
            except Exception as err:
                logger.warning("codecarbon flush failed: %s", err)

    def so_far(self) -> CarbonReading | None:
        """CPU and RAM energy of the open window as of codecarbon's last reading (every `measure_power_s`),
        for live figures; None when no tracker runs. The record takes `stop()`'s. Never raises."""
        tracker = self._tracker
        if tracker is None:
            return None
        try:
            return CarbonReading(
                cpu_energy_kwh=float(tracker._total_cpu_energy.kWh), cpu_energy_source=_cpu_source(tracker),
                ram_energy_kwh=float(tracker._total_ram_energy.kWh), ram_energy_source=RAM_SOURCE,
                cpu_power_w=float(tracker._cpu_power.W), ram_power_w=float(tracker._ram_power.W),
                tracking_mode=self._tracking_mode,
                reading_age_s=max(0.0, time.perf_counter() - float(tracker._last_measured_time)))
        except Exception as err:  # codecarbon's private totals moved: no live figure, never an error
            logger.debug("live codecarbon reading failed: %s", err)
            return None

    def stop(self) -> CarbonReading:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return _failed(self._start_error or "codecarbon was not started")
        try:
            tracker.stop()  # codecarbon suppresses its own errors here, e.g. an emissions.csv it cannot write
            data, error = getattr(tracker, "final_emissions_data", None), None
            if data is None:  # stop() failed after measuring: its in-memory totals are still the energy drawn
                data = tracker._prepare_emissions_data()
                error = (f"codecarbon could not finish stop(): no row written to {self._output_dir / self._output_file} "
                         "(folder removed or not writable?); CPU/RAM energy taken from its in-memory totals")
                logger.warning(error)
            return CarbonReading(
                cpu_energy_kwh=float(data.cpu_energy), cpu_energy_source=_cpu_source(tracker),
                ram_energy_kwh=float(data.ram_energy), ram_energy_source=RAM_SOURCE,
                cpu_power_w=float(data.cpu_power), ram_power_w=float(data.ram_power),
                codecarbon_gpu_energy_kwh=float(data.gpu_energy), codecarbon_co2_kg=float(data.emissions),
                cpu_model=str(data.cpu_model), ram_total_gb=float(data.ram_total_size), error=error,
                tracking_mode=self._tracking_mode,
            )
        except Exception as err:
            message = f"codecarbon failed to stop: {type(err).__name__}: {err}"
            logger.warning(message)
            return _failed(message)


def _cpu_source(tracker: Any) -> str:
    for hardware in getattr(tracker, "_hardware", []):
        mode = getattr(hardware, "_mode", None)
        if type(hardware).__name__ == "CPU" and mode is not None:
            return CPU_MODE_SOURCES.get(mode, f"codecarbon:{mode}")
    return "codecarbon:unknown-mode"


def _failed(error: str) -> CarbonReading:
    return CarbonReading(cpu_energy_kwh=None, cpu_energy_source="unavailable:codecarbon-error",
                         ram_energy_kwh=None, ram_energy_source="unavailable:codecarbon-error", error=error)
