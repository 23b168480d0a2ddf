"""benchmarks/forecast_accuracy.py: its replays of the plan and of the in-run forecaster agree with the package's
own figures on the same steps, every fit is exact on a trace that follows its model, and a real trace of the
tiny config is recorded and analysed end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from builders import load_benchmark, subprocess_env
from conftest import write_sst2, write_tiny_config

REPO = Path(__file__).resolve().parents[1]


def accuracy() -> ModuleType:
    return load_benchmark("forecast_accuracy")


def linear_trace(module: ModuleType, *, num_steps: int = 400, noise: float = 0.0) -> object:
    """Steps of 0.05 s plus 0.2 ms per padded token (batches of 32 rows, 4 to 60 tokens long), in a 2-s head."""
    rng = np.random.default_rng(0)
    tokens = 32 * rng.integers(4, 61, size=num_steps - 1)
    step_s = 0.05 + 2e-4 * tokens + noise * rng.exponential(size=num_steps - 1)
    return module.Trace(task="sst2", stage="distill", step_s=step_s, padded_tokens=tokens, head_s=2.0, tail_s=0.1,
                        plan_warmup_steps=4)


def test_every_line_fit_and_the_package_forecast_a_linear_trace_exactly() -> None:
    module = accuracy()
    trace = linear_trace(module)
    vantages = [module.plan_vantage(trace), *module.in_run_vantages(trace)]
    assert [v.label for v in vantages] == ["plan", "in-run at 10%", "in-run at 25%", "in-run at 50%", "in-run at 75%"]
    for vantage in vantages:
        assert vantage.package_s == pytest.approx(trace.duration_s, rel=1e-9), vantage.label
        for name in ("theil-sen (the package's)", "theil-sen + mean residual", "least squares, line",
                     "least squares, quadratic"):
            assert module.forecast_with(module.FITS[name], trace, vantage) == pytest.approx(trace.duration_s,
                                                                                            rel=1e-9), name


def test_the_pace_by_quarter_shows_a_stage_that_slows_down() -> None:
    module = accuracy()
    trace = linear_trace(module)
    assert module.pace_by_part(trace) == pytest.approx([1.0] * 4)
    half = len(trace.step_s) // 2
    trace.step_s[half:] *= 1.2  # the machine's pace drops by a sixth halfway
    pace = module.pace_by_part(trace)
    assert pace[0] == pytest.approx(pace[1], rel=0.01) and pace[2] == pytest.approx(pace[3], rel=0.01)
    assert pace[2] / pace[1] == pytest.approx(1.2, rel=0.01)


def test_the_replays_see_the_steps_the_package_fits_on() -> None:
    """On a noisy trace the package's own forecast (replayed through training_forecast and the Forecaster)
    equals the Theil-Sen fit on the steps each vantage says were seen: an index off by one breaks it."""
    module = accuracy()
    trace = linear_trace(module, noise=0.05)
    for vantage in [module.plan_vantage(trace), *module.in_run_vantages(trace)]:
        fitted = module.forecast_with(module.FITS["theil-sen (the package's)"], trace, vantage)
        assert fitted == pytest.approx(vantage.package_s, rel=1e-9), vantage.label
    plan = module.plan_vantage(trace)
    assert (plan.first, plan.last) == (3, 43)  # steps 5..44 timed after a 4-step warm-up; step 1 is the head's
    at_10 = module.in_run_vantages(trace)[0]
    assert (at_10.first, at_10.last) == (19, 39)  # warm-up ends at step 20 (5% of 400); 10% is step 40
    # the median line moved to the mean level gives back the seen steps' own total
    seen_tokens, seen_s = trace.padded_tokens[at_10.first:at_10.last], trace.step_s[at_10.first:at_10.last]
    assert module.FITS["theil-sen + mean residual"](seen_tokens, seen_s, seen_tokens) == pytest.approx(seen_s.sum())
    assert module.FITS["theil-sen (the package's)"](seen_tokens, seen_s, seen_tokens) != pytest.approx(seen_s.sum())


def test_a_tiny_configs_trace_is_recorded_and_analysed(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))
    out = tmp_path / "trace.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "forecast_accuracy.py"), str(config), "--out",
                           str(out), "--set", "stages.distill.cache_teacher=false"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sst2 / finetune:" in done.stdout and "sst2 / distill:" in done.stdout
    assert "theil-sen (the package's)" in done.stdout and "in-run at 50%" in done.stdout
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "forecast_accuracy.py"), "--trace", str(out)],
                           env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[1:] == done.stdout.splitlines()[1:]  # the analysis reads the trace alone
