"""A plan's forecasts: a few real steps of a stage, measured in a window, extrapolated to the whole stage.

Training stage. The calibration runs the stage's first steps on the real models and the real batches, in
the order training will draw them, inside a measurement window (the same meters as a run). The window's
time falls into three parts, each carried over in its own way:
- the head: from the window's opening to the end of the warm-up steps (loading the models, encoding the
  data, the first and slower steps): the same work the real stage does first, so it is carried over as is;
- the timed steps after the warm-up: each step's time as a fixed cost per step (the optimizer, the
  launches) plus a cost per padded token, fitted robustly (Theil-Sen: a slow step or two do not move it)
  and applied to the steps and padded tokens the real stage has left after its warm-up
  (`data.batching.PlannedSteps` counts them exactly). A per-token rate alone over-forecasts an epoch
  whose calibration drew short batches: the fixed cost is a larger share of a short step;
- the tail: from the last step to the window's closing (saving the model), carried over as is.
Energy, per component: the head's as measured, plus the power the timed steps drew (codecarbon's power
readings during them: the plan samples every second; NVML's counter) for the rest of the stage; the
window's mean power times the duration where no live figure was read. FLOPs are the calibration's counted
FLOPs per padded token times the stage's padded tokens. Every figure's provenance starts with
`forecast:` and names its method and what it was calibrated on.

Distillation with a teacher cache: the calibration's steps are all first-epoch steps, which run the teacher;
a cached later epoch does not. The plan times the teacher's forward passes on the stage's batches (as for
evaluation) and takes that time, and the teacher's counted FLOPs per padded token, off every step the cache
will serve (`CachedSteps`).

Forward passes (evaluation, the benchmark): each timed batch's seconds, fitted as a cost per batch plus a
cost per padded token (at batch size 1 the call's own cost is most of it), applied to the stage's batches
and padded tokens; a benchmark window repeats whole passes until both `repeats` and `min_window_s` are
reached, as the benchmark does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import theilslopes

COMPONENTS = ("cpu", "gpu", "ram")
MAX_FIT_STEPS = 400  # steps a Theil-Sen fit looks at (it compares every pair: 80k pairs)
DURATION_METHOD = "forecast:calibrated-head-plus-theil-sen-s-per-step-and-per-padded-token-plus-tail"
FORWARD_METHOD = "forecast:calibrated-theil-sen-forward-s-per-batch-and-per-padded-token"
ENERGY_METHOD = "forecast:calibrated-mean-power-x-duration"
STEP_ENERGY_METHOD = "forecast:measured-head-plus-calibrated-step-power-x-the-rest"
FLOPS_METHOD = "forecast:calibrated-counted-flops-per-padded-token"
FORWARD_FLOPS_METHOD = "estimated:2N-per-padded-token"
CACHED_SUFFIX = {"duration": "-minus-the-timed-teacher-forward-on-cached-steps",
                 "flops": "-minus-the-teachers-on-cached-steps"}


@dataclass(frozen=True)
class StepMark:
    """After training step `step` of the calibration: seconds since its window opened, padded tokens so far,
    and (when the meters had live figures) kWh so far and the last power reading (W) by component."""

    step: int
    time_s: float
    padded_tokens: int
    energy_kwh: dict[str, float] | None = None
    power_w: dict[str, float] | None = None


@dataclass(frozen=True, kw_only=True)
class WindowCost:
    """What a calibration window measured: its duration, its energy by component (kWh; None: not measured)
    and where each came from, and its counted FLOPs over `padded_tokens`."""

    duration_s: float
    energy_kwh: dict[str, float | None]
    energy_sources: dict[str, str | None]
    flops: float | None = None
    padded_tokens: int = 0

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> WindowCost:
        return cls(duration_s=float(record["duration_s"]),
                   energy_kwh={c: record.get(f"{c}_energy_kwh") for c in COMPONENTS},
                   energy_sources={c: record.get(f"{c}_energy_source") for c in COMPONENTS},
                   flops=record.get("flops"), padded_tokens=int(record.get("num_padded_tokens") or 0))

    def power_kw(self) -> dict[str, float]:
        """Mean power per measured component over the window, in kW (kWh per hour)."""
        hours = self.duration_s / 3600.0
        return {c: e / hours for c, e in self.energy_kwh.items() if e is not None and hours > 0}


@dataclass(frozen=True, kw_only=True)
class CostForecast:
    """A stage's (or window's) forecast figures, each with its method."""

    duration_s: float
    energy_kwh: dict[str, float]  # by component; only the components the calibration measured
    energy_basis: dict[str, str | None]  # component -> the calibration window's own provenance
    co2_kg: float | None
    flops: float | None
    duration_method: str
    detail: dict[str, Any]
    flops_method: str | None = FLOPS_METHOD
    energy_method: str = ENERGY_METHOD

    @property
    def total_energy_kwh(self) -> float | None:
        return sum(self.energy_kwh.values()) if self.energy_kwh else None

    def fields(self) -> dict[str, Any]:
        """Flat figures for plan.json and the record's `forecast` field (units in the names)."""
        return {"duration_s": self.duration_s, "energy_kwh": self.total_energy_kwh, "co2_kg": self.co2_kg,
                "flops": self.flops, **{f"{c}_energy_kwh": e for c, e in self.energy_kwh.items()},
                "duration_method": self.duration_method, "energy_method": self.energy_method,
                "energy_basis": {c: b for c, b in self.energy_basis.items() if c in self.energy_kwh},
                "flops_method": self.flops_method if self.flops is not None else None, **self.detail}


@dataclass(frozen=True, kw_only=True)
class CachedSteps:
    """The steps a teacher cache will serve (the epochs after the first) and what each does not spend: the
    teacher's forward, timed alone (seconds per step and per padded token) and its FLOPs per padded token."""

    num_steps: int
    num_padded_tokens: int
    teacher_s_per_step: float
    teacher_s_per_token: float
    teacher_flops_per_token: float | None

    @property
    def saved_s(self) -> float:
        """Seconds the served steps do not spend on the teacher."""
        return self.num_steps * self.teacher_s_per_step + self.num_padded_tokens * self.teacher_s_per_token

    @property
    def saved_flops(self) -> float | None:
        """The teacher's counted FLOPs per padded token over the served steps (None: not counted)."""
        return None if self.teacher_flops_per_token is None else self.teacher_flops_per_token * self.num_padded_tokens

    def detail(self) -> dict[str, Any]:
        """The plan entry's figures of the cache (units in the names)."""
        return {"teacher_cache_num_served_steps": self.num_steps, "teacher_cache_saved_s": self.saved_s,
                "teacher_cache_saved_flops": self.saved_flops,
                "teacher_forward_s_per_step": self.teacher_s_per_step,
                "teacher_forward_s_per_million_padded_tokens": self.teacher_s_per_token * 1e6}


def plan_teacher_share(entry: Mapping[str, Any]) -> float | None:
    """The teacher forward's share of the stage's mean step, from the plan entry of a distillation that a
    teacher cache serves: its timed forward over the fitted step, both at the stage's mean padded tokens per
    step (a per-token ratio alone trades on how each fit split its time between step and token). None
    without those figures."""
    num_steps, padded = entry.get("num_steps"), entry.get("num_padded_tokens")
    parts = [entry.get(key) for key in ("teacher_forward_s_per_step", "teacher_forward_s_per_million_padded_tokens",
                                        "s_per_step", "s_per_million_padded_tokens")]
    if not num_steps or not padded or any(part is None for part in parts):
        return None
    million_tokens = padded / num_steps / 1e6
    teacher_s, step_s = parts[0] + parts[1] * million_tokens, parts[2] + parts[3] * million_tokens
    return teacher_s / step_s if 0 < teacher_s < step_s else None


def _energy(cost: WindowCost, duration_s: float) -> dict[str, float]:
    return {c: kw * duration_s / 3600.0 for c, kw in cost.power_kw().items()}


def _co2(energy_kwh: dict[str, float], kg_co2_per_kwh: float) -> float | None:
    return sum(energy_kwh.values()) * kg_co2_per_kwh if energy_kwh else None


def training_forecast(*, marks: list[StepMark], cost: WindowCost, warmup_steps: int, total_steps: int,
                      total_padded_tokens: int, kg_co2_per_kwh: float,
                      cached: CachedSteps | None = None) -> CostForecast:
    """The whole training stage's figures from its calibration (see the module's docstring). `marks`: one
    after each calibration step, in order; `warmup_steps`: the first steps left out of the rate (at least
    one is kept out; fewer timed steps than that: the rate is taken over every step after the first);
    `cached`: the later steps a teacher cache will serve, whose teacher forward is taken off."""
    if not marks:
        raise ValueError("a calibration needs at least one step")
    last = marks[-1]
    flops = (cost.flops / cost.padded_tokens * total_padded_tokens
             if cost.flops is not None and cost.padded_tokens > 0 else None)
    if last.step >= total_steps:  # the calibration ran the whole stage: its figures are the forecast
        energy = _energy(cost, cost.duration_s)
        return CostForecast(duration_s=cost.duration_s, energy_kwh=energy, energy_basis=cost.energy_sources,
                            co2_kg=_co2(energy, kg_co2_per_kwh), flops=flops,
                            duration_method="forecast:calibration-ran-the-whole-stage",
                            detail={"calibration_steps": last.step, "timed_steps": 0,
                                    "calibration_marks": _marks_detail(marks)})
    if len(marks) < 2:
        raise ValueError("a calibration that stops before the stage ends needs at least two steps")
    warm_index = min(max(1, warmup_steps), len(marks) - 1) - 1
    warm = marks[warm_index]
    s_per_step, s_per_token = step_cost(marks[warm_index:])
    head_s, tail_s = warm.time_s, max(0.0, cost.duration_s - last.time_s)
    steps_s = (total_steps - warm.step) * s_per_step + (total_padded_tokens - warm.padded_tokens) * s_per_token
    if cached is not None:  # a served step saves its teacher forward, at most its whole fitted time
        steps_s -= min(cached.saved_s, cached.num_steps * s_per_step + cached.num_padded_tokens * s_per_token)
        if flops is not None and cached.saved_flops is not None:
            flops -= cached.saved_flops
    duration_s = head_s + steps_s + tail_s
    energy, energy_method = _steps_energy(marks[warm_index:], duration_s - head_s), STEP_ENERGY_METHOD
    if energy is None:
        energy, energy_method = _energy(cost, duration_s), ENERGY_METHOD
    return CostForecast(duration_s=duration_s, energy_kwh=energy, energy_basis=cost.energy_sources,
                        co2_kg=_co2(energy, kg_co2_per_kwh), flops=flops,
                        duration_method=DURATION_METHOD + (CACHED_SUFFIX["duration"] if cached is not None else ""),
                        flops_method=FLOPS_METHOD + (CACHED_SUFFIX["flops"] if cached is not None else ""),
                        energy_method=energy_method,
                        detail=(cached.detail() if cached is not None else {}) | {
                                "calibration_steps": last.step, "timed_steps": last.step - warm.step,
                                "head_s": head_s, "tail_s": tail_s, "s_per_step": s_per_step,
                                "s_per_million_padded_tokens": s_per_token * 1e6,
                                "calibration_mean_power_w": {c: kw * 1000.0 for c, kw in cost.power_kw().items()},
                                "calibration_marks": _marks_detail(marks)})


def _marks_detail(marks: list[StepMark]) -> list[list[float]]:
    """[step, s since the window opened, padded tokens so far] after each calibration step: to check the rate
    later (a calibration that ran the whole stage is a trace of it: benchmarks/forecast_accuracy.py)."""
    return [[m.step, round(m.time_s, 6), m.padded_tokens] for m in marks]


def _steps_energy(timed: list[StepMark], rest_s: float) -> dict[str, float] | None:
    """By component: the head's energy as measured by the warm-up's end (`timed[0]`), plus the power the
    timed steps drew for the rest of the stage. The head (loading, tokenizing: mostly one core) draws less
    than the steps, so the window's mean power would under-forecast a long stage. The steps' power: the
    median of codecarbon's power readings over the later half of the timed steps (a reading describes the
    second before it), else the energy the steps added over their time (NVML's counter). None without
    live figures."""
    warm, last = timed[0], timed[-1]
    if warm.energy_kwh is None or last.energy_kwh is None or last.time_s <= warm.time_s:
        return None
    found = {}
    for component in COMPONENTS:
        if component not in warm.energy_kwh or component not in last.energy_kwh:
            continue
        readings = [m.power_w[component] for m in timed[len(timed) // 2:] if component in (m.power_w or {})]
        power_kw = (float(np.median(readings)) / 1000.0 if readings else
                    (last.energy_kwh[component] - warm.energy_kwh[component]) / ((last.time_s - warm.time_s) / 3600))
        found[component] = warm.energy_kwh[component] + power_kw * rest_s / 3600.0
    return found or None


def step_cost(marks: list[StepMark]) -> tuple[float, float]:
    """(seconds per step, seconds per padded token) of the steps after `marks[0]`: a Theil-Sen line through
    each step's (padded tokens, seconds). Where that line is not usable (fewer than three steps, all of one
    size, or a negative part) the cost is all per padded token: the steps' time over their tokens."""
    seconds = np.diff([m.time_s for m in marks])
    tokens = np.diff([m.padded_tokens for m in marks]).astype(np.float64)
    total_tokens = float(tokens.sum())
    ratio = (0.0, float(seconds.sum()) / total_tokens if total_tokens > 0 else math.nan)
    if len(seconds) < 3 or np.ptp(tokens) == 0:
        return ratio
    if len(seconds) > MAX_FIT_STEPS:  # Theil-Sen takes every pair: an even spread of the steps keeps it cheap
        keep = np.linspace(0, len(seconds) - 1, MAX_FIT_STEPS).astype(int)
        seconds, tokens = seconds[keep], tokens[keep]
    fit = theilslopes(seconds, tokens)
    if fit.slope <= 0 or fit.intercept < 0:
        return ratio
    return float(fit.intercept), float(fit.slope)


def forward_forecast(*, pass_s: float, cost: WindowCost, kg_co2_per_kwh: float, flops: float | None,
                     setup_s: float = 0.0, passes: int = 1, min_window_s: float = 0.0,
                     rate: tuple[float, float] = (math.nan, math.nan)) -> CostForecast:
    """Forward passes of `pass_s` seconds each (one pass: every batch of the window once), repeated `passes`
    times and more until they last `min_window_s` (the benchmark's rule); `setup_s` before them (loading the
    models). `rate`: the fitted (seconds per batch, seconds per padded token) the pass time came from."""
    num_passes = max(passes, math.ceil(min_window_s / pass_s) if pass_s > 0 else passes)
    duration_s = setup_s + num_passes * pass_s
    energy = _energy(cost, duration_s)
    return CostForecast(duration_s=duration_s, energy_kwh=energy, energy_basis=cost.energy_sources,
                        co2_kg=_co2(energy, kg_co2_per_kwh), flops=flops * num_passes if flops is not None else None,
                        duration_method=FORWARD_METHOD, flops_method=FORWARD_FLOPS_METHOD,
                        detail={"passes": num_passes, "s_per_batch": rate[0],
                                "s_per_million_padded_tokens": rate[1] * 1e6, "setup_s": setup_s})
