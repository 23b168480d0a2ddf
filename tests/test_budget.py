"""Energy, CO2 and time budgets: the guard on a fake clock and fake meters, each budget kind, the record and
exit code of a stopped run, a resume with a raised budget that ends with the unbudgeted run's weights, and
the bad-input cases (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from builders import read_records_strict as records, student_weights
from conftest import write_sst2, write_tiny_config
from fakes import FakeClock
from greendistil import load_runs
from greendistil.cli import EXIT_BUDGET, main
from greendistil.config import load_config
from greendistil.errors import BudgetExceeded
from greendistil.measure.budget import BudgetGuard, Limits, Spent, exhausted
from greendistil.measure.live import EnergyNow

KG_PER_KWH = 0.5  # PUE 1 x 500 g/kWh


class FakeEnergy:
    """A window drawing `power_w` since `clock`'s start: energy = power x elapsed, from CPU (estimated) and GPU."""

    def __init__(self, clock: FakeClock, power_w: float, start_s: float) -> None:
        self.clock, self.power_w, self.start_s = clock, power_w, start_s

    def __call__(self) -> EnergyNow:
        kwh = self.power_w * (self.clock.now_s - self.start_s) / 3.6e6
        return EnergyNow(energy_kwh=kwh, sources={"cpu": "estimated:tdp-load-model", "gpu": "measured:nvml"})


def guard(clock: FakeClock, *, before: Spent | None = None, power_w: float = 3600.0, **limits: float) -> BudgetGuard:
    """A guard on stage `distill` whose window draws `power_w` (3600 W = 1 Wh per second)."""
    stage = Limits(scope="stages.distill", **limits)
    made = BudgetGuard(limits=[Limits(scope="run"), stage], before={"run": Spent(), "stages.distill": before or Spent()},
                       kg_co2_per_kwh=KG_PER_KWH, energy_now=FakeEnergy(clock, power_w, clock.now_s), clock=clock)
    made.open()
    return made


def steps_until_stop(made: BudgetGuard, clock: FakeClock, step_s: float = 1.0, limit: int = 1000) -> int:
    assert made.check(0) is None  # before the first step: where the steps begin
    for step in range(1, limit):
        clock.advance(step_s)
        if made.check(step) is not None:
            return step
    raise AssertionError("the guard never stopped")


def test_energy_budget_stops_before_the_step_that_would_cross_it() -> None:
    clock = FakeClock()
    made = guard(clock, max_energy_kwh=0.0105)  # 1 Wh a step: 10 steps fit, the 11th would cross
    assert steps_until_stop(made, clock) == 10
    stop = made.stopped
    assert stop is not None and stop.key == "stages.distill.max_energy_kwh" and stop.unit == "kWh"
    assert stop.spent == pytest.approx(0.010) and stop.spent <= stop.limit
    assert stop.checked_against.startswith("estimated (cpu estimated:tdp-load-model, gpu measured:nvml")


def test_co2_budget_at_pue_times_intensity() -> None:
    clock = FakeClock()
    made = guard(clock, max_co2_kg=0.0025)  # 0.5 g a step (1 Wh x 0.5 kg/kWh): 5 steps fit
    assert steps_until_stop(made, clock) == 5
    assert made.stopped is not None and made.stopped.spent == pytest.approx(0.0025)


def test_duration_budget_counts_the_next_step() -> None:
    clock = FakeClock()
    made = guard(clock, max_duration_s=7.5)
    assert steps_until_stop(made, clock, step_s=1.0) == 7  # 7 s spent: an 8th step would end at 8 s > 7.5 s
    assert made.stopped is not None and made.stopped.key == "stages.distill.max_duration_s"


def test_earlier_segments_count_against_the_stage_and_the_run() -> None:
    clock = FakeClock()
    made = guard(clock, before=Spent(energy_kwh=0.008, co2_kg=0.004, duration_s=3.0), max_energy_kwh=0.0105)
    assert steps_until_stop(made, clock) == 2  # 8 Wh spent before; 2 more fit
    run_guard = BudgetGuard(limits=[Limits(scope="run", max_duration_s=10.0)], before={"run": Spent(duration_s=9.0)},
                            kg_co2_per_kwh=KG_PER_KWH, energy_now=lambda: None, clock=clock)
    run_guard.open()
    assert run_guard.check(0) is None
    clock.advance(0.4)
    assert run_guard.check(1) is None  # 9.4 s spent, a step of 0.4 s would end at 9.8 s
    clock.advance(0.4)
    stop = run_guard.check(2)  # 9.8 s spent: the next would end at 10.2 s > 10 s
    assert stop is not None and stop.key == "run.max_duration_s" and stop.spent == pytest.approx(9.8)


def test_without_energy_figures_only_time_can_stop_and_the_record_says_why() -> None:
    clock = FakeClock()
    made = BudgetGuard(limits=[Limits(scope="run", max_energy_kwh=1e-9)], before={}, kg_co2_per_kwh=KG_PER_KWH,
                       energy_now=lambda: None, clock=clock)
    made.open()
    assert made.check(0) is None
    clock.advance(100.0)
    assert made.check(1) is None
    summary = made.summary()
    assert summary is not None and summary["checked_against"].startswith("unavailable")
    assert summary["limit.run.max_energy_kwh"] == 1e-9 and summary["stopped_by"] is None


def test_setup_before_the_first_step_is_spent_but_not_a_steps_cost() -> None:
    clock = FakeClock()
    made = guard(clock, max_duration_s=20.0)
    clock.advance(15.0)  # loading models and data
    assert made.check(0) is None  # 15 s spent; nothing projected before a step
    stops = []
    for step in range(1, 10):
        clock.advance(1.0)
        stops.append(made.check(step))
    # Steps of 1 s: 20 s spent after step 5, and a 6th would end at 21 s. Were the setup taken for a step's
    # cost, step 1 would already project 16 s more and stop.
    assert [stop is not None for stop in stops].index(True) + 1 == 5
    assert stops[4] is not None and stops[4].spent == pytest.approx(20.0)


def test_no_limit_no_guard_and_a_spent_run_starts_nothing() -> None:
    assert not BudgetGuard(limits=[Limits(scope="run")], before={}, kg_co2_per_kwh=1.0, energy_now=lambda: None,
                           clock=FakeClock()).active
    stop = exhausted(Limits(scope="run", max_co2_kg=0.1), Spent(co2_kg=0.1))
    assert isinstance(stop, BudgetExceeded) and stop.key == "run.max_co2_kg"
    assert exhausted(Limits(scope="run", max_co2_kg=0.1), Spent(co2_kg=0.05)) is None


def test_earlier_records_without_an_energy_figure_are_counted_and_named() -> None:
    """A record whose meters failed has energy null: the budget sums it as 0, and says that it did."""
    records = [{"energy_kwh": 0.5, "co2_kg": 0.2, "duration_s": 10.0},
               {"energy_kwh": None, "co2_kg": None, "duration_s": 30.0}]
    spent = Spent.of_records(records)
    assert (spent.energy_kwh, spent.co2_kg, spent.duration_s, spent.num_unmeasured) == (0.5, 0.2, 40.0, 1)
    energy_cap = Limits(scope="run", max_energy_kwh=0.5)
    assert Spent.of_records(records[:1]).unmeasured_note(energy_cap) == ""
    assert spent.unmeasured_note(Limits(scope="run", max_duration_s=50.0)) == ""  # time is known: no undercount
    stop = exhausted(energy_cap, spent)
    assert stop is not None and "1 earlier record(s) of run lack some or all of their energy" in stop.checked_against
    partial = Spent.of_records([{"energy_kwh": 0.1, "energy_incomplete": ["gpu"]}, {"energy_kwh": 0.1}])
    assert partial.num_unmeasured == 1  # CPU and RAM measured, the GPU meter failed: a partial figure
    clock = FakeClock()
    made = BudgetGuard(limits=[Limits(scope="run", max_energy_kwh=10.0)], before={"run": spent},
                       kg_co2_per_kwh=KG_PER_KWH, energy_now=lambda: None, clock=clock)
    made.open()
    assert made.check(0) is None
    summary = made.summary()
    assert summary is not None and summary["spent_before.run.num_unmeasured"] == 1
    assert summary["checked_against"].startswith("unavailable") and "undercounted" in summary["checked_against"]


BUDGET_CONFIG = {"stages": [
    {"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 2},
    {"kind": "distill", "batch_size": 16, "epochs": 2, "checkpoint_every_steps": 3},
    {"kind": "evaluate", "roles": ["teacher", "student"]},
]}


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same tiny run twice, in this process: without a budget, and with the distill stage's time budget
    (on a fake clock that advances 1 s per reading, so the stop falls on the same step every time)."""
    from greendistil.pipeline import RunRequest, execute

    root = tmp_path_factory.mktemp("budget")
    config_path = write_tiny_config(root, write_sst2(root / "glue"), BUDGET_CONFIG)
    plain = execute(RunRequest(config=load_config(config_path), run_id="plain", clock=FakeClock(step_s=1.0),
                               show_progress=False))
    budgeted = load_config(config_path, ["stages.distill.max_duration_s=4.5"])
    with pytest.raises(BudgetExceeded) as stopped:
        execute(RunRequest(config=budgeted, run_id="budgeted", clock=FakeClock(step_s=1.0), show_progress=False))
    return {"root": root, "config": config_path, "plain": plain, "budgeted": root / "runs" / "budgeted",
            "stop": stopped.value}


def test_a_stopped_stage_keeps_its_spend_and_its_checkpoint(budget_runs: dict[str, Any]) -> None:
    run_dir = budget_runs["budgeted"]
    assert [(r["stage"], r["status"]) for r in records(run_dir)] == [("finetune", "ok"), ("distill", "stopped-budget")]
    stopped = records(run_dir)[-1]
    assert stopped["error_type"] == "BudgetExceeded" and 0 < stopped["num_steps"] < 8
    assert stopped["energy_kwh"] > 0 and stopped["flops"] > 0
    budget = stopped["budget"]
    assert budget["stopped_by"] == "stages.distill.max_duration_s" and budget["limit.stages.distill.max_duration_s"] == 4.5
    assert budget["spent_at_stop"] <= 4.5
    assert budget["checked_against"]  # the energy's provenance (estimated on a machine without RAPL)
    assert (run_dir / "checkpoints" / "distill.state.pt").is_file()
    assert budget_runs["stop"].key == "stages.distill.max_duration_s"
    assert records(run_dir)[0]["budget"] is None  # finetune had no budget of its own, and the run none


def test_resume_with_a_raised_budget_ends_with_the_unbudgeted_weights(budget_runs: dict[str, Any],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = budget_runs["budgeted"]
    stopped_steps = records(run_dir)[-1]["num_steps"]
    # Any other difference is refused; nothing is written.
    before = (run_dir / "records.jsonl").read_bytes()
    assert main(["run", "--resume", str(run_dir), "--set", "stages.distill.temperature=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only the budget keys" in err
    assert (run_dir / "records.jsonl").read_bytes() == before
    # The same budget again: no step is taken. The stage does not start when its first segment's record
    # already holds the whole budget, or stops before its first step (a record of 0 steps) when the
    # loading takes it there.
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == EXIT_BUDGET
    err = capsys.readouterr().err
    assert "stopped at a budget" in err and "--set stages.distill.max_duration_s=<more>" in err
    again = records(run_dir)[len(before.splitlines()):]
    assert [(r["stage"], r["status"], r["num_steps"]) for r in again] in ([], [("distill", "stopped-budget", 0)])
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--set", "stages.distill.max_duration_s=1000"]) == 0
    capsys.readouterr()
    distill = [r for r in records(run_dir) if r["stage"] == "distill"]
    assert [r["status"] for r in distill] == ["stopped-budget"] * (len(distill) - 1) + ["ok"]
    assert distill[-1]["resumed_from_step"] == stopped_steps  # the stop checkpointed its last step
    assert sum(r["num_steps"] for r in distill) == 8
    assert 'max_duration_s = 1000' in (run_dir / "config.toml").read_text(encoding="utf-8")  # kept for later resumes
    frame = load_runs(run_dir)
    row = frame[frame["stage"] == "distill"].iloc[0]
    assert row["energy_kwh"] == pytest.approx(sum(r["energy_kwh"] for r in distill))
    assert "stopped-budget" in row["segment_statuses"] and row["status"] == "ok"
    from greendistil.report import write_report

    report = write_report([run_dir], run_dir / "report").read_text(encoding="utf-8")
    assert "Budgets in force: `stages.distill.max_duration_s`" in report
    assert "`distill (sst2)` of budgeted (segment 1) stopped at `stages.distill.max_duration_s` = 4.5 s at step" in report
    plain, resumed = student_weights(budget_runs["plain"]), student_weights(run_dir)
    assert all(torch.equal(plain[k], resumed[k]) for k in plain)  # bit for bit the run nobody stopped


def test_a_run_budget_spent_by_one_stage_stops_the_next_before_it_starts(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"run": {"max_energy_kwh": 1e-12}})
    assert main(["run", str(config), "--no-progress", "--run-id", "tight"]) == EXIT_BUDGET
    err = capsys.readouterr().err
    assert "run.max_energy_kwh" in err and "Traceback" not in err
    # The tiny finetune may end before codecarbon's first reading (then distill never starts) or be stopped
    # by it mid-stage; either way nothing after it runs.
    lines = records(tmp_path / "runs" / "tight")
    assert [(r["stage"], r["status"]) for r in lines] in ([("finetune", "ok")], [("finetune", "stopped-budget")])
    assert lines[-1]["budget"]["limit.run.max_energy_kwh"] == 1e-12


@pytest.mark.parametrize(("override", "fragment"), [
    ("run.max_energy_kwh=-1", "run.max_energy_kwh: -1.0 is out of range; valid: > 0"),
    ("run.max_co2_kg=0", "run.max_co2_kg: 0.0 is out of range"),
    ("stages.distill.max_duration_s=0", "max_duration_s: 0.0 is out of range"),
    ("run.max_energy_kwh=lots", "max_energy_kwh"),
    ("stages.evaluate.max_energy_kwh=1", "max_energy_kwh"),  # only training stages have budgets
])
def test_bad_budgets_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                                         fragment: str) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))
    assert main(["run", str(config), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "runs").exists()


def test_budgets_do_not_change_the_config_hash(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, tmp_path / "glue")
    plain = load_config(config)
    budgeted = load_config(config, ["run.max_energy_kwh=1", "stages.distill.max_co2_kg=2"])
    assert plain.config_hash() == budgeted.config_hash()
    assert plain.with_budgets_of(budgeted) == budgeted
    assert load_config(config, ["stages.distill.temperature=3"]).config_hash() != plain.config_hash()
    assert json.loads(json.dumps(budgeted.to_dict()))["run"]["max_energy_kwh"] == 1
