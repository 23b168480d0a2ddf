"""How well the plan and the in-run forecasts foresee a training stage's duration: every method replayed on one
measured trace of the whole stage, side by side.

    GLUE_DIR=../shared/glue python benchmarks/forecast_accuracy.py CONFIG [--set KEY=VALUE ...] [--out TRACE]
    python benchmarks/forecast_accuracy.py --trace TRACE

The trace is a plan whose calibration runs every training stage to its end (`--calibrate-steps` far above any
stage's steps): each step is timed in the stage's measurement window, on the real models and batches, by the
real loop, and the plan keeps each step's end time and padded tokens (`calibration_marks`). A distillation
whose teacher cache would serve its later epochs is calibrated on its first epoch only, so it is not a trace:
give it `cache_teacher = false` to trace it (a cached stage's steps are not all alike anyway).

Replayed on each trace, the stage's duration as forecast by:
- the plan: its calibration's first `warm-up + --calibrate-steps` steps (`measure.calibration.training_forecast`,
  as `greendistil plan` computes it);
- the in-run forecaster (`measure.forecast.Forecaster`) at each of its fractions, on a clock that reads the trace;
- each fit of `FITS` on the same steps as each of those: which steps were seen is fixed, only the fit differs.
Printed: the stage's measured duration and each forecast's error against it (the part after the warm-up:
the head and the tail are carried over as measured in both). Energy is not replayed: on an estimated meter it
is power x time, so its error follows the duration's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from greendistil.measure.calibration import StepMark, WindowCost, step_cost, training_forecast
from greendistil.measure.forecast import FRACTIONS, WARMUP_FRACTION, Forecaster

TRACE_STEPS = 10**9  # --calibrate-steps for the trace: more than any stage has, so every stage runs to its end
PLAN_CALIBRATE_STEPS = 40  # as `greendistil plan`'s default


@dataclass(frozen=True)
class Trace:
    """One training stage run to its end: each step's seconds and padded tokens, what came before the first
    step (loading, encoding: the head) and after the last (saving: the tail)."""

    task: str | None
    stage: str
    step_s: np.ndarray  # (steps,)
    padded_tokens: np.ndarray  # (steps,)
    head_s: float
    tail_s: float
    plan_warmup_steps: int  # the plan's warm-up for this stage: its flop_sample_steps + 1

    @property
    def duration_s(self) -> float:
        return self.head_s + float(self.step_s.sum()) + self.tail_s

    @classmethod
    def of_entry(cls, entry: dict[str, Any], plan_warmup_steps: int) -> Trace | None:
        """The trace of a plan entry whose calibration ran the whole stage; None otherwise."""
        marks = entry.get("calibration_marks") or []
        if not marks or marks[-1][0] < entry["num_steps"]:
            return None
        times = np.array([0.0] + [m[1] for m in marks])
        padded = np.diff([0] + [m[2] for m in marks])
        return cls(task=entry["task"], stage=entry["stage"], step_s=np.diff(times)[1:], padded_tokens=padded[1:],
                   head_s=float(marks[0][1]), tail_s=float(entry["duration_s"] - marks[-1][1]),
                   plan_warmup_steps=plan_warmup_steps)
    # The first step is in the head: it is timed from the window's opening (the loading and encoding before it
    # cannot be told apart from it), and every method carries it over as measured.


# --- fits: (padded tokens, seconds) of the seen steps -> the seconds of the steps left --------------------------

Fit = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def _theil_sen_rate(seen_tokens: np.ndarray, seen_s: np.ndarray) -> tuple[float, float]:
    """The package's fit (`measure.calibration.step_cost`): (seconds per step, seconds per padded token)."""
    marks = [StepMark(0, 0.0, 0)]
    for tokens, seconds in zip(seen_tokens, seen_s):
        marks.append(StepMark(len(marks), marks[-1].time_s + float(seconds), marks[-1].padded_tokens + int(tokens)))
    return step_cost(marks)


def _theil_sen(seen_tokens: np.ndarray, seen_s: np.ndarray, left_tokens: np.ndarray) -> float:
    """The package's fit: a Theil-Sen line of seconds on padded tokens."""
    s_per_step, s_per_token = _theil_sen_rate(seen_tokens, seen_s)
    return len(left_tokens) * s_per_step + float(left_tokens.sum()) * s_per_token


def _theil_sen_mean(seen_tokens: np.ndarray, seen_s: np.ndarray, left_tokens: np.ndarray) -> float:
    """The Theil-Sen line moved up by the seen steps' mean residual: its slope, and the mean step's level (a
    median line misses the slow steps, which a total includes)."""
    s_per_step, s_per_token = _theil_sen_rate(seen_tokens, seen_s)
    residual_per_step = float(seen_s.mean()) - s_per_step - float(seen_tokens.mean()) * s_per_token
    return len(left_tokens) * (s_per_step + residual_per_step) + float(left_tokens.sum()) * s_per_token


def _least_squares(seen_tokens: np.ndarray, seen_s: np.ndarray, left_tokens: np.ndarray, degree: int = 1) -> float:
    if len(seen_s) <= degree + 1 or np.ptp(seen_tokens) == 0:
        return _per_token(seen_tokens, seen_s, left_tokens)
    coefficients = np.polyfit(seen_tokens.astype(float), seen_s, degree)
    return float(np.polyval(coefficients, left_tokens.astype(float)).sum())


def _per_token(seen_tokens: np.ndarray, seen_s: np.ndarray, left_tokens: np.ndarray) -> float:
    return float(seen_s.sum()) / float(seen_tokens.sum()) * float(left_tokens.sum())


def _per_step(seen_tokens: np.ndarray, seen_s: np.ndarray, left_tokens: np.ndarray) -> float:
    return float(seen_s.mean()) * len(left_tokens)


FITS: dict[str, Fit] = {
    "theil-sen (the package's)": _theil_sen,
    "theil-sen + mean residual": _theil_sen_mean,
    "least squares, line": _least_squares,
    "least squares, quadratic": lambda t, s, left: _least_squares(t, s, left, degree=2),
    "mean s per padded token": _per_token,
    "mean s per step": _per_step,
}


# --- the replays ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """A forecast's vantage point: the steps `[first, last)` fitted on (after the warm-up), and what the
    package's own method forecast for the stage from there. The in-run forecaster has spent what it saw and
    forecasts the steps from `last`; the plan's calibration is not the run, so the plan forecasts every step
    after the warm-up, those it fitted on too (`forecast_from` = `first`)."""

    label: str
    first: int
    last: int
    package_s: float
    forecast_from: int


def plan_vantage(trace: Trace, calibrate_steps: int = PLAN_CALIBRATE_STEPS) -> Seen | None:
    """The plan's: `training_forecast` on the first warm-up + `calibrate_steps` steps, as `greendistil plan`."""
    num = trace.plan_warmup_steps + calibrate_steps
    if num >= len(trace.step_s):
        return None
    marks, time_s, tokens = [], trace.head_s, 0
    marks.append(StepMark(1, time_s, 0))  # the first step ends the head (see Trace.of_entry)
    for index in range(num - 1):
        time_s += float(trace.step_s[index])
        tokens += int(trace.padded_tokens[index])
        marks.append(StepMark(index + 2, time_s, tokens))
    cost = WindowCost(duration_s=time_s, energy_kwh={}, energy_sources={})
    forecast = training_forecast(marks=marks, cost=cost, warmup_steps=trace.plan_warmup_steps,
                                 total_steps=len(trace.step_s) + 1,
                                 total_padded_tokens=int(trace.padded_tokens.sum()), kg_co2_per_kwh=0.0)
    first = trace.plan_warmup_steps - 1
    return Seen("plan", first, num - 1, forecast.duration_s + trace.tail_s, forecast_from=first)


def in_run_vantages(trace: Trace, fractions: Sequence[float] = FRACTIONS) -> list[Seen]:
    """The in-run forecaster's, at each fraction it reaches: replayed on a clock that reads the trace."""
    total_steps = len(trace.step_s) + 1
    now = [trace.head_s]
    forecaster = Forecaster(first_step=0, total_steps=total_steps, energy_now=lambda: None, clock=lambda: now[0],
                            start_s=0.0, kg_co2_per_kwh=0.0, fractions=tuple(fractions),
                            padded_tokens_per_step=[0, *trace.padded_tokens.tolist()])
    forecaster.observe(1)
    seen = []
    warm_end = max(1, math.ceil(WARMUP_FRACTION * total_steps))
    for index, seconds in enumerate(trace.step_s):
        now[0] += float(seconds)
        made = forecaster.observe(index + 2)
        if made is not None:
            seen.append(Seen(f"in-run at {made.at_fraction:.0%}", warm_end - 1, made.at_step - 1,
                             made.duration_s + trace.tail_s, forecast_from=made.at_step - 1))
    return seen


def forecast_with(fit: Fit, trace: Trace, seen: Seen) -> float:
    """The stage's duration forecast by `fit` from `seen`: the time measured before `seen.forecast_from`, the
    fit's for the steps from there, and the tail."""
    spent = trace.head_s + float(trace.step_s[:seen.forecast_from].sum())
    return spent + fit(trace.padded_tokens[seen.first:seen.last], trace.step_s[seen.first:seen.last],
                       trace.padded_tokens[seen.forecast_from:]) + trace.tail_s


def pace_by_part(trace: Trace, parts: int = 4) -> list[float]:
    """Each part's measured time over what one line through the whole stage (seconds on padded tokens, least
    squares) gives its steps: 1.0 throughout on a machine whose pace holds. A forecast made early cannot see
    a drift later, so the spread of these is a floor under its error."""
    tokens = trace.padded_tokens.astype(float)
    line = np.polyval(np.polyfit(tokens, trace.step_s, 1), tokens)
    return [float(trace.step_s[part].sum() / line[part].sum())
            for part in np.array_split(np.arange(len(tokens)), parts)]


def report(traces: list[Trace]) -> str:
    """One table per stage: each vantage point's forecast by each fit, as an error against the measured."""
    lines = []
    for trace in traces:
        measured = trace.duration_s
        tokens = trace.padded_tokens
        lines += ["", f"{trace.task or 'corpus'} / {trace.stage}: {len(tokens) + 1} steps, measured {measured:.1f} s "
                      f"(head {trace.head_s:.1f} s, tail {trace.tail_s:.2f} s); padded tokens per step: mean "
                      f"{tokens.mean():.0f}, range {tokens.min()}-{tokens.max()}; step time: median "
                      f"{np.median(trace.step_s) * 1000:.0f} ms, mean {trace.step_s.mean() * 1000:.0f} ms"]
        lines.append(f"  pace by quarter of the stage (its time over the whole stage's least-squares line's): "
                     + ", ".join(f"{p:.3f}" for p in pace_by_part(trace)))
        vantages = [v for v in [plan_vantage(trace), *in_run_vantages(trace)] if v is not None]
        header = f"  {'fit':28}" + "".join(f"{v.label:>16}" for v in vantages)
        lines += [header, f"  {'(the package, as it ran)':28}" + "".join(
            f"{(v.package_s - measured) / measured:>+16.1%}" for v in vantages)]
        for name, fit in FITS.items():
            lines.append(f"  {name:28}" + "".join(
                f"{(forecast_with(fit, trace, v) - measured) / measured:>+16.1%}" for v in vantages))
    return "\n".join(lines)


def record_trace(config_path: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    """Plan `config_path` with every training stage calibrated to its end; the plan, with each entry's plan
    warm-up added, is written to `out`."""
    from greendistil.config import TrainingStage, load_config, suite_steps
    from greendistil.planning import PlanRequest, make_plan

    config = load_config(config_path, overrides)
    plan = make_plan(PlanRequest(config=config, calibrate_steps=TRACE_STEPS,
                                 command=" ".join(["forecast_accuracy.py", str(config_path), *overrides])))
    warmups = {(s.task, s.stage.name): s.stage.flop_sample_steps + 1 for s in suite_steps(config)
               if isinstance(s.stage, TrainingStage)}
    for entry in plan["stages"]:
        entry["plan_warmup_steps"] = warmups.get((entry["task"], entry["stage"]))
    out.write_text(json.dumps(plan))
    return plan


def traces_of(plan: dict[str, Any]) -> list[Trace]:
    found = [Trace.of_entry(e, e["plan_warmup_steps"]) for e in plan["stages"] if e.get("plan_warmup_steps")]
    return [t for t in found if t is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, help="a config to trace (every stage runs to its end)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("forecast-trace.json"), help="where the trace is written")
    parser.add_argument("--trace", type=Path, help="analyse a trace written before, instead of tracing")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.trace is None):
        parser.error("give a CONFIG to trace or --trace TRACE to analyse, not both")
    plan = (json.loads(args.trace.read_text()) if args.trace is not None
            else record_trace(args.config, args.overrides, args.out))
    traces = traces_of(plan)
    if not traces:
        print("no training stage in the trace ran to its end (a cached distillation does not: see the docstring)",
              file=sys.stderr)
        return 1
    print(f"trace: {args.trace or args.out} ({plan.get('command')}, calibration {plan['calibration']['duration_s']:.0f} s)")
    print("error of each forecast of the stage's duration against the measured one (+: over)")
    print(report(traces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
