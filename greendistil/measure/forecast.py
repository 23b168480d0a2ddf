"""In-run forecasts: what a training stage's segment will have cost when it ends, said while it runs.

The first steps of a segment are its warm-up (lazy initialisation, first allocations, the optimizer's state):
they are not typical, so the rate is measured from the end of the warm-up (`WARMUP_FRACTION` of the stage's
steps, at least one step). At each of `FRACTIONS` of the stage's steps, the forecast is the spend so far
plus the time left, and the energy the power drawn since the warm-up would spend in it. When the loop knows
each step's padded tokens in advance (`data.batching.PlannedSteps`), the time left is the steps left at a
fixed cost per step plus the padded tokens left at a cost per padded token, both fitted (Theil-Sen, as in
the plan's calibration) on every step since the warm-up: a fixed cost is a larger share of a short step,
and a length-grouped epoch mixes short and long ones. Otherwise it is the steps left at the mean step
time. The record keeps each forecast beside the segment's actual figures, so their error can be read from
the run log; every forecast figure's
provenance is the method named in `METHODS`. Each forecast also gives the whole run's total: what the run
spent before this window, plus this segment's forecast, plus (when the run has a plan) the plan's
forecasts of the windows after it (`RUN_TOTAL_METHODS`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from greendistil.measure.calibration import StepMark, step_cost
from greendistil.measure.live import EnergyNow

FRACTIONS = (0.10, 0.25, 0.50, 0.75)  # of the stage's steps: where a forecast is kept in the record
WARMUP_FRACTION = 0.05
METHODS = {"padded_tokens": "forecast:theil-sen-s-per-step-and-per-padded-token-since-warmup",
           "steps": "forecast:linear-per-step-since-warmup"}


RUN_TOTAL_METHODS = {True: "forecast:spent-before+this-segment+the-plan's-later-windows",
                     False: "forecast:spent-before+this-segment (no plan: the later stages are not in it)"}


@dataclass(frozen=True, kw_only=True)
class RunTotals:
    """What the rest of the run adds to a segment's forecast: the run's records before this window, and
    (from a plan) its windows after this one; None where unknown."""

    spent_duration_s: float = 0.0
    spent_energy_kwh: float = 0.0
    spent_co2_kg: float = 0.0
    later_duration_s: float | None = None
    later_energy_kwh: float | None = None
    later_co2_kg: float | None = None

    @property
    def planned(self) -> bool:
        return self.later_duration_s is not None

    def total(self, key: str, segment: float | None) -> float | None:
        if segment is None:
            return None
        later = getattr(self, f"later_{key}")
        return getattr(self, f"spent_{key}") + segment + (later or 0.0)


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """The segment's figures at its end, as forecast at `at_step` (`at_fraction` of the stage's steps), and
    the whole run's (`run_*`: see `RunTotals`; None without them)."""

    at_fraction: float
    at_step: int
    duration_s: float
    energy_kwh: float | None  # None: no meter had a live figure
    co2_kg: float | None
    run_duration_s: float | None = None
    run_energy_kwh: float | None = None
    run_co2_kg: float | None = None

    def fields(self) -> dict[str, Any]:
        prefix = f"at_{self.at_fraction:g}"
        return {f"{prefix}.step": self.at_step, f"{prefix}.duration_s": self.duration_s,
                f"{prefix}.energy_kwh": self.energy_kwh, f"{prefix}.co2_kg": self.co2_kg,
                **({f"{prefix}.run_duration_s": self.run_duration_s, f"{prefix}.run_energy_kwh": self.run_energy_kwh,
                    f"{prefix}.run_co2_kg": self.run_co2_kg} if self.run_duration_s is not None else {})}


@dataclass(frozen=True, kw_only=True)
class CachedStepCost:
    """The steps a teacher cache serves, from `first_step` (0-based) on, each costing `weight` of a full step
    (1 - the teacher forward's share of a step's time), and where that share came from."""

    first_step: int
    weight: float
    source: str  # e.g. "forecast:plan-timed-teacher-forward", "estimated:teacher-flop-share"

    def weights(self, total_steps: int) -> list[float]:
        served_from = min(max(self.first_step, 0), total_steps)
        return [1.0] * served_from + [self.weight] * (total_steps - served_from)


def _step_at(fraction: float, total_steps: int) -> int:
    """The first step at or past `fraction` of the steps (the epsilon absorbs float error: 0.1 x 30)."""
    return math.ceil(fraction * total_steps - 1e-9)


@dataclass(frozen=True)
class _Mark:
    step: int
    time_s: float
    energy_kwh: float | None
    work: float  # padded tokens (or steps) done by `step`


class Forecaster:
    """Watches one segment's steps (`observe` after each) and forecasts at the fractions it passes.

    `first_step`: the step the segment started from (0, or a resumed checkpoint's); `energy_now`: the
    window's energy until now (or None); `clock`: the window's clock, read once per observed step;
    `padded_tokens_per_step`: each of the stage's steps' padded tokens (None: extrapolate per step);
    `cached`: the steps a teacher cache serves and their cost relative to a full step (they skip the
    teacher's forward); the fit puts every step back on the full step's scale and the steps left are
    forecast at their own weights.
    """

    def __init__(self, *, first_step: int, total_steps: int, energy_now: Callable[[], EnergyNow | None],
                 clock: Callable[[], float], start_s: float, kg_co2_per_kwh: float,
                 padded_tokens_per_step: Sequence[int] | None = None, fractions: tuple[float, ...] = FRACTIONS,
                 warmup_fraction: float = WARMUP_FRACTION, run_totals: RunTotals | None = None,
                 cached: CachedStepCost | None = None) -> None:
        self.first_step, self.total_steps = first_step, total_steps
        self.run_totals = run_totals
        self._energy_now, self._clock, self._kg_co2_per_kwh = energy_now, clock, kg_co2_per_kwh
        usable = padded_tokens_per_step is not None and len(padded_tokens_per_step) >= total_steps
        self.unit = "padded_tokens" if usable else "steps"
        self.cached = cached
        weights = cached.weights(total_steps) if cached is not None else None
        self._weights = weights
        padded = list(padded_tokens_per_step[:total_steps]) if usable else None  # type: ignore[index]
        # after k steps: padded tokens (for the fit), the steps and the work (padded tokens, or steps) weighted
        self._padded = list(itertools.accumulate(padded, initial=0)) if padded is not None else None
        self._steps_weighted = list(itertools.accumulate(weights, initial=0.0)) if weights else None
        per_step = padded if padded is not None else [1] * total_steps
        self._work = (list(itertools.accumulate((w * p for w, p in zip(weights, per_step)), initial=0.0)) if weights
                      else list(itertools.accumulate(per_step, initial=0)) if padded is not None else None)
        self._start = _Mark(first_step, start_s, 0.0, self._work_at(first_step))
        self._warm_end_step = first_step + max(1, math.ceil(warmup_fraction * total_steps))
        self._warm: _Mark | None = None
        self._steps: list[StepMark] = []  # (step, time, padded tokens so far) of each step since the warm-up
        self._pending = sorted(f for f in fractions if _step_at(f, total_steps) > self._warm_end_step)
        self.forecasts: list[Forecast] = []

    def observe(self, step: int) -> Forecast | None:
        """After step `step` (1-based count of the stage's steps done): a new forecast when `step` reached the
        next fraction, else None."""
        if self._warm is None:
            if step >= self._warm_end_step:
                self._warm = self._mark(step)
                self._steps = [StepMark(step, self._warm.time_s, self._padded_at(step))]
            return None
        if not self._pending:
            return None
        if self.unit == "padded_tokens":  # each step's time, for the fit of its fixed and per-token cost
            self._steps.append(StepMark(step, self._clock(), self._padded_at(step)))
        if step < _step_at(self._pending[0], self.total_steps):
            return None
        fraction = self._pending.pop(0)
        while self._pending and step >= _step_at(self._pending[0], self.total_steps):
            fraction = self._pending.pop(0)  # several fractions in one step (a tiny stage): the last one
        forecast = self._forecast(fraction, self._mark(step))
        self.forecasts.append(forecast)
        return forecast

    def _work_at(self, step: int) -> float:
        """The work done after `step` steps: padded tokens or steps, each step at its weight."""
        return float(self._work[step]) if self._work is not None else float(step)

    def _padded_at(self, step: int) -> int:
        return int(self._padded[step]) if self._padded is not None else step

    def _steps_at(self, step: int) -> float:
        return float(self._steps_weighted[step]) if self._steps_weighted is not None else float(step)

    def _full_scale(self) -> list[StepMark]:
        """The observed steps with each step's time divided by its weight: every step as a full one."""
        if self._weights is None:
            return self._steps
        marks, time_s = [self._steps[0]], self._steps[0].time_s
        for before, mark in itertools.pairwise(self._steps):
            time_s += (mark.time_s - before.time_s) / self._weights[mark.step - 1]
            marks.append(StepMark(mark.step, time_s, mark.padded_tokens))
        return marks

    def _mark(self, step: int) -> _Mark:
        reading = self._energy_now()
        time_s = self._steps[-1].time_s if self._steps and self._steps[-1].step == step else self._clock()
        return _Mark(step, time_s, reading.energy_kwh if reading is not None else None, self._work_at(step))

    def _time_left_s(self, warm: _Mark, now: _Mark) -> float:
        """The steps left, at the cost per step and per padded token fitted since the warm-up (Theil-Sen, as
        the plan's calibration); per step, or without a usable fit, at the mean rate per unit of work."""
        steps_left = self._steps_at(self.total_steps) - self._steps_at(now.step)
        work_done, work_left = now.work - warm.work, self._work_at(self.total_steps) - now.work
        if self.unit == "padded_tokens" and len(self._steps) > 3:
            s_per_step, s_per_token = step_cost(self._full_scale())
            if not math.isnan(s_per_token):
                return steps_left * s_per_step + work_left * s_per_token
        if work_done <= 0:  # steps of no padded tokens cannot happen; guard the division anyway
            work_done, work_left = float(now.step - warm.step), float(self.total_steps - now.step)
        return work_left * (now.time_s - warm.time_s) / work_done

    def _forecast(self, fraction: float, now: _Mark) -> Forecast:
        warm = self._warm
        assert warm is not None
        time_left_s = self._time_left_s(warm, now)
        duration_s = (now.time_s - self._start.time_s) + time_left_s
        energy_kwh = None
        if now.energy_kwh is not None and warm.energy_kwh is not None and now.time_s > warm.time_s:
            # the power drawn since the warm-up, for the time left
            energy_kwh = now.energy_kwh + time_left_s * (now.energy_kwh - warm.energy_kwh) / (now.time_s - warm.time_s)
        co2_kg = energy_kwh * self._kg_co2_per_kwh if energy_kwh is not None else None
        run = self.run_totals
        return Forecast(at_fraction=fraction, at_step=now.step, duration_s=duration_s, energy_kwh=energy_kwh,
                        co2_kg=co2_kg, run_duration_s=run.total("duration_s", duration_s) if run else None,
                        run_energy_kwh=run.total("energy_kwh", energy_kwh) if run else None,
                        run_co2_kg=run.total("co2_kg", co2_kg) if run else None)

    def summary(self) -> dict[str, Any] | None:
        """The record's `forecast` field (flat): the method and each forecast kept. None when none was made."""
        if not self.forecasts:
            return None
        fields: dict[str, Any] = {"method": METHODS[self.unit], "warmup_steps": self._warm_end_step - self.first_step,
                                  "first_step": self.first_step, "total_steps": self.total_steps}
        if self.run_totals is not None:
            fields["run_total_method"] = RUN_TOTAL_METHODS[self.run_totals.planned]
        if self.cached is not None:
            fields |= {"cached_steps_from": self.cached.first_step, "cached_step_weight": self.cached.weight,
                       "cached_step_weight_source": self.cached.source}
        for forecast in self.forecasts:
            fields |= forecast.fields()
        return fields
