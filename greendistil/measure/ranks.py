"""One window's measurements from every DDP rank, combined into one record's figures, never double counted.

Each rank brings a `RankReading`: its own GPU (NVML, that rank's device only), its share of the work
(examples, tokens, FLOPs) and, on local rank 0 of each node only, the node's CPU and RAM (codecarbon
tracks the whole machine, so one tracker per node). Combining sums each component over whoever measured
it: CPU and RAM over nodes, GPU over ranks, work over ranks (every example is on exactly one rank). The
record keeps the breakdown per node, per GPU and per rank, and says which meter supplied each component.
A single process is the same with one reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greendistil.distributed import Dist
from greendistil.measure.carbon import CarbonReading
from greendistil.measure.counters import FlopFigureSource
from greendistil.measure.nvml import GpuReading
from greendistil.runtime.units import joules_to_kwh


@dataclass(frozen=True, kw_only=True)
class FlopFigures:
    total: int | None
    source: str
    by_component: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Work:
    """What was computed in one window: by one rank, or (`total`) by all of them."""

    num_examples: int
    num_tokens: int
    num_padded_tokens: int
    num_steps: int
    flops_analytic: float
    flops: FlopFigures

    @classmethod
    def total(cls, works: list[Work], *, sum_steps: bool) -> Work:
        """Summed over ranks (each example is on exactly one). Steps: summed when the ranks split them
        (evaluation), else the steps every rank took together. A rank that ran no step (a dev set of fewer
        batches than ranks) has no FLOPs to count, which is not an unknown."""
        return cls(num_examples=sum(w.num_examples for w in works), num_tokens=sum(w.num_tokens for w in works),
                   num_padded_tokens=sum(w.num_padded_tokens for w in works),
                   num_steps=(sum if sum_steps else max)(w.num_steps for w in works),
                   flops_analytic=sum(w.flops_analytic for w in works),
                   flops=_combine_flops([w.flops for w in works if w.num_steps > 0] or [works[0].flops]))


@dataclass(frozen=True, kw_only=True)
class RankReading:
    """What one rank measured in one window (picklable: it travels to rank 0)."""

    rank: int
    local_rank: int
    node_rank: int
    hostname: str
    duration_s: float
    carbon: CarbonReading | None  # None: this rank does not measure its node (local rank > 0)
    gpu: GpuReading
    work: Work


@dataclass(frozen=True, kw_only=True)
class Combined:
    """The window's figures over all ranks, plus the breakdown that goes into the record."""

    carbon: CarbonReading
    gpu: GpuReading
    duration_s: float
    work: Work
    partial: list[str]  # components summed over fewer meters than there should be
    breakdown: dict[str, Any]


def flop_figures(sampler: FlopFigureSource | None) -> FlopFigures:
    """The sampler's extrapolated FLOPs; never raises (FLOP bookkeeping must not lose the record)."""
    if sampler is None:
        return FlopFigures(total=None, source="unavailable:not-counted")
    try:
        total = sampler.total_flops()
        return FlopFigures(total=total if total is not None and total > 0 else None, source=sampler.source(),
                           by_component=sampler.by_component(), error=sampler.error)
    except Exception as err:
        return FlopFigures(total=None, source=f"unavailable:{type(err).__name__}", error=f"FLOP extrapolation: {err}")


def combine(readings: list[RankReading], me: Dist, missing: list[int], *, sum_steps: bool = False) -> Combined:
    """Sum `readings` (rank order, one per rank that answered) into one window's figures. `missing` ranks
    make the components they would have measured partial: their GPU, and CPU/RAM for a node leader.
    `sum_steps`: steps were split among the ranks (evaluation), not taken by all of them together."""
    leaders = [r for r in readings if r.carbon is not None]
    carbon, carbon_partial = _combine_carbon([r.carbon for r in leaders], len(leaders) < me.num_nodes)
    gpu, gpu_partial = _combine_gpu(readings, me)
    if missing and any(r.gpu.devices for r in readings) and "gpu" not in gpu_partial:
        gpu_partial = ["gpu"]  # the missing ranks' GPUs drew energy no reading here holds
    return Combined(
        carbon=carbon, gpu=gpu, duration_s=max(r.duration_s for r in readings),
        work=Work.total([r.work for r in readings], sum_steps=sum_steps),
        partial=carbon_partial + gpu_partial, breakdown=_breakdown(readings, me, missing),
    )


def combine_sources(sources: list[str]) -> str:
    """One provenance for a sum: the common source, else `measured:a+b` when every part was measured and
    `estimated:a+b` as soon as one part is an estimate (a sum is only as good as its weakest part)."""
    unique = sorted(set(sources))
    if len(unique) <= 1:
        return unique[0] if unique else "unavailable:no-reading"
    kind = "measured" if all(s.startswith("measured:") for s in unique) else "estimated"
    return f"{kind}:" + "+".join(s.split(":", 1)[-1] for s in unique)


def _sum_known(values: list[float | None]) -> tuple[float | None, bool]:
    known = [v for v in values if v is not None]
    return (sum(known) if known else None), len(known) < len(values)


def _combine_carbon(readings: list[CarbonReading], node_missing: bool) -> tuple[CarbonReading, list[str]]:
    if len(readings) == 1 and not node_missing:
        return readings[0], []
    if not readings:
        return CarbonReading(cpu_energy_kwh=None, cpu_energy_source="unavailable:node-reading-missing",
                             ram_energy_kwh=None, ram_energy_source="unavailable:node-reading-missing",
                             error="no node's CPU/RAM reading reached rank 0"), []
    cpu, cpu_gap = _sum_known([r.cpu_energy_kwh for r in readings])
    ram, ram_gap = _sum_known([r.ram_energy_kwh for r in readings])
    errors = [r.error for r in readings if r.error]
    combined = CarbonReading(
        cpu_energy_kwh=cpu, cpu_energy_source=combine_sources([r.cpu_energy_source for r in readings
                                                               if r.cpu_energy_kwh is not None]),
        ram_energy_kwh=ram, ram_energy_source=combine_sources([r.ram_energy_source for r in readings
                                                               if r.ram_energy_kwh is not None]),
        cpu_power_w=_sum_known([r.cpu_power_w for r in readings])[0],
        ram_power_w=_sum_known([r.ram_power_w for r in readings])[0],
        codecarbon_gpu_energy_kwh=_sum_known([r.codecarbon_gpu_energy_kwh for r in readings])[0],
        codecarbon_co2_kg=_sum_known([r.codecarbon_co2_kg for r in readings])[0],
        cpu_model=readings[0].cpu_model, ram_total_gb=_sum_known([r.ram_total_gb for r in readings])[0],
        error="; ".join(errors) or None, tracking_mode=readings[0].tracking_mode,
    )
    partial = [name for name, gap in (("cpu", cpu_gap or node_missing), ("ram", ram_gap or node_missing)) if gap]
    return combined, partial


def _combine_gpu(readings: list[RankReading], me: Dist) -> tuple[GpuReading, list[str]]:
    if len(readings) == 1 and not me.enabled:
        return readings[0].gpu, []
    gpus = [r.gpu for r in readings]
    measured = [g for g in gpus if g.energy_j is not None]
    if not measured:
        errors = sorted({g.error for g in gpus if g.error})
        return GpuReading.unavailable(gpus[0].source.split(":", 1)[-1], "; ".join(errors) or "no GPU measured"), []
    devices = tuple({**d, "rank": r.rank, "node_rank": r.node_rank} for r in readings for d in r.gpu.devices)
    samples = tuple((t, f"n{r.node_rank}-gpu{index}", power_w)  # NVML indices repeat across nodes
                    for r in readings for t, index, power_w in r.gpu.power_samples)
    errors = [f"rank {r.rank}: {r.gpu.error}" for r in readings if r.gpu.error]
    combined = GpuReading(
        energy_j=sum(g.energy_j for g in measured), source=combine_sources([g.source for g in measured]),
        error="; ".join(errors) or None, duration_s=max(g.duration_s or 0.0 for g in gpus), devices=devices,
        power_samples=samples, flags=tuple(f for g in gpus for f in g.flags),
    )
    return combined, (["gpu"] if len(measured) < len(gpus) else [])


def _combine_flops(figures: list[FlopFigures]) -> FlopFigures:
    if len(figures) == 1:
        return figures[0]
    totals = [f.total for f in figures]
    by_component: dict[str, int] = {}
    for f in figures:
        for name, value in f.by_component.items():
            by_component[name] = by_component.get(name, 0) + value
    errors = [f.error for f in figures if f.error]
    total = sum(t for t in totals if t is not None) if all(t is not None for t in totals) else None
    sources = sorted({f.source for f in figures})
    source = sources[0] if len(sources) == 1 else "+".join(sources)
    return FlopFigures(total=total, source=f"{source} summed over {len(figures)} ranks", by_component=by_component,
                       error="; ".join(errors) or None)


def _breakdown(readings: list[RankReading], me: Dist, missing: list[int]) -> dict[str, Any]:
    """energy_by_node, energy_by_gpu, by_rank and energy_meters: the record's account of who measured what."""
    gpu_kwh_by_node: dict[int, list[float | None]] = {}
    by_gpu = []
    for r in readings:
        for d in r.gpu.devices:
            kwh = joules_to_kwh(d.get("energy_j"))
            gpu_kwh_by_node.setdefault(r.node_rank, []).append(kwh)
            by_gpu.append({**_identity(r), "nvml_index": d.get("index"), "name": d.get("name"),
                           "uuid": d.get("uuid"), "gpu_energy_kwh": kwh, "gpu_energy_source": d.get("source"),
                           "error": d.get("error")})
    by_node = []
    for r in (r for r in readings if r.carbon is not None):
        gpu_kwh, _ = _sum_known(gpu_kwh_by_node.get(r.node_rank, []))
        parts = [r.carbon.cpu_energy_kwh, r.carbon.ram_energy_kwh, gpu_kwh]
        by_node.append({
            "node_rank": r.node_rank, "hostname": r.hostname, "measured_by_rank": r.rank,
            "cpu_energy_kwh": r.carbon.cpu_energy_kwh, "cpu_energy_source": r.carbon.cpu_energy_source,
            "ram_energy_kwh": r.carbon.ram_energy_kwh, "ram_energy_source": r.carbon.ram_energy_source,
            "gpu_energy_kwh": gpu_kwh, "energy_kwh": _sum_known(parts)[0],
            "num_gpus": len(gpu_kwh_by_node.get(r.node_rank, [])),
        })
    by_rank = [{**_identity(r), "num_examples": r.work.num_examples, "num_tokens": r.work.num_tokens,
                "num_steps": r.work.num_steps, "flops": r.work.flops.total, "flops_source": r.work.flops.source,
                "duration_s": r.duration_s} for r in readings]
    return {"world_size": me.world_size, "num_nodes": me.num_nodes, "ddp_backend": me.backend,
            "energy_meters": _meters(readings, me), "energy_by_node": by_node, "energy_by_gpu": by_gpu,
            "by_rank": by_rank, "ranks_missing": missing}


def _identity(r: RankReading) -> dict[str, Any]:
    return {"rank": r.rank, "local_rank": r.local_rank, "node_rank": r.node_rank, "hostname": r.hostname}


def _meters(readings: list[RankReading], me: Dist) -> dict[str, str]:
    """Which meter supplied each component, in words."""
    mode = next((r.carbon.tracking_mode for r in readings if r.carbon is not None and r.carbon.tracking_mode),
                "machine")
    host = (f"codecarbon (tracking_mode={mode}) in this process" if not me.enabled else
            f"codecarbon (tracking_mode={mode}) on local rank 0 of each node ({me.num_nodes} node(s)); "
            "the other ranks run no tracker")
    has_carbon = any(r.carbon is not None and r.carbon.cpu_energy_kwh is not None for r in readings)
    has_gpu = any(r.gpu.energy_j is not None for r in readings)
    gpu = ("nvml: the GPU this process computes on" if not me.enabled else
           f"nvml: each rank its own GPU (LOCAL_RANK through CUDA_VISIBLE_DEVICES; {me.world_size} ranks)")
    return {"cpu": host if has_carbon else "unavailable", "ram": host if has_carbon else "unavailable",
            "gpu": gpu if has_gpu else "unavailable",
            "codecarbon_gpu": "not used (it sees every GPU of the machine): kept as a cross-check only"}

