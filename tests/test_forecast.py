"""In-run forecasts: the per-step extrapolation on a fake clock and fake meters, and the forecast fields of
a real tiny run's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders import read_records_strict as records
from conftest import write_sst2, write_tiny_config
from fakes import FakeClock
from greendistil.cli import main
from greendistil.measure.live import EnergyNow
from greendistil.measure.forecast import METHODS, CachedStepCost, Forecaster


class Meter:
    """Energy that the test sets; the clock the test advances."""

    def __init__(self) -> None:
        self.energy_kwh = 0.0

    def __call__(self) -> EnergyNow:
        return EnergyNow(energy_kwh=self.energy_kwh, sources={"cpu": "measured:rapl"})


def run_steps(forecaster: Forecaster, clock: FakeClock, meter: Meter, steps: range, step_s: float,
              step_kwh: float) -> list[int]:
    made = []
    for step in steps:
        clock.advance(step_s)
        meter.energy_kwh += step_kwh
        if forecaster.observe(step) is not None:
            made.append(step)
    return made


def test_the_rate_after_the_warm_up_extrapolates_over_the_steps_left() -> None:
    clock, meter = FakeClock(start_s=0.0), Meter()
    forecaster = Forecaster(first_step=0, total_steps=100, energy_now=meter, clock=clock, start_s=0.0,
                            kg_co2_per_kwh=0.4)
    # The warm-up (5 steps) is slow and costly; after it every step takes 2 s and 0.001 kWh.
    assert run_steps(forecaster, clock, meter, range(1, 6), step_s=10.0, step_kwh=0.01) == []
    made = run_steps(forecaster, clock, meter, range(6, 101), step_s=2.0, step_kwh=0.001)
    assert made == [10, 25, 50, 75]
    first = forecaster.forecasts[0]
    # Actual end: 5 x 10 s + 95 x 2 s = 240 s; 5 x 0.01 + 95 x 0.001 = 0.145 kWh. A linear rate since the
    # warm-up forecasts it exactly, from the 10% mark on.
    assert (first.at_fraction, first.at_step) == (0.1, 10)
    assert first.duration_s == pytest.approx(240.0)
    assert first.energy_kwh == pytest.approx(0.145) and first.co2_kg == pytest.approx(0.145 * 0.4)
    summary = forecaster.summary()
    assert summary is not None and summary["method"] == METHODS["steps"] and summary["warmup_steps"] == 5
    assert summary["at_0.5.step"] == 50 and summary["at_0.75.duration_s"] == pytest.approx(240.0)


def test_by_padded_tokens_a_short_first_batch_sample_does_not_bias_the_forecast() -> None:
    clock, meter = FakeClock(start_s=0.0), Meter()
    # Steps alternate 100 and 300 padded tokens, but the first 10 steps are all short ones; time and energy
    # are proportional to padded tokens (0.01 s and 1e-6 kWh each).
    tokens = [100] * 10 + [300, 100] * 45
    forecaster = Forecaster(first_step=0, total_steps=100, energy_now=meter, clock=clock, start_s=0.0,
                            kg_co2_per_kwh=1.0, padded_tokens_per_step=tokens)
    for step, padded in enumerate(tokens, start=1):
        clock.advance(0.01 * padded)
        meter.energy_kwh += 1e-6 * padded
        forecaster.observe(step)
    first = forecaster.forecasts[0]
    assert first.at_step == 10 and first.duration_s == pytest.approx(0.01 * sum(tokens))  # per step: 100 s, -50%
    assert first.energy_kwh == pytest.approx(1e-6 * sum(tokens))
    assert forecaster.summary()["method"] == METHODS["padded_tokens"]


@pytest.mark.parametrize("padded", [True, False])
def test_steps_a_teacher_cache_serves_are_forecast_at_their_weight(padded: bool) -> None:
    """3 epochs of 40 steps; from step 40 on a cache serves the teacher's outputs and a step costs 0.7 of a
    full one (0.05 s + 0.002 s per padded token, times 0.7). Forecast in epoch 1, where no step was served."""
    clock, meter = FakeClock(start_s=0.0), Meter()
    tokens = [50 + (i * 37) % 200 for i in range(120)]
    cached = CachedStepCost(first_step=40, weight=0.7, source="test")
    forecaster = Forecaster(first_step=0, total_steps=120, energy_now=meter, clock=clock, start_s=0.0,
                            kg_co2_per_kwh=1.0, padded_tokens_per_step=tokens if padded else None, cached=cached)
    uncached = Forecaster(first_step=0, total_steps=120, energy_now=meter, clock=clock, start_s=0.0,
                          kg_co2_per_kwh=1.0, padded_tokens_per_step=tokens if padded else None)
    actual_s = 0.0
    for step, size in enumerate(tokens, start=1):
        seconds = (0.05 + 0.002 * size) * (0.7 if step > 40 else 1.0)
        actual_s += seconds
        clock.advance(seconds)
        meter.energy_kwh += seconds * 1e-5  # a constant power
        forecaster.observe(step)
        uncached.observe(step)
    at = {f.at_fraction: f for f in forecaster.forecasts}
    if padded:  # the fitted step cost on the full scale: exact at 10% (epoch 1) and at 50% (epoch 2)
        assert at[0.1].duration_s == pytest.approx(actual_s) and at[0.5].duration_s == pytest.approx(actual_s)
        assert at[0.1].energy_kwh == pytest.approx(actual_s * 1e-5)
        assert uncached.forecasts[0].duration_s > 1.2 * actual_s  # every step as a full one: far over
    else:  # per step: the mean step so far, weighted
        assert at[0.5].duration_s == pytest.approx(actual_s, rel=0.1)
    summary = forecaster.summary()
    assert (summary["cached_steps_from"], summary["cached_step_weight"], summary["cached_step_weight_source"]) == (
        40, 0.7, "test")


def test_cached_step_weights_start_at_the_first_served_step_and_rescale_each_step_to_a_full_one() -> None:
    cached = CachedStepCost(first_step=3, weight=0.5, source="test")
    assert cached.weights(5) == [1.0, 1.0, 1.0, 0.5, 0.5] and cached.weights(2) == [1.0, 1.0]
    clock = FakeClock(start_s=0.0)
    forecaster = Forecaster(first_step=0, total_steps=8, energy_now=lambda: None, clock=clock, start_s=0.0,
                            kg_co2_per_kwh=1.0, padded_tokens_per_step=[10] * 8, cached=cached, warmup_fraction=0.0)
    for step, seconds in enumerate([1.0, 1.0, 1.0, 0.5, 0.5], start=1):  # steps 4 and 5 (0-based 3, 4) served
        clock.advance(seconds)
        forecaster.observe(step)
    rescaled = forecaster._full_scale()
    assert [m.step for m in rescaled] == [1, 2, 3, 4, 5]
    assert [b.time_s - a.time_s for a, b in zip(rescaled, rescaled[1:])] == [1.0, 1.0, 1.0, 1.0]


def test_a_resumed_segment_forecasts_its_own_end() -> None:
    clock, meter = FakeClock(start_s=0.0), Meter()
    forecaster = Forecaster(first_step=40, total_steps=100, energy_now=meter, clock=clock, start_s=0.0,
                            kg_co2_per_kwh=1.0)
    made = run_steps(forecaster, clock, meter, range(41, 101), step_s=1.0, step_kwh=0.002)
    assert made == [50, 75]  # 10% and 25% were passed before the segment began
    assert forecaster.forecasts[0].duration_s == pytest.approx(60.0)  # this segment's 60 steps
    assert forecaster.forecasts[0].energy_kwh == pytest.approx(0.12)


def test_without_energy_the_duration_is_still_forecast() -> None:
    clock = FakeClock(start_s=0.0)
    forecaster = Forecaster(first_step=0, total_steps=20, energy_now=lambda: None, clock=clock, start_s=0.0,
                            kg_co2_per_kwh=1.0)
    for step in range(1, 21):
        clock.advance(1.0)
        forecaster.observe(step)
    assert [f.at_step for f in forecaster.forecasts] == [2, 5, 10, 15]
    assert all(f.energy_kwh is None and f.co2_kg is None for f in forecaster.forecasts)
    assert forecaster.forecasts[-1].duration_s == pytest.approx(20.0)


def test_a_real_run_records_its_forecasts_beside_its_figures(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue", num_train=160),
                               {"stages": [{"kind": "finetune", "role": "teacher", "batch_size": 8, "epochs": 1},
                                           {"kind": "evaluate", "roles": ["teacher"]}]})
    assert main(["run", str(config), "--no-progress", "--run-id", "forecast"]) == 0
    finetune, evaluate = records(tmp_path / "runs" / "forecast")
    forecast = finetune["forecast"]
    assert forecast["method"] == METHODS["padded_tokens"] and forecast["total_steps"] == finetune["num_steps"] == 20
    assert [forecast[f"at_{f:g}.step"] for f in (0.1, 0.25, 0.5, 0.75)] == [2, 5, 10, 15]
    assert all(forecast[f"at_{f:g}.duration_s"] > 0 for f in (0.1, 0.25, 0.5, 0.75))
    assert evaluate["forecast"] is None  # evaluation has no steps to forecast
    report = (tmp_path / "runs" / "forecast" / "report" / "report.md").read_text(encoding="utf-8")
    section = report.split("## Forecasts and budgets", 1)[1].split("\n## ", 1)[0]
    assert "| forecast | `finetune (sst2)` | 1 | 10% (step 2) |" in section and "Budgets in force" not in section

    from greendistil.report.forecasts import forecasts_section  # a segment that stopped early: no error figure
    stopped = {**finetune, "status": "stopped-budget", "budget": {"stopped_by": "run.max_co2_kg",
                                                                  "limit.run.max_co2_kg": 1.0}}
    (tmp_path / "runs" / "forecast" / "records.jsonl").write_text(json.dumps(stopped) + "\n", encoding="utf-8")
    from greendistil.report.frame import load_report_frame
    text = forecasts_section(load_report_frame([tmp_path / "runs" / "forecast"]))
    assert "| 1 (stopped-budget) |" in text and "n/a (stopped)" in text and "stopped at `run.max_co2_kg` = 1 kg CO2eq" in text


def test_each_forecast_adds_the_runs_spend_before_and_the_plans_later_windows() -> None:
    from greendistil.measure.forecast import RUN_TOTAL_METHODS, RunTotals

    def forecaster(run_totals: RunTotals) -> Forecaster:
        clock = FakeClock(start_s=0.0)
        made = Forecaster(first_step=0, total_steps=20, energy_now=lambda: EnergyNow(energy_kwh=clock.now_s / 3600,
                                                                                    sources={}),
                          clock=clock, start_s=0.0, kg_co2_per_kwh=0.5, run_totals=run_totals)
        for step in range(1, 21):
            clock.advance(1.0)
            made.observe(step)
        return made

    planned = forecaster(RunTotals(spent_duration_s=100.0, spent_energy_kwh=0.2, spent_co2_kg=0.1,
                                   later_duration_s=50.0, later_energy_kwh=0.05, later_co2_kg=0.025))
    first = planned.forecasts[0]
    assert first.duration_s == pytest.approx(20.0) and first.run_duration_s == pytest.approx(100.0 + 20.0 + 50.0)
    assert first.run_energy_kwh == pytest.approx(0.2 + 20 / 3600 + 0.05)
    assert first.run_co2_kg == pytest.approx(0.1 + 10 / 3600 + 0.025)
    assert planned.summary()["run_total_method"] == RUN_TOTAL_METHODS[True]
    unplanned = forecaster(RunTotals(spent_duration_s=100.0))
    assert unplanned.forecasts[0].run_duration_s == pytest.approx(120.0)
    assert unplanned.summary()["run_total_method"] == RUN_TOTAL_METHODS[False]
    assert "run_duration_s" not in "".join(forecaster(None).summary())  # type: ignore[arg-type]
