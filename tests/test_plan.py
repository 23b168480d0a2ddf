"""`greendistil plan`: the calibration's extrapolation on hand-made marks and windows, the plan of a tiny
config against the run it forecasts (the same work, step for step; FLOPs within 5%), the plan's forecast
kept in the run's records, budget warnings, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import markdown_tables, read_records_strict as records, section_of
from conftest import write_sst2, write_tiny_config
from greendistil.cli import EXIT_BAD_INPUT, EXIT_BUDGET, main
from greendistil.config import load_config
from greendistil.errors import ConfigError
from greendistil.measure.calibration import (DURATION_METHOD, FORWARD_METHOD, StepMark, WindowCost,
                                             forward_forecast, plan_teacher_share, step_cost, training_forecast)
from greendistil.measure.forecast import RUN_TOTAL_METHODS
from greendistil.planning import budget_warnings
from greendistil.runlog.plans import PLAN_VERSION, default_plan_path, plan_entry, read_plan

KG_PER_KWH = 0.4


def window_cost(duration_s: float, cpu_kwh: float, ram_kwh: float | None = None, **more: Any) -> WindowCost:
    return WindowCost(duration_s=duration_s, energy_kwh={"cpu": cpu_kwh, "gpu": None, "ram": ram_kwh},
                      energy_sources={"cpu": "estimated:tdp-load-model", "gpu": None,
                                      "ram": "estimated:ram-model" if ram_kwh is not None else None}, **more)


def test_training_forecast_carries_head_and_tail_and_extrapolates_the_rest_per_padded_token() -> None:
    # Steps 1-2 are the warm-up (slow: loading, FLOP counting); steps 3-5 take 1 s per 1,000 padded tokens.
    marks = [StepMark(1, 10.0, 1000), StepMark(2, 12.0, 2000), StepMark(3, 13.0, 3000), StepMark(4, 14.5, 4500),
             StepMark(5, 15.0, 5000)]
    cost = window_cost(17.0, cpu_kwh=0.0017, ram_kwh=0.00017, flops=5e9, padded_tokens=5000)  # 360 W + 36 W
    forecast = training_forecast(marks=marks, cost=cost, warmup_steps=2, total_steps=100, total_padded_tokens=102_000,
                                 kg_co2_per_kwh=KG_PER_KWH)
    # head 12 s (to the end of step 2) + 100,000 padded tokens left at 1 ms each + tail 2 s (17 - 15)
    assert forecast.duration_s == pytest.approx(12.0 + 100.0 + 2.0)
    assert forecast.energy_kwh == pytest.approx({"cpu": 0.360 * 114 / 3600, "ram": 0.036 * 114 / 3600})
    assert forecast.co2_kg == pytest.approx(forecast.total_energy_kwh * KG_PER_KWH)
    assert forecast.flops == pytest.approx(5e9 / 5000 * 102_000)  # counted FLOPs per padded token x all of them
    fields = forecast.fields()
    assert fields["duration_method"] == DURATION_METHOD and fields["duration_method"].startswith("forecast:")
    assert fields["energy_method"].startswith("forecast:") and fields["flops_method"].startswith("forecast:")
    assert fields["energy_basis"] == {"cpu": "estimated:tdp-load-model", "ram": "estimated:ram-model"}
    assert "gpu_energy_kwh" not in fields  # an unmeasured component is not forecast as zero
    assert fields["timed_steps"] == 3 and fields["head_s"] == 12.0 and fields["tail_s"] == pytest.approx(2.0)
    assert fields["cpu_energy_kwh"] + fields["ram_energy_kwh"] == pytest.approx(fields["energy_kwh"])


def test_a_fixed_cost_per_step_is_fitted_beside_the_cost_per_token_and_an_outlier_step_is_ignored() -> None:
    tokens = [500, 200, 800, 400, 1000, 300, 600, 700]  # the first is the warm-up step
    seconds = [3.0] + [0.05 + 0.0005 * t for t in tokens[1:]]
    seconds[4] *= 3  # one slow step (another process, a page fault storm)
    times, padded = np.cumsum(seconds), np.cumsum(tokens)
    marks = [StepMark(i + 1, float(t), int(p)) for i, (t, p) in enumerate(zip(times, padded))]
    assert step_cost(marks) == pytest.approx((0.05, 0.0005))
    forecast = training_forecast(marks=marks, cost=window_cost(float(times[-1]) + 1.0, cpu_kwh=0.001), warmup_steps=1,
                                 total_steps=100, total_padded_tokens=50_500, kg_co2_per_kwh=KG_PER_KWH)
    # head 3 s + 99 steps x 0.05 s + 50,000 padded tokens x 0.5 ms + tail 1 s
    assert forecast.duration_s == pytest.approx(3.0 + 99 * 0.05 + 25.0 + 1.0)
    assert forecast.detail["s_per_step"] == pytest.approx(0.05)
    # A per-token rate alone (the steps' time over their tokens) would have forecast more for these mostly
    # long steps' epoch; with every step one size the fit has no slope to find and falls back to it.
    same = [StepMark(1, 1.0, 100), StepMark(2, 2.0, 200), StepMark(3, 3.5, 300), StepMark(4, 4.5, 400)]
    assert step_cost(same) == pytest.approx((0.0, 3.5 / 300))


def test_the_head_keeps_its_measured_energy_and_the_rest_is_at_the_steps_power() -> None:
    # Loading (10 s) drew 10 W of CPU; the steps draw 40 W (codecarbon's readings) and the RAM 20 W throughout.
    def mark(step: int, time_s: float, cpu_w: float) -> StepMark:
        head_kwh, steps_kwh = 10 * 10 / 3.6e6, 40 * max(0.0, time_s - 10) / 3.6e6
        return StepMark(step, time_s, 100 * step, energy_kwh={"cpu": head_kwh + steps_kwh, "ram": 20 * time_s / 3.6e6},
                        power_w={"cpu": cpu_w, "ram": 20.0})
    marks = [mark(1, 10.0, 10.0), mark(2, 11.0, 10.0), mark(3, 12.0, 40.0), mark(4, 13.0, 40.0), mark(5, 14.0, 40.0)]
    forecast = training_forecast(marks=marks, cost=window_cost(14.0, cpu_kwh=marks[-1].energy_kwh["cpu"]),
                                 warmup_steps=1, total_steps=91, total_padded_tokens=9100, kg_co2_per_kwh=KG_PER_KWH)
    assert forecast.duration_s == pytest.approx(100.0)  # 10 s head + 90 steps of 1 s
    assert forecast.energy_kwh["cpu"] == pytest.approx((10 * 10 + 40 * 90) / 3.6e6)  # not the window's 19 W mean
    assert forecast.energy_kwh["ram"] == pytest.approx(20 * 100 / 3.6e6)
    assert forecast.fields()["energy_method"] == "forecast:measured-head-plus-calibrated-step-power-x-the-rest"


def test_a_calibration_that_ran_the_whole_stage_is_its_own_forecast() -> None:
    marks = [StepMark(1, 3.0, 100), StepMark(2, 4.0, 200)]
    forecast = training_forecast(marks=marks, cost=window_cost(5.0, cpu_kwh=0.001, flops=4e6, padded_tokens=200),
                                 warmup_steps=4, total_steps=2, total_padded_tokens=200, kg_co2_per_kwh=KG_PER_KWH)
    assert forecast.duration_s == 5.0 and forecast.energy_kwh == pytest.approx({"cpu": 0.001})
    assert forecast.duration_method == "forecast:calibration-ran-the-whole-stage" and forecast.flops == 4e6
    assert forecast.detail["calibration_marks"] == [[1, 3.0, 100], [2, 4.0, 200]]  # a trace of the stage


def test_the_teacher_share_of_a_cached_stage_is_taken_at_its_mean_step() -> None:
    """The served steps' weight: the timed teacher forward over the fitted step, both at the stage's mean
    padded tokens per step (400 here), not the ratio of the per-token parts alone (0.5)."""
    entry = {"num_steps": 100, "num_padded_tokens": 40_000, "teacher_forward_s_per_step": 0.01,
             "teacher_forward_s_per_million_padded_tokens": 250.0, "s_per_step": 0.1,
             "s_per_million_padded_tokens": 500.0}
    assert plan_teacher_share(entry) == pytest.approx((0.01 + 0.1) / (0.1 + 0.2))
    assert plan_teacher_share({**entry, "teacher_forward_s_per_step": None}) is None  # a plan without the timing
    assert plan_teacher_share({**entry, "teacher_forward_s_per_step": 1.0}) is None  # not a share of the step


def test_a_short_warm_up_still_leaves_the_first_step_out_of_the_rate() -> None:
    marks = [StepMark(1, 9.0, 10), StepMark(2, 10.0, 20), StepMark(3, 11.0, 30)]
    forecast = training_forecast(marks=marks, cost=window_cost(11.0, cpu_kwh=0.0), warmup_steps=0, total_steps=10,
                                 total_padded_tokens=100, kg_co2_per_kwh=KG_PER_KWH)
    assert forecast.duration_s == pytest.approx(9.0 + 90 * 0.1)  # the rate over steps 2-3: 0.1 s per padded token
    with pytest.raises(ValueError, match="at least two steps"):
        training_forecast(marks=marks[:1], cost=window_cost(9.0, cpu_kwh=0.0), warmup_steps=1, total_steps=10,
                          total_padded_tokens=100, kg_co2_per_kwh=KG_PER_KWH)


def test_forward_forecast_repeats_passes_until_the_minimum_window() -> None:
    cost = window_cost(2.0, cpu_kwh=0.0002)  # 360 W
    forecast = forward_forecast(pass_s=0.4, cost=cost, kg_co2_per_kwh=KG_PER_KWH, flops=1e9, setup_s=1.5, passes=3,
                                min_window_s=2.0, rate=(0.002, 5e-5))
    assert forecast.detail["passes"] == 5  # 0.4 s a pass: 3 repeats would last 1.2 s < 2 s
    assert forecast.detail["s_per_batch"] == 0.002 and forecast.detail["s_per_million_padded_tokens"] == 50.0
    assert forecast.duration_s == pytest.approx(1.5 + 5 * 0.4) and forecast.flops == pytest.approx(5e9)
    assert forecast.energy_kwh["cpu"] == pytest.approx(0.360 * forecast.duration_s / 3600)
    assert forecast.duration_method == FORWARD_METHOD and forecast.flops_method.startswith("estimated:")


def test_read_plan_refuses_another_configs_plan_and_non_plans(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"plan_version": PLAN_VERSION, "config_hash": "abc", "stages": []}))
    assert read_plan(path, config_hash="abc")["config_hash"] == "abc"
    with pytest.raises(ConfigError, match="made for another config .*'abc'.*'xyz'"):
        read_plan(path, config_hash="xyz")
    path.write_text(json.dumps({"plan_version": 99}))
    with pytest.raises(ConfigError, match="not a greendistil plan"):
        read_plan(path, config_hash="abc")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as a plan"):
        read_plan(path, config_hash="abc")
    assert plan_entry(None, None, "distill") is None


def test_budget_warnings_name_the_key_the_forecast_and_the_unit(tmp_path: Path) -> None:
    config = load_config(write_tiny_config(tmp_path, tmp_path), ["run.max_energy_kwh=0.001",
                                                                 "stages.distill.max_duration_s=10"])
    plan = {"total": {"energy_kwh": 0.002, "duration_s": 30.0},
            "stages": [{"task": None, "stage": "finetune", "duration_s": 20.0},
                       {"task": None, "stage": "distill", "duration_s": 9.0}]}
    assert budget_warnings(config, plan) == [
        "the plan forecasts 0.002 kWh against run.max_energy_kwh = 0.001 kWh: the run will stop there (exit 3) "
        "unless the budget is raised"]
    plan["stages"][1]["duration_s"] = 12.5
    assert budget_warnings(config, plan)[1].startswith("the plan forecasts 12.5 s against stages.distill.max_duration_s")


PLAN_CONFIG = {"stages": [
    {"kind": "finetune", "role": "teacher", "batch_size": 4, "epochs": 1},  # 16 steps: extrapolated
    {"kind": "distill", "batch_size": 16, "epochs": 1},  # 4 steps: the calibration runs all of them
    {"kind": "evaluate", "roles": ["teacher", "student"]},
]}


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny config planned through the CLI (saved at the default path), then run: the run finds the plan."""
    root = tmp_path_factory.mktemp("plan")
    config_path = write_tiny_config(root, write_sst2(root / "glue"), PLAN_CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        stdout: list[str] = []
        patch.setattr("builtins.print", lambda *a, **k: stdout.append(" ".join(map(str, a))))
        plan_code = main(["plan", str(config_path), "--calibrate-steps", "2"])
        runs_after_plan = sorted(p.name for p in (root / "runs").iterdir())
        run_code = main(["run", str(config_path), "--run-id", "planned", "--no-progress"])
    config = load_config(config_path)
    plan_path = default_plan_path(config.run.output_dir, config.run.name, config.config_hash())
    return {"root": root, "config": config_path, "plan_code": plan_code, "run_code": run_code, "stdout": stdout,
            "runs_after_plan": runs_after_plan, "plan": json.loads(plan_path.read_text()), "plan_path": plan_path,
            "records": records(root / "runs" / "planned")}


def test_the_plan_writes_a_plan_and_no_run_directory(planned: dict[str, Any]) -> None:
    assert planned["plan_code"] == 0 and planned["runs_after_plan"] == ["plans"]
    plan = planned["plan"]
    assert [(e["window"], e["kind"]) for e in plan["stages"]] == [("finetune", "finetune"), ("distill", "distill"),
                                                                  ("evaluate", "evaluate")]
    assert plan["calibration"]["calibrate_steps"] == 2 and plan["calibration"]["duration_s"] > 0
    for entry in plan["stages"]:
        assert entry["duration_method"].startswith("forecast:") and entry["energy_method"].startswith("forecast:")
        assert entry["duration_s"] > 0 and entry["energy_kwh"] > 0
        assert entry["co2_kg"] == pytest.approx(entry["energy_kwh"] * plan["intensity_g_per_kwh"] / 1000 * plan["pue"])
    assert plan["total"]["duration_s"] == pytest.approx(sum(e["duration_s"] for e in plan["stages"]))
    table = "\n".join(planned["stdout"])
    assert "every figure is a forecast" in table and f"plan: {planned['plan_path']}" in table
    assert [line.split()[0] for line in table.splitlines()[1:5]] == ["finetune", "distill", "evaluate", "total"]


def test_the_plan_forecasts_the_runs_work_exactly_and_its_flops_within_5_percent(planned: dict[str, Any]) -> None:
    assert planned["run_code"] == 0
    actual = {r["stage"]: r for r in planned["records"]}
    by_stage = {e["window"]: e for e in planned["plan"]["stages"]}
    for stage in ("finetune", "distill"):
        entry, record = by_stage[stage], actual[stage]
        assert entry["num_steps"] == record["num_steps"] and entry["work_source"] == "replayed-from-the-loader"
        assert entry["num_padded_tokens"] == record["num_padded_tokens"]  # the same batches, replayed
        assert entry["num_tokens"] == record["num_tokens"]
        assert entry["flops"] == pytest.approx(record["flops"], rel=0.05)
    assert by_stage["finetune"]["duration_method"] == DURATION_METHOD
    assert by_stage["distill"]["duration_method"] == "forecast:calibration-ran-the-whole-stage"
    assert by_stage["evaluate"]["num_examples"] == 2 * 32  # teacher and student over the 32 dev rows


def test_the_run_keeps_the_plans_forecast_beside_its_own(planned: dict[str, Any]) -> None:
    by_stage = {e["window"]: e for e in planned["plan"]["stages"]}
    for record in planned["records"]:
        forecast = record["forecast"]
        assert forecast["plan.duration_s"] == by_stage[record["stage"]]["duration_s"]
        assert forecast["plan.energy_kwh"] == by_stage[record["stage"]]["energy_kwh"]
        assert forecast["plan.created_at"] == planned["plan"]["created_at"]
    finetune = planned["records"][0]["forecast"]
    assert finetune["run_total_method"] == RUN_TOTAL_METHODS[True]  # later windows from the plan
    later = sum(e["duration_s"] for e in planned["plan"]["stages"][1:])
    first = min(k for k in finetune if k.endswith(".run_duration_s"))
    assert finetune[first] == pytest.approx(finetune[first.replace("run_duration_s", "duration_s")] + later)


def test_the_report_sets_each_windows_plan_beside_its_actual_figures(planned: dict[str, Any]) -> None:
    from greendistil.report import write_report

    run_dir = planned["root"] / "runs" / "planned"
    section = section_of(write_report([run_dir], run_dir / "report").read_text(encoding="utf-8"),
                         "## Forecasts and budgets")
    rows = {row["window"]: row for row in markdown_tables(section)[0]}
    assert set(rows) == {"`finetune (sst2)`", "`distill (sst2)`", "`evaluate (sst2)`"}
    actual = {r["stage"]: r for r in planned["records"]}
    for stage in ("finetune", "distill"):
        row = rows[f"`{stage} (sst2)`"]
        planned_flops, counted = float(row["planned FLOPs"]), float(row["counted FLOPs"])
        assert counted == pytest.approx(actual[stage]["flops"], rel=0.01) and planned_flops == pytest.approx(counted,
                                                                                                            rel=0.05)
        assert row["s error"].endswith("%")
    assert DURATION_METHOD in section


def test_a_budget_below_the_plan_warns_on_stderr_before_training(planned: dict[str, Any],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    limit = planned["plan"]["total"]["energy_kwh"] / 1e6
    code = main(["run", str(planned["config"]), "--run-id", "budgeted", "--no-progress",
                 "--set", f"run.max_energy_kwh={limit:g}"])
    err = capsys.readouterr().err
    assert code == EXIT_BUDGET
    warning = next(line for line in err.splitlines() if "the plan forecasts" in line)
    assert "against run.max_energy_kwh" in warning and err.index(warning) < err.index("stopped at a budget")


@pytest.mark.parametrize("args, expected", [
    (["--set", "task.name=nope"], "task.name"),
    (["--calibrate-steps", "1"], "--calibrate-steps: 1"),
])
def test_bad_plan_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              args: list[str], expected: str) -> None:
    config_path = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))
    assert main(["plan", str(config_path), *args]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert not (tmp_path / "runs").exists()


def test_a_plan_of_another_config_is_refused_by_run(planned: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(planned["config"]), "--set", "stages.distill.temperature=3", "--plan",
                 str(planned["plan_path"]), "--run-id", "other"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "made for another config" in err and len(err.strip().splitlines()) == 1
    assert not (planned["root"] / "runs" / "other").exists()


def test_a_plan_under_torchrun_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert main(["plan", str(write_tiny_config(tmp_path, tmp_path))]) == EXIT_BAD_INPUT
    assert "a plan calibrates one process" in capsys.readouterr().err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("calibrate_steps", [2, 30])
def test_a_cached_distillation_is_planned_and_forecast_without_the_served_teacher_forwards(
        tmp_path: Path, calibrate_steps: int) -> None:
    """3 epochs of 8 steps with the teacher cache: the plan takes the timed teacher forward and its counted
    FLOPs off the 16 served steps (the FLOPs then match the run's within 5%, which they would miss by the
    saved share), and the run's in-run forecasts weigh those steps by the plan's teacher share. A calibration
    longer than the first epoch stops at its end: it times full steps only."""
    config_path = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"run": {"report": False}, "stages": [
        {"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 1},
        {"kind": "distill", "batch_size": 8, "epochs": 3, "cache_teacher": True}]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", lambda *a, **k: None)
        assert main(["plan", str(config_path), "--calibrate-steps", str(calibrate_steps)]) == 0
        assert main(["run", str(config_path), "--run-id", "cached", "--no-progress"]) == 0
    config = load_config(config_path)
    plan = json.loads(default_plan_path(config.run.output_dir, config.run.name, config.config_hash()).read_text())
    entry = next(e for e in plan["stages"] if e["window"] == "distill")
    record = records(tmp_path / "runs" / "cached")[-1]
    assert entry["duration_method"] == DURATION_METHOD + "-minus-the-timed-teacher-forward-on-cached-steps"
    assert entry["teacher_cache_num_served_steps"] == 16 == record["details"]["teacher_cache"]["num_batches_served"]
    assert entry["flops_method"].endswith("-minus-the-teachers-on-cached-steps")
    assert entry["teacher_cache_saved_s"] > 0 and entry["teacher_forward_s_per_million_padded_tokens"] > 0
    assert entry["calibration_steps"] == min(8, 4 + calibrate_steps)  # warm-up 4 + timed, within epoch 1
    assert entry["flops"] == pytest.approx(record["flops"], rel=0.05)
    assert entry["teacher_cache_saved_flops"] > 0.05 * entry["flops"]
    assert entry["flops_analytic"] == pytest.approx(record["flops_analytic"], rel=0.05)
    forecast = record["forecast"]
    assert forecast["cached_steps_from"] == 8 and 0 < forecast["cached_step_weight"] < 1
    assert forecast["cached_step_weight_source"] == "forecast:the-plan's-timed-teacher-forward-share-of-the-mean-step"
