"""What an open measurement window has spent so far: for progress, logs and TensorBoard, never for records.

The record of a window is written when it closes, from the meters' final readings (`measure.window`). While
it runs, the same meters can say what they have seen until now: codecarbon's totals as of its last reading
(every `carbon.measure_power_s`) and NVML's counter or integrated power samples. Under torchrun a rank sees
its own GPU and, on a node's local rank 0, the node's CPU and RAM: live figures are this process's view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from greendistil import distributed
from greendistil.measure.carbon import RAM_SOURCE
from greendistil.measure.counters import StageCounters
from greendistil.runtime.units import J_PER_KWH, joules_to_kwh

if TYPE_CHECKING:
    from greendistil.measure.window import Meters


@dataclass(frozen=True, kw_only=True)
class LiveReading:
    """Spent in the window so far. Energies in kWh (None: that meter has nothing), CO2 in grams."""

    elapsed_s: float
    cpu_energy_kwh: float | None
    gpu_energy_kwh: float | None
    ram_energy_kwh: float | None
    cpu_power_w: float | None  # codecarbon's last power reading
    ram_power_w: float | None
    flops: float | None  # FLOPs so far: counted steps extrapolated, as the record will have them

    @property
    def energy_kwh(self) -> float | None:
        known = [e for e in (self.cpu_energy_kwh, self.gpu_energy_kwh, self.ram_energy_kwh) if e is not None]
        return sum(known) if known else None

    def co2_g(self, *, pue: float, intensity_g_per_kwh: float) -> float | None:
        energy = self.energy_kwh
        return None if energy is None else energy * pue * intensity_g_per_kwh

    @property
    def gpu_power_mean_w(self) -> float | None:
        """Mean GPU power over the window so far (W)."""
        if self.gpu_energy_kwh is None or self.elapsed_s <= 0:
            return None
        return self.gpu_energy_kwh * J_PER_KWH / self.elapsed_s

    def scalars(self, *, pue: float, intensity_g_per_kwh: float) -> dict[str, float]:
        """The known figures by name, units in the names (for logs and TensorBoard)."""
        found = {
            "energy_kwh": self.energy_kwh, "co2_g": self.co2_g(pue=pue, intensity_g_per_kwh=intensity_g_per_kwh),
            "cpu_energy_kwh": self.cpu_energy_kwh, "gpu_energy_kwh": self.gpu_energy_kwh,
            "ram_energy_kwh": self.ram_energy_kwh, "cpu_power_w": self.cpu_power_w, "ram_power_w": self.ram_power_w,
            "gpu_power_mean_w": self.gpu_power_mean_w, "flops": self.flops,
        }
        return {name: float(v) for name, v in found.items() if v is not None}


def read_live(meters: Meters, counters: StageCounters, elapsed_s: float) -> LiveReading:
    """The window's figures until now, from its meters and counters. Never raises."""
    carbon = meters.carbon.so_far() if meters.carbon is not None else None
    sampler = counters.flop_sampler
    try:
        flops = sampler.total_flops() if sampler is not None else None
    except Exception:  # a sampler mid-count: no figure rather than an error
        flops = None
    return LiveReading(
        elapsed_s=elapsed_s,
        cpu_energy_kwh=carbon.cpu_energy_kwh if carbon is not None else None,
        gpu_energy_kwh=joules_to_kwh(meters.gpu.energy_so_far_j()),
        ram_energy_kwh=carbon.ram_energy_kwh if carbon is not None else None,
        cpu_power_w=carbon.cpu_power_w if carbon is not None else None,
        ram_power_w=carbon.ram_power_w if carbon is not None else None,
        flops=float(flops) if flops is not None else None,
    )


@dataclass(frozen=True, kw_only=True)
class EnergyNow:
    """The open window's energy until now (kWh) and where each summed component came from."""

    energy_kwh: float
    sources: dict[str, str]  # component -> provenance, e.g. {"cpu": "measured:rapl", "ram": "estimated:ram-model"}


def live_energy(meters: Meters) -> EnergyNow | None:
    """The window's energy until now, every rank's under torchrun (a collective: every rank calls it at the
    same step; CPU/RAM come once per node, from the rank that meters them, and each rank adds its GPU).
    None when no meter has a figure."""
    mine = _own_energy(meters)
    if not meters.dist.enabled:
        return mine
    readings = [r for r in distributed.all_gather(meters.dist, mine) if r is not None]
    if not readings:
        return None
    sources = {name: source for r in readings for name, source in r.sources.items()}
    return EnergyNow(energy_kwh=sum(r.energy_kwh for r in readings), sources=sources)


def _own_energy(meters: Meters) -> EnergyNow | None:
    """This process's view: CPU and RAM from codecarbon's last reading, carried forward to now at its last
    power reading; its GPU's from NVML. Never raises."""
    energy_kwh, sources = 0.0, {}
    carbon = meters.carbon.so_far() if meters.carbon is not None else None
    if carbon is not None and carbon.cpu_energy_kwh is not None:
        age_s = carbon.reading_age_s or 0.0
        for name, kwh, power_w, source in (("cpu", carbon.cpu_energy_kwh, carbon.cpu_power_w, carbon.cpu_energy_source),
                                           ("ram", carbon.ram_energy_kwh, carbon.ram_power_w, RAM_SOURCE)):
            if kwh is not None:
                energy_kwh += kwh + (power_w or 0.0) * age_s / J_PER_KWH
                sources[name] = source
    gpu_kwh = joules_to_kwh(meters.gpu.energy_so_far_j())
    if gpu_kwh is not None:
        energy_kwh += gpu_kwh
        sources["gpu"] = "measured:nvml"  # the counter, or its power samples integrated
    return EnergyNow(energy_kwh=energy_kwh, sources=sources) if sources else None
