"""`greendistil plan`: what a config's run will cost (work, FLOPs, time, kWh, CO2) before it runs.

The plan runs the preflight (bad input fails exactly as `run` does: one line, exit 2, nothing written),
then calibrates every stage on this machine in a throwaway run directory that is deleted afterwards:
- a training stage runs through its own runner (the real models, the real batches in training order, the
  real loop) for its warm-up plus `calibrate_steps` steps, inside a measurement window; the stage's work
  (examples, tokens, padded tokens of every step after the caps and the length grouping) is replayed from
  its loader without training on it;
- evaluation and the benchmark time forward passes of each model at the stage's batch size, in a window.
`measure.calibration` turns those into forecasts. Under torchrun a plan is not made: it calibrates one
process. The plan is returned as a JSON-ready dict (see `runlog.plans`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from greendistil.config import (BenchmarkStage, Config, EvaluateStage, StageConfig, TrainingStage, WindowSpec,
                                suite_steps)
from greendistil.config.types import BUDGET_UNITS
from greendistil.data.batching import PlannedSteps, collate, encode, length_sorted_batches
from greendistil.distributed import SINGLE
from greendistil.errors import ConfigError
from greendistil.measure.budget import Limits
from greendistil.measure.calibration import (COMPONENTS, CachedSteps, CostForecast, StepMark, WindowCost,
                                             forward_forecast, step_cost, training_forecast)
from greendistil.measure.flops import count_flops, count_nonembedding_params
from greendistil.measure.forecast import Forecast
from greendistil.measure.window import Clock, Meters, RunInfo, Window, measure
from greendistil.models.inputs import model_inputs
from greendistil.pipeline import Contexts, RunRequest, start_run
from greendistil.preflight import preflight
from greendistil.runlog.plans import PLAN_VERSION
from greendistil.runlog.progress import RunProgress
from greendistil.runlog.store import utc_now
from greendistil.runtime.device import synchronize
from greendistil.runtime.precision import Precision
from greendistil.runtime.rng import seed_everything
from greendistil.stages import RUNNERS, StageContext

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATE_STEPS = 40  # timed steps per training stage, after its warm-up (20: +-12% between plans here)
FORWARD_TIMED_BATCHES = 4  # forward batches timed per model and batch size, at least ...
CALIBRATION_POWER_S = 1.0  # codecarbon's sampling interval while calibrating
FORWARD_TIMED_EXAMPLES = 64  # ... this many examples' worth: a batch of 1 takes milliseconds, too few to time
# The teacher forward a cache saves, timed on this many training batches: its share of a step weighs every
# served step of the in-run forecast (4 batches gave shares from 0.23 to 0.54 of a step on five GLUE tasks)
CACHE_TIMED_BATCHES = 16


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    config: Config
    calibrate_steps: int = DEFAULT_CALIBRATE_STEPS
    command: str | None = None
    clock: Clock = time.perf_counter


def make_plan(request: PlanRequest) -> dict[str, Any]:
    """Calibrate each of the config's stages and forecast the whole run; see the module's docstring."""
    config, clock = request.config, request.clock
    if isinstance(request.calibrate_steps, bool) or request.calibrate_steps < 2:
        raise ConfigError(f"--calibrate-steps: {request.calibrate_steps!r} is too few; use 2 or more (default "
                          f"{DEFAULT_CALIBRATE_STEPS}): the rate needs at least two timed steps")
    started_s = clock()
    checked = preflight(config, dist=SINGLE)
    with tempfile.TemporaryDirectory(prefix="greendistil-plan-") as tmp:
        run_dir = Path(tmp) / "calibration"
        run_dir.mkdir()
        # codecarbon sampled every second, so that the live energy at the warm-up's end and at the last
        # step is read to about a second (a run's own interval stays as configured).
        sampled = dataclasses.replace(config, carbon=dataclasses.replace(
            config.carbon, measure_power_s=min(config.carbon.measure_power_s, CALIBRATION_POWER_S)))
        run, meters, device = start_run(sampled, checked, run_dir, command=request.command)
        contexts = Contexts(RunRequest(config=config, show_progress=False, clock=clock), checked, run_dir, device,
                            RunProgress(), SINGLE)
        entries: list[dict[str, Any]] = []
        try:
            calibrated: dict[tuple[str | None, int], list[dict[str, Any]]] = {}
            for step in suite_steps(config):
                key = (step.task, step.index)
                if key not in calibrated:  # another seed of a (task, stage) does the same work: not calibrated again
                    seed_everything(step.torch_seed)
                    ctx = contexts.get(step.task, step.seed)
                    step_run = dataclasses.replace(run, task=step.task, seed=step.seed)
                    calibrated[key] = _plan_stage(ctx, step.stage, step_run, meters, clock, request.calibrate_steps)
                entries += [{**entry, "seed": step.seed} for entry in calibrated[key]]
        finally:
            meters.gpu.close()
    plan = {
        "plan_version": PLAN_VERSION, "config_hash": config.config_hash(), "run_name": config.run.name,
        "created_at": utc_now(), "command": request.command, "hardware": run.hardware, "versions": run.versions,
        "world_size": 1, "country_iso_code": run.country_iso_code, "pue": run.pue,
        "intensity_g_per_kwh": run.intensity_g_per_kwh, "intensity_source": run.intensity_source,
        "calibration": {"duration_s": clock() - started_s, "calibrate_steps": request.calibrate_steps,
                        "forward_timed_batches": FORWARD_TIMED_BATCHES,
                        "forward_timed_examples": FORWARD_TIMED_EXAMPLES},
        "stages": entries, "total": _total(entries),
    }
    plan["budget_warnings"] = budget_warnings(config, plan)
    return plan


def _plan_stage(ctx: StageContext, stage: StageConfig, run: RunInfo, meters: Meters, clock: Clock,
                calibrate_steps: int) -> list[dict[str, Any]]:
    if isinstance(stage, TrainingStage):
        return [_plan_training(ctx, stage, run, meters, clock, calibrate_steps)]
    if isinstance(stage, EvaluateStage):
        return [_plan_evaluate(ctx, stage, run, meters, clock)]
    if isinstance(stage, BenchmarkStage):
        return _plan_benchmark(ctx, stage, run, meters, clock)
    raise TypeError(f"no plan for a {type(stage).__name__}")  # a new stage kind must say how it is planned


def _entry(task: str | None, stage: StageConfig, window: str, role: str, work: dict[str, Any],
           forecast: CostForecast) -> dict[str, Any]:
    return {"task": task, "stage": stage.name, "window": window, "kind": stage.kind, "role": role, **work,
            **forecast.fields()}


class _MarkedWindow:
    """A calibration's window as the training loop sees it: the real window, plus a mark after every step
    and the shapes of the whole stage's steps (which the loop replays from its loader)."""

    def __init__(self, window: Window) -> None:
        self._window = window
        self.marks: list[StepMark] = []
        self.planned: PlannedSteps | None = None
        self.total_steps = 0
        self.cached_from_step: int | None = None  # the first step a teacher cache will serve

    def __getattr__(self, name: str) -> Any:
        return getattr(self._window, name)

    def observe_step(self, step: int, *, first_step: int, total_steps: int,
                     planned: PlannedSteps | None = None, cached_from_step: int | None = None) -> Forecast | None:
        self.planned, self.total_steps, self.cached_from_step = planned, total_steps, cached_from_step
        live = self._window.live_scalars()
        energy = {c: live[f"{c}_energy_kwh"] for c in COMPONENTS if f"{c}_energy_kwh" in live} or None
        power = {c: live[f"{c}_power_w"] for c in ("cpu", "ram") if f"{c}_power_w" in live} or None
        self.marks.append(StepMark(step, self._window.elapsed_s() or 0.0, self._window.counters.num_padded_tokens,
                                   energy, power))
        return None


class _CalibrationOpener:
    """The window opener a calibrated stage runs with: one real measurement window, into the throwaway run."""

    def __init__(self, stage: StageConfig, run: RunInfo, meters: Meters, clock: Clock) -> None:
        self.stage, self.run, self.meters, self.clock = stage, run, meters, clock
        self.marked: _MarkedWindow | None = None
        self.record: dict[str, Any] | None = None

    def is_done(self, spec: WindowSpec) -> bool:
        return False

    @contextmanager
    def __call__(self, spec: WindowSpec) -> Iterator[Any]:
        with measure(stage=spec.name, kind=self.stage.kind, role=spec.role, meters=self.meters, run=self.run,
                     clock=self.clock) as window:
            self.marked = _MarkedWindow(window)
            yield self.marked
        self.record = window.record


def _plan_training(ctx: StageContext, stage: TrainingStage, run: RunInfo, meters: Meters, clock: Clock,
                   calibrate_steps: int) -> dict[str, Any]:
    """Run the stage's first steps for real and extrapolate. The warm-up is the stage's `flop_sample_steps`
    plus one: at least its FLOP-counted leading steps (slower by the counting; a short stage counts fewer)
    and the first uncounted one. A distillation whose teacher cache will serve its later epochs is
    calibrated on its first epoch's steps only, and the teacher's forward is taken off the served ones."""
    warmup_steps = stage.flop_sample_steps + 1
    ctx.max_train_steps = warmup_steps + calibrate_steps
    opener = _CalibrationOpener(stage, run, meters, clock)
    try:
        RUNNERS[stage.kind](ctx, stage, opener)
    finally:
        ctx.max_train_steps = None
    marked, record = opener.marked, opener.record
    assert marked is not None and record is not None  # the runner opened its one window, which wrote a record
    planned = marked.planned
    cost = WindowCost.of_record(record)
    total_steps = marked.total_steps
    if planned is not None:
        work = {"num_steps": total_steps, "num_examples": sum(planned.rows), "num_tokens": sum(planned.tokens),
                "num_padded_tokens": sum(planned.padded_tokens), "work_source": "replayed-from-the-loader"}
    else:  # a loader that cannot be replayed: the calibration's mean step, times the steps
        per_step = cost.padded_tokens / max(1, record["num_steps"])
        work = {"num_steps": total_steps, "num_examples": None, "num_tokens": None,
                "num_padded_tokens": int(round(per_step * total_steps)),
                "work_source": "forecast:calibration-mean-step-x-steps"}
    padded = work["num_padded_tokens"]
    analytic = record.get("flops_analytic")
    work |= {"epochs": stage.epochs, "num_train_examples": record.get("details", {}).get("train_examples"),
             "flops_analytic": analytic / cost.padded_tokens * padded if analytic and cost.padded_tokens else None}
    cached, teacher_analytic = _cached_steps(ctx, stage, marked, record, clock)
    if cached is not None and work["flops_analytic"] is not None:  # the run takes the served steps' 2N back too
        work["flops_analytic"] -= teacher_analytic * cached.num_padded_tokens
    forecast = training_forecast(marks=marked.marks, cost=cost, warmup_steps=warmup_steps, total_steps=total_steps,
                                 total_padded_tokens=padded, kg_co2_per_kwh=run.kg_co2_per_kwh, cached=cached)
    logger.info("plan: %s calibrated on %d steps in %.1f s", stage.name, len(marked.marks), cost.duration_s)
    return _entry(run.task, stage, stage.name, stage.trained_role, work, forecast)


def _cached_steps(ctx: StageContext, stage: TrainingStage, marked: _MarkedWindow, record: dict[str, Any],
                  clock: Clock) -> tuple[CachedSteps | None, float]:
    """The steps a distillation's teacher cache will serve, and the teacher forward each skips: timed on the
    stage's own training batches (as evaluation's forwards are), its FLOPs per padded token as counted; and
    the teacher's analytic FLOPs per padded token (2N)."""
    if marked.cached_from_step is None or marked.planned is None or marked.cached_from_step >= marked.total_steps:
        return None, 0.0
    served = marked.planned.padded_tokens[marked.cached_from_step:marked.total_steps]
    loaded = ctx.load("teacher")
    teacher = loaded.model.to(ctx.device).eval()
    encoded = ctx.encoded("train", loaded.tokenizer)
    _, timed = _sorted_batches(encoded, stage.batch_size, teacher, loaded.tokenizer.pad_token_id, ctx.device,
                               min_batches=CACHE_TIMED_BATCHES)
    # as the distillation step runs it: in the run's precision, every layer's hidden states out
    s_per_step, s_per_token = _time_forward(teacher, timed, clock, ctx.precision, output_hidden_states=True)
    teacher_flops = (record.get("flops_by_component") or {}).get("teacher_forward")
    padded = int(record.get("num_padded_tokens") or 0)
    return CachedSteps(num_steps=len(served), num_padded_tokens=int(sum(served)), teacher_s_per_step=s_per_step,
                       teacher_s_per_token=s_per_token if not math.isnan(s_per_token) else 0.0,
                       teacher_flops_per_token=teacher_flops / padded if teacher_flops and padded else None,
                       ), 2.0 * count_nonembedding_params(teacher)


def _time_forward(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], clock: Clock,
                  precision: Precision, *, flops_counted: bool = False, **forward_kwargs: Any) -> tuple[float, float]:
    """(seconds per batch, seconds per padded token) of `model`'s forward passes over `batches` in the run's
    `precision` (bf16 autocast where the run computes in it), each timed on its own (after one untimed pass)
    and fitted as `measure.calibration.step_cost` fits training steps. `flops_counted`: each pass runs under
    the FLOP counter, as evaluation runs every batch (the counter's dispatch makes a pass about 1.3x slower)."""
    def forward(batch: dict[str, torch.Tensor]) -> None:
        if flops_counted:
            count_flops(lambda: model(**batch, **forward_kwargs))
        else:
            model(**batch, **forward_kwargs)

    marks = [StepMark(0, 0.0, 0)]
    with torch.inference_mode(), precision.autocast():
        forward(batches[0])
        synchronize()
        start = clock()
        for index, batch in enumerate(batches, 1):
            forward(batch)
            synchronize()
            marks.append(StepMark(index, clock() - start, marks[-1].padded_tokens + int(batch["input_ids"].numel())))
    return step_cost(marks)


def _pass_s(rate: tuple[float, float], rows: list[np.ndarray], lengths: np.ndarray) -> tuple[float, int]:
    """(seconds, padded tokens) of one pass over the batches `rows` at the fitted `rate`."""
    padded = sum(len(r) * int(lengths[r].max()) for r in rows)
    return len(rows) * rate[0] + padded * rate[1], padded


def _batches(encoded: Any, rows: list[np.ndarray], model: torch.nn.Module, pad_token_id: int,
             device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in model_inputs(collate([encoded[int(i)] for i in r], pad_token_id),
                                                        model).items()} for r in rows]


def _sorted_batches(encoded: Any, batch_size: int, model: torch.nn.Module, pad_token_id: int,
                    device: torch.device, min_batches: int = FORWARD_TIMED_BATCHES,
                    ) -> tuple[list[np.ndarray], list[dict[str, torch.Tensor]]]:
    """A split's rows batched by length (as evaluation batches them), and the batches to time: spread over
    them, at least `min_batches` and `FORWARD_TIMED_EXAMPLES` examples' worth."""
    rows = length_sorted_batches(encoded.lengths, batch_size)
    count = max(min_batches, math.ceil(FORWARD_TIMED_EXAMPLES / batch_size))
    return rows, _batches(encoded, _spread(rows, count), model, pad_token_id, device)


def _spread(items: list[Any], count: int) -> list[Any]:
    """`count` items evenly spaced over `items` (all of them when there are fewer)."""
    if len(items) <= count:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count)]


@contextmanager
def _forward_window(stage: StageConfig, run: RunInfo, meters: Meters, clock: Clock) -> Iterator[list[WindowCost]]:
    """A measurement window around a stage's forward timings; its cost is appended to the yielded list."""
    costs: list[WindowCost] = []
    with measure(stage=f"calibration:{stage.name}", kind=stage.kind, role="calibration", meters=meters, run=run,
                 clock=clock) as window:
        yield costs
    assert window.record is not None
    costs.append(WindowCost.of_record(window.record))


def _plan_evaluate(ctx: StageContext, stage: EvaluateStage, run: RunInfo, meters: Meters,
                   clock: Clock) -> dict[str, Any]:
    """Each role's forward passes over the dev split(s), batched as evaluation batches them (sorted by length)."""
    timings: list[tuple[float, float, int, float]] = []  # (load s, pass s, padded tokens, FLOPs) per role and split
    examples = tokens = 0
    rate = (math.nan, math.nan)
    with _forward_window(stage, run, meters, clock) as costs:
        for role in stage.roles:
            load_start = clock()
            loaded = ctx.load(role)
            model = loaded.model.to(ctx.device).eval()
            load_s = clock() - load_start
            per_token_flops = 2.0 * count_nonembedding_params(model)
            for split in ctx.task.dev_splits:
                encoded = ctx.encoded(split, loaded.tokenizer)
                rows, timed = _sorted_batches(encoded, stage.batch_size, model, loaded.tokenizer.pad_token_id,
                                              ctx.device)
                examples, tokens = examples + len(encoded), tokens + encoded.num_tokens
                rate = _time_forward(model, timed, clock, ctx.precision, flops_counted=True)  # as the stage runs
                pass_s, padded = _pass_s(rate, rows, np.asarray(encoded.lengths))
                timings.append((load_s, pass_s, padded, per_token_flops * padded))
                load_s = 0.0  # the model is loaded once for all its splits
    padded_total = sum(t[2] for t in timings)
    flops = sum(t[3] for t in timings)
    forecast = forward_forecast(pass_s=sum(t[1] for t in timings), cost=costs[0], kg_co2_per_kwh=run.kg_co2_per_kwh,
                                flops=flops, setup_s=sum(t[0] for t in timings), rate=rate)
    work = {"num_steps": None, "num_examples": examples, "num_tokens": tokens, "num_padded_tokens": padded_total,
            "flops_analytic": flops, "work_source": "the dev split(s), batched as evaluation batches them"}
    return _entry(run.task, stage, stage.name, "+".join(stage.roles), work, forecast)


def _plan_benchmark(ctx: StageContext, stage: BenchmarkStage, run: RunInfo, meters: Meters,
                    clock: Clock) -> list[dict[str, Any]]:
    """Each (role, batch size) window: its passes over the benchmark's sentences (file order), each pass at
    the forward cost timed on batches spread over the pass; as many passes as `repeats` and `min_window_s`
    need."""
    if ctx.benchmark_examples is None:
        raise ValueError("no benchmark examples: the preflight reads them for a benchmark stage (a bug)")
    examples = ctx.benchmark_examples.head(stage.num_examples)
    rates: list[tuple[WindowSpec, int, int, float, tuple[float, float], float]] = []
    with _forward_window(stage, run, meters, clock) as costs:
        models = {role: ctx.load(role) for role in stage.roles}
        for spec in stage.windows():
            loaded = models[spec.role]
            model = loaded.model.to(ctx.device).eval()
            encoded = encode(examples, loaded.tokenizer, ctx.config.task.max_seq_length)
            size = int(spec.batch_size or 1)
            rows = [np.arange(i, min(i + size, len(encoded))) for i in range(0, len(encoded), size)]
            count = max(FORWARD_TIMED_BATCHES, math.ceil(FORWARD_TIMED_EXAMPLES / size))
            timed = _batches(encoded, _spread(rows, count), model, loaded.tokenizer.pad_token_id, ctx.device)
            rate = _time_forward(model, timed, clock, ctx.precision)
            pass_s, padded = _pass_s(rate, rows, np.asarray(encoded.lengths))
            rates.append((spec, len(encoded), padded, pass_s, rate, 2.0 * count_nonembedding_params(model) * padded))
    entries = []
    for spec, num_examples, padded, pass_s, rate, flops in rates:
        forecast = forward_forecast(pass_s=pass_s, cost=costs[0], kg_co2_per_kwh=run.kg_co2_per_kwh, flops=flops,
                                    passes=stage.repeats, min_window_s=stage.min_window_s, rate=rate)
        passes = forecast.detail["passes"]
        work = {"num_steps": None, "num_examples": num_examples * passes, "num_tokens": None,
                "num_padded_tokens": padded * passes, "flops_analytic": flops * passes,
                "work_source": "the benchmark's sentences, in file order, times the forecast passes"}
        entries.append(_entry(run.task, stage, spec.name, spec.role, work, forecast))
    return entries


def _total(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def add(key: str) -> float | None:
        values = [e.get(key) for e in entries]
        return sum(v for v in values if v is not None) if values and None not in values else None
    return {key: add(key) for key in ("duration_s", "energy_kwh", "co2_kg", "flops", "flops_analytic")}


def budget_warnings(config: Config, plan: dict[str, Any]) -> list[str]:
    """One line for each budget that the plan forecasts the run (or a stage: in a suite, per task) to cross."""
    scopes: list[tuple[Limits, str, dict[str, Any]]] = [(Limits.of("run", config.run), "", plan.get("total", {}))]
    for stage in config.stages:
        if isinstance(stage, TrainingStage):
            for entry in (e for e in plan.get("stages", []) if e.get("stage") == stage.name):
                task = f" (task {entry['task']})" if entry.get("task") else ""
                scopes.append((Limits.of(f"stages.{stage.name}", stage), task, entry))
    warnings = []
    for limits, where, figures in scopes:
        for key, limit in limits.set_limits().items():
            name = key.rsplit(".", 1)[1]
            forecast = figures.get(name.removeprefix("max_"))
            if forecast is not None and forecast > limit:
                unit = BUDGET_UNITS[name]
                warnings.append(f"the plan forecasts {forecast:.4g} {unit}{where} against {key} = {limit:g} {unit}: "
                                "the run will stop there (exit 3) unless the budget is raised")
    return warnings
