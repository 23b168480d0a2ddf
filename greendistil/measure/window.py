"""The measurement window: one `with measure(...)` block -> exactly one record in the run log.

The stage fills `window.counters` as it goes (examples, tokens, FLOPs, metrics), so a stage that fails or
is interrupted still leaves a record of everything measured up to that moment, with its status. Meter
errors never propagate; stage errors always do, after the record is written.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from greendistil import distributed
from greendistil.data.batching import PlannedSteps
from greendistil.distributed import SINGLE, Dist
from greendistil.errors import BudgetExceeded, RunInterrupted
from greendistil.measure.budget import BudgetGuard
from greendistil.measure.calibration import plan_teacher_share
from greendistil.measure.carbon import CarbonMeter
from greendistil.measure.counters import StageCounters
from greendistil.measure.forecast import CachedStepCost, Forecast, Forecaster, RunTotals
from greendistil.measure.live import LiveReading, live_energy, read_live
from greendistil.measure.nvml import GpuReading, NvmlMeter
from greendistil.measure.ranks import RankReading, Work, combine, flop_figures
from greendistil.runlog.schema import SCHEMA_VERSION, new_record
from greendistil.runlog.store import append_record, utc_now
from greendistil.runtime.device import synchronize
from greendistil.runtime.signals import signals_deferred
from greendistil.runtime.units import joules_to_kwh

Clock = Callable[[], float]  # seconds, monotonic: time.perf_counter, or a test's fake clock
PowerSamples = tuple[tuple[float, Any, float], ...]  # (elapsed_s, device, power_w), written to power.csv

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What every record of a run shares."""

    run_id: str
    run_dir: Path
    config_hash: str
    git_sha: str | None
    versions: dict[str, str]
    hardware: dict[str, Any]
    country_iso_code: str
    pue: float
    intensity_g_per_kwh: float
    intensity_source: str
    command: str | None = None  # the exact command line, for reproduction
    task: str | None = None  # the GLUE task, so a record stands on its own
    seed: int | None = None  # the replicate of run.seeds the stage belongs to (None: not repeated per seed)
    data_sources: dict[str, str] = field(default_factory=dict)  # split -> TSV path or hub dataset

    @property
    def kg_co2_per_kwh(self) -> float:
        """CO2 per kWh drawn: PUE x grid intensity, in kg CO2eq/kWh."""
        return self.pue * self.intensity_g_per_kwh / 1000.0


@dataclass
class Meters:
    """The meters shared by every window of a run. Under torchrun: `carbon` only on local rank 0 of each
    node (None elsewhere: one codecarbon tracker per machine), `gpu` on every rank for its own GPU."""

    carbon: CarbonMeter | None
    gpu: NvmlMeter
    dist: Dist = SINGLE


class Window:
    """Handed to the stage: `window.counters` is the stage's to fill."""

    def __init__(self, stage: str, kind: str, role: str, segment: int = 1, meters: Meters | None = None,
                 run: RunInfo | None = None, clock: Clock = time.perf_counter, guard: BudgetGuard | None = None,
                 plan_forecast: dict[str, Any] | None = None, run_totals: RunTotals | None = None) -> None:
        self.stage, self.kind, self.role, self.segment = stage, kind, role, segment
        self.run_totals = run_totals  # the rest of the run, for the forecasts' run totals
        self.plan_forecast = plan_forecast  # the plan's forecast of this window's stage (`greendistil plan`), if one was made
        self.counters = StageCounters()
        self.record: dict[str, Any] | None = None  # the record written when the window closed
        self.run = run
        self.guard = guard
        self.forecaster: Forecaster | None = None  # made at the first training step (it needs the step count)
        self._meters, self._clock = meters, clock
        self._start_s: float | None = None

    def observe_step(self, step: int, *, first_step: int, total_steps: int,
                     planned: PlannedSteps | None = None, cached_from_step: int | None = None) -> Forecast | None:
        """After each training step (`step` of `total_steps` done; the segment started at `first_step`): the
        forecast of the segment's end made at this step, if it reached one of `measure.forecast.FRACTIONS`.
        `planned` (each step's shape, known in advance): forecast by padded tokens, not by steps.
        `cached_from_step`: the first step (0-based) a teacher cache serves; those steps are forecast lighter."""
        if self._meters is None or self._start_s is None or self.run is None:
            return None
        if self.forecaster is None:
            meters = self._meters
            self.forecaster = Forecaster(first_step=first_step, total_steps=total_steps,
                                         energy_now=lambda: live_energy(meters), clock=self._clock,
                                         start_s=self._start_s, kg_co2_per_kwh=self.run.kg_co2_per_kwh,
                                         padded_tokens_per_step=planned.padded_tokens if planned is not None else None,
                                         run_totals=self.run_totals, cached=self._cached_cost(cached_from_step))
        return self.forecaster.observe(step)

    def _cached_cost(self, first_step: int | None) -> CachedStepCost | None:
        """What a served step costs next to a full one: 1 - the teacher forward's share of the stage's mean
        step, as the plan timed both, else as the counted FLOPs of the steps so far split it."""
        if first_step is None:
            return None
        share = plan_teacher_share(self.plan_forecast or {})
        if share is not None:
            return CachedStepCost(first_step=first_step, weight=1.0 - share,
                                  source="forecast:the-plan's-timed-teacher-forward-share-of-the-mean-step")
        sampler = self.counters.flop_sampler
        flops = sampler.by_component() if sampler is not None else {}
        total = sum(flops.values())
        if flops.get("teacher_forward") and total > flops["teacher_forward"]:
            return CachedStepCost(first_step=first_step, weight=1.0 - flops["teacher_forward"] / total,
                                  source="estimated:teacher-forward-share-of-the-counted-flops")
        return None

    def elapsed_s(self) -> float | None:
        """Seconds since the window opened, on its clock (None before it opened)."""
        return self._clock() - self._start_s if self._start_s is not None else None

    def over_budget(self, steps_done: int, steps_ahead: int = 1) -> BudgetExceeded | None:
        """The budget that `steps_ahead` more steps would cross, after `steps_done` (see `measure.budget`)."""
        return self.guard.check(steps_done, steps_ahead) if self.guard is not None else None

    def so_far(self) -> LiveReading | None:
        """What the window has spent until now (live figures, never a record's); None before it opened."""
        if self._meters is None or self._start_s is None:
            return None
        return read_live(self._meters, self.counters, self._clock() - self._start_s)

    def live_scalars(self) -> dict[str, float]:
        """`so_far()` as named figures (kWh, g CO2eq at the run's PUE and intensity, W, FLOPs)."""
        reading = self.so_far()
        if reading is None or self.run is None:
            return {}
        return reading.scalars(pue=self.run.pue, intensity_g_per_kwh=self.run.intensity_g_per_kwh)

    def flush_meters(self) -> None:
        """Have codecarbon write what it measured so far (a kill -9 then still leaves a row). Never raises."""
        if self._meters is not None and self._meters.carbon is not None:
            self._meters.carbon.flush()


@contextmanager
def measure(*, stage: str, kind: str, role: str, meters: Meters, run: RunInfo, segment: int = 1,
            clock: Clock = time.perf_counter, guard: BudgetGuard | None = None,
            plan_forecast: dict[str, Any] | None = None, run_totals: RunTotals | None = None) -> Iterator[Window]:
    """Measure one window. Yields a `Window`; appends one record when the block ends, however it ends.

    `segment` numbers the attempts at one stage: a stage resumed after an interruption writes a second
    record (segment 2) for the work it did after resuming; readers sum a stage's segments. `clock` times
    the window (tests give a fake one). `guard` holds the budgets the window's steps are checked against;
    `plan_forecast`, the plan's forecast of the stage, goes into the record's `forecast` field beside the in-run ones;
    `run_totals` (the run's spend before this window, and the plan's after it) make the forecasts' run totals.
    """
    window = Window(stage, kind, role, segment, meters, run, clock, guard, plan_forecast, run_totals)
    synchronize()
    started_at = utc_now()
    if meters.carbon is not None:
        meters.carbon.start(stage)
    meters.gpu.start()
    start_s = window._start_s = clock()
    if guard is not None:
        guard.open(start_s)
    status, error = "ok", None
    try:
        yield window
    except (KeyboardInterrupt, RunInterrupted) as err:
        status, error = "interrupted", err
        raise
    except BudgetExceeded as err:
        status, error = "stopped-budget", err
        raise
    except BaseException as err:
        status, error = "failed", err
        raise
    finally:
        # A signal now must not tear the record being written. One that arrives while the readings are
        # gathered and written is delivered afterwards if the stage had ended ok (the run must still stop);
        # after a failure or an interruption, the run is stopping anyway and it is dropped.
        with signals_deferred() as held:
            if status != "ok":
                held.drop()
            synchronize()
            duration_s = clock() - start_s
            gpu = meters.gpu.stop()
            carbon = meters.carbon.stop() if meters.carbon is not None else None
            mine = RankReading(**meters.dist.identity(), duration_s=duration_s, carbon=carbon, gpu=gpu,
                               work=_work(window.counters))
            readings, gather_error = _gather(meters.dist, mine, status)
            if readings is not None or gather_error is not None:  # rank 0, or a rank whose reading did not reach it
                record, power_samples = compose_record(
                    window=window, run=run, status=status, error=error, started_at=started_at,
                    readings=readings or [mine], dist=meters.dist, gather_error=gather_error)
                if meters.dist.is_main:
                    _write_power_samples(run.run_dir, stage, power_samples)
                append_record(run.run_dir, record, rank=meters.dist.rank)
                window.record = record


def _work(c: StageCounters) -> Work:
    return Work(num_examples=c.num_examples, num_tokens=c.num_tokens, num_padded_tokens=c.num_padded_tokens,
                num_steps=c.num_steps, flops_analytic=c.flops_analytic, flops=flop_figures(c.flop_sampler))


def _gather(me: Dist, mine: RankReading, status: str) -> tuple[list[RankReading] | None, str | None]:
    """Every rank's reading on rank 0 -> (readings, None) there, (None, None) elsewhere. A stage that did not
    end "ok" skips the gather (its peers may be stuck elsewhere or dead): each rank then keeps its own
    reading, rank 0 in the run log, the others in ranks/rank-<r>.jsonl, and the error says so."""
    if not me.enabled:
        return [mine], None
    if status not in ("ok", "stopped-budget"):  # a budget stops every rank after the same step: they can gather
        return None, (f"stage ended {status!r} on rank {me.rank}: readings were not gathered; this record holds "
                      f"rank {me.rank}'s own, the other ranks' are in ranks/rank-<r>.jsonl")
    try:
        return distributed.gather(me, mine), None
    except Exception as err:  # a peer died after its stage ended: keep what this rank measured
        logger.warning("rank %d: gathering the window's readings failed: %s", me.rank, err)
        return None, f"gathering readings from the ranks failed on rank {me.rank}: {type(err).__name__}: {err}"


def compose_record(*, window: Window, run: RunInfo, status: str, error: BaseException | None, started_at: str,
                   readings: list[RankReading], dist: Dist = SINGLE,
                   gather_error: str | None = None) -> tuple[dict[str, Any], PowerSamples]:
    """Assemble the record (the fields of `runlog.schema`) from every rank's reading: energy by component
    with provenance (CPU and RAM once per node, GPU per rank), CO2 = kWh x intensity x PUE, FLOPs summed
    over ranks, counts, breakdown. Returns it with the GPU power samples, which go to power.csv."""
    c = window.counters
    answered = {r.rank for r in readings}
    missing = [rank for rank in range(dist.world_size) if rank not in answered]
    # Training steps are synchronous (every rank takes each one); evaluation batches are split among the ranks.
    total = combine(readings, dist, missing, sum_steps=window.kind == "evaluate")
    carbon, gpu = total.carbon, total.gpu
    gpu_energy_kwh = joules_to_kwh(gpu.energy_j) if gpu.energy_j is not None else None
    components = {"cpu": carbon.cpu_energy_kwh, "gpu": gpu_energy_kwh, "ram": carbon.ram_energy_kwh}
    known = [v for v in components.values() if v is not None]
    energy_kwh = sum(known) if known else None
    co2_kg = energy_kwh * run.kg_co2_per_kwh if energy_kwh is not None else None
    work, flops = total.work, total.work.flops
    errors = {k: v for k, v in {"carbon": carbon.error, "gpu": gpu.error, "flops": flops.error,
                                "distributed": gather_error}.items() if v}
    incomplete = [k for k, v in components.items() if v is None and _expected(k, run)]
    incomplete += [k for k in total.partial if k not in incomplete]
    record = new_record({
        "schema_version": SCHEMA_VERSION, "run_id": run.run_id, "task": run.task, "seed": run.seed,
        "stage": window.stage,
        "kind": window.kind, "role": window.role, "status": status, "segment": window.segment,
        "resumed_from_step": c.resumed_from_step, "num_checkpoints": c.num_checkpoints,
        "error_type": type(error).__name__ if error is not None else None,
        "error_message": str(error) if error is not None else None,
        "started_at": started_at, "ended_at": utc_now(), "duration_s": total.duration_s,
        "model": c.model, "num_params": c.num_params, "num_examples": work.num_examples,
        "num_tokens": work.num_tokens, "num_padded_tokens": work.num_padded_tokens, "num_steps": work.num_steps,
        "flops": flops.total, "flops_source": flops.source, "flops_by_component": flops.by_component,
        "flops_analytic": work.flops_analytic or None,
        "flops_analytic_source": "estimated:6N-train-2N-forward-per-token" if work.flops_analytic else None,
        "energy_kwh": energy_kwh, "energy_components": "+".join(k for k, v in components.items() if v is not None),
        "cpu_energy_kwh": components["cpu"], "cpu_energy_source": carbon.cpu_energy_source,
        "gpu_energy_kwh": components["gpu"], "gpu_energy_source": gpu.source,
        "ram_energy_kwh": components["ram"], "ram_energy_source": carbon.ram_energy_source,
        "facility_energy_kwh": energy_kwh * run.pue if energy_kwh is not None else None,
        "co2_kg": co2_kg, "intensity_g_per_kwh": run.intensity_g_per_kwh,
        "intensity_source": run.intensity_source, "pue": run.pue, "country_iso_code": run.country_iso_code,
        "tracking_mode": carbon.tracking_mode if carbon.cpu_energy_kwh is not None else None,
        "cpu_power_w": carbon.cpu_power_w, "ram_power_w": carbon.ram_power_w,
        "gpu_power_mean_w": _mean_power(gpu), "gpu_flags": list(gpu.flags), "gpu_devices": list(gpu.devices),
        "energy_incomplete": incomplete, **total.breakdown,
        "codecarbon": {"co2_kg_at_pue_1": carbon.codecarbon_co2_kg, "gpu_energy_kwh": carbon.codecarbon_gpu_energy_kwh},
        "measurement_errors": errors, "metrics": c.metrics, "details": c.details, "artifacts": c.artifacts,
        "budget": window.guard.summary() if window.guard is not None else None,
        "forecast": _forecast_field(window),
        "hardware": {**run.hardware, "cpu_model": carbon.cpu_model, "ram_total_gb": carbon.ram_total_gb},
        "config_hash": run.config_hash, "git_sha": run.git_sha, "versions": run.versions,
        "data_sources": run.data_sources,
        "command": run.command,
    })
    return _finite(record), gpu.power_samples


def _forecast_field(window: Window) -> dict[str, Any] | None:
    """The in-run forecasts and (prefixed `plan.`) the plan's, flat; None when there is neither."""
    fields = (window.forecaster.summary() if window.forecaster is not None else None) or {}
    fields |= {f"plan.{key}": value for key, value in (window.plan_forecast or {}).items()}
    return fields or None


def _expected(component: str, run: RunInfo) -> bool:
    """A component that should have been measured: CPU and RAM always, the GPU when the run used one."""
    return component != "gpu" or str(run.hardware.get("device", "cpu")).startswith("cuda")


def _mean_power(gpu: GpuReading) -> float | None:
    """The GPUs' mean power together (W): each device's sample mean, summed over devices."""
    by_device: dict[Any, list[float]] = {}
    for _, device, power_w in gpu.power_samples:
        by_device.setdefault(device, []).append(power_w)
    return sum(sum(p) / len(p) for p in by_device.values()) if by_device else None


def _write_power_samples(run_dir: Path, stage: str, samples: PowerSamples) -> None:
    if not samples:
        return
    path = run_dir / "power.csv"
    new = not path.exists()
    try:
        with open(path, "a", encoding="utf-8") as handle:
            if new:
                handle.write("stage,elapsed_s,device,power_w,source\n")
            for elapsed_s, device, power_w in samples:
                handle.write(f"{stage},{elapsed_s:.3f},{device},{power_w:.3f},measured:nvml-power-samples\n")
    except OSError as err:
        logger.warning("could not write %s: %s", path, err)


def _finite(value: Any) -> Any:
    """NaN and infinities become None: JSON has no NaN, and a reader must not guess."""
    # numbers.Real covers numpy scalars too (np.float32 is no float subclass, and its NaN would make
    # append_record raise and lose the record).
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
