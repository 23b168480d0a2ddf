"""`greendistil sweep`: the trials of a grid or a seeded draw, a tiny sweep with a shared teacher run end to
end (its report, its budget curve), continuing a sweep without rerunning finished trials, and the bad-input
cases of the new keys and command (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from builders import markdown_tables, read_records_strict as records, section_of
from conftest import real_glue_dir, tiny_config, write_config, write_sst2, write_tiny_config
from greendistil.cli import EXIT_BAD_INPUT, main
from greendistil.config import suite_steps
from greendistil.config.sweep import SweepAxis, SweepSection, build_sweep, parse_grid, trial_raw, trials
from greendistil.errors import ConfigError
from greendistil.sweeping import SweepRequest, prepare_sweep


def test_grid_values_are_toml_or_bare_words() -> None:
    assert parse_grid("stages.distill.temperature=1,2.5").values == (1, 2.5)
    assert parse_grid("student.layers=[0,2,4],[0,5]").values == ([0, 2, 4], [0, 5])
    assert parse_grid("task.name=rte, stsb").values == ("rte", "stsb")
    for bad, expected in (("temperature", "expected KEY=V1,V2"), ("a.b=1,1", "repeats a value"),
                          ("sweep.seed=1,2", "cannot be a [sweep] key")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_grid(bad)


def test_the_trials_are_the_grid_in_order_or_a_seeded_draw_from_it() -> None:
    axes = (SweepAxis("stages.distill.temperature", (1.0, 2.0, 4.0)), SweepAxis("stages.distill.alpha_ce", (1, 5)))
    grid = trials(SweepSection(axes=axes))
    assert [t.values for t in grid[:3]] == [(("stages.distill.temperature", 1.0), ("stages.distill.alpha_ce", 1)),
                                            (("stages.distill.temperature", 1.0), ("stages.distill.alpha_ce", 5)),
                                            (("stages.distill.temperature", 2.0), ("stages.distill.alpha_ce", 1))]
    assert [t.trial_id for t in grid] == [f"t00{i}" for i in range(6)]
    drawn = trials(SweepSection(axes=axes, random_trials=4, seed=3))
    assert drawn == trials(SweepSection(axes=axes, random_trials=4, seed=3)) and len(set(drawn)) == 4
    assert {t.values for t in drawn} <= {t.values for t in grid}
    assert trial_raw({"stages": [{"kind": "distill"}], "sweep": {}}, grid[5]) == {
        "stages": [{"kind": "distill", "temperature": 4.0, "alpha_ce": 5}]}


@pytest.mark.parametrize("raw, grid, expected", [
    ({}, (), "no axes"),
    ({"grid": {"a.b": [1]}, "random_trials": 2}, (), "random_trials: 2 is out of range; valid: 1 to 1"),
    ({"grid": {"a.b": [1, 2]}, "share_teacher": "yes"}, (), "share_teacher: 'yes' is not valid"),
    ({"grid": {"a.b": [1, 2]}, "trials": 3}, (), "sweep.trials: unknown key"),
    ({"grid": {"a.b": [1, 2]}}, ("c.d=3,4", "c.d=5,6"), "an axis is given twice"),
])
def test_bad_sweep_tables(raw: dict[str, Any], grid: tuple[str, ...], expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_sweep(raw, grid)


def test_command_line_axes_replace_the_config_grid() -> None:
    sweep = build_sweep({"grid": {"a.b": [1, 2]}, "share_teacher": False}, ("run.seed=1,2,3",), share_teacher=True)
    assert [a.key for a in sweep.axes] == ["run.seed"] and sweep.share_teacher is True


def test_a_teacher_is_shared_only_when_no_axis_changes_it(tmp_path: Path) -> None:
    config_path = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))
    shared = prepare_sweep(SweepRequest(config_path=config_path, grid=("stages.distill.temperature=1,2",)))
    assert shared.teacher is not None and [s.name for s in shared.teacher.stages] == ["finetune"]
    assert all(c.teacher.source == "local" and [s.name for s in c.stages] == ["distill", "evaluate"]
               for _, c in shared.trials)
    # on the shared teacher a trial's student starts from the seed a run of the trial's config would give it
    unshared = prepare_sweep(SweepRequest(config_path=config_path, grid=("stages.distill.temperature=1,2",),
                                          share_teacher=False))
    seeds = [[(s.stage.name, s.torch_seed) for s in suite_steps(c) if s.stage.name == "distill"]
             for sweep in (shared, unshared) for _, c in sweep.trials]
    assert seeds[:2] == seeds[2:] and seeds[0] == [("distill", 1)]
    for axis in ("run.seed=1,2", "stages.finetune.epochs=1,2", "stages.0.learning_rate=1e-4,2e-4"):
        own = prepare_sweep(SweepRequest(config_path=config_path, grid=(axis,)))
        assert own.teacher is None and own.definition["share_teacher"] is False
    write_config(config_path, {**tiny_config(tmp_path / "glue", tmp_path / "runs"),
                               "sweep": {"grid": {"run.seed": [1, 2]}, "share_teacher": True}})
    seeds = prepare_sweep(SweepRequest(config_path=config_path))  # asked for: one teacher, the students' seeds vary
    assert seeds.teacher is not None and seeds.teacher.run.seed == 0 and [c.run.seed for _, c in seeds.trials] == [1, 2]
    with pytest.raises(ConfigError, match=r"share_teacher: true, but the axes \['teacher.num_layers'\] change"):
        prepare_sweep(SweepRequest(config_path=config_path, grid=("teacher.num_layers=2,3",)))
    assert not (tmp_path / "runs").exists()


SWEEP_GRID = ["--grid", "stages.distill.temperature=1,2,4", "--grid", "stages.distill.alpha_ce=1,5"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Six trials of the tiny config's distillation on one shared teacher, through the CLI."""
    root = tmp_path_factory.mktemp("sweep")
    config_path = write_tiny_config(root, write_sst2(root / "glue"))
    code = main(["sweep", str(config_path), *SWEEP_GRID, "--no-progress"])
    return {"root": root, "config": config_path, "code": code, "dir": root / "runs" / "sweeps" / "tiny"}


def test_a_sweep_runs_a_shared_teacher_then_every_trial(swept: dict[str, Any]) -> None:
    assert swept["code"] == 0
    definition = json.loads((swept["dir"] / "sweep.json").read_text())
    assert definition["share_teacher"] is True and len(definition["trials"]) == 6
    assert [r["stage"] for r in records(swept["dir"] / "teacher")] == ["finetune"]
    for trial in definition["trials"]:
        run = records(swept["dir"] / trial["trial_id"])
        assert [(r["stage"], r["status"]) for r in run] == [("distill", "ok"), ("evaluate", "ok")]
        assert run[0]["details"]["temperature"] == trial["values"]["stages.distill.temperature"]
        assert run[0]["details"]["teacher_model"].startswith("local:") and "teacher" in run[0]["details"]["teacher_model"]


def test_the_sweep_report_has_every_trial_the_best_and_the_budget_curve(swept: dict[str, Any]) -> None:
    report_path = swept["dir"] / "report" / "report.md"
    section = section_of(report_path.read_text(encoding="utf-8"), "## Sweeps")
    tables = markdown_tables(section)
    trials_table, curve = tables[0], tables[1]
    assert [row["trial"] for row in trials_table] == [f"t00{i}" for i in range(6)]
    scores = [float(row["score"]) for row in trials_table]
    best = trials_table[scores.index(max(scores))]["trial"]
    assert f"Best: `{best}`" in section
    assert [row["trials n"] for row in curve] == ["1", "2", "3", "5", "6"]
    assert float(curve[0]["E[max score]"]) == pytest.approx(sum(scores) / 6, abs=1e-3)
    assert float(curve[-1]["E[max score]"]) <= max(scores) + 1e-4
    assert "final model's share of it" in section
    for png in ("sweep-budget-curves.png", "sweep-pareto-tiny.png"):
        assert (swept["dir"] / "report" / png).stat().st_size > 0


def test_the_same_command_again_reruns_nothing_and_fills_a_missing_trial(swept: dict[str, Any],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: len(records(p)) for p in swept["dir"].iterdir() if (p / "records.jsonl").is_file()}
    shutil.rmtree(swept["dir"] / "t003")
    capsys.readouterr()
    assert main(["sweep", str(swept["config"]), *SWEEP_GRID, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count(": skipped") == 6 and "t003 (temperature=2, alpha_ce=5): ok" in out
    after = {p.name: len(records(p)) for p in swept["dir"].iterdir() if (p / "records.jsonl").is_file()}
    assert after == before


@pytest.mark.parametrize("args, expected", [
    (["--grid", "stages.distill.temprature=1,2"], "temprature"),
    (["--grid", "stages.distill.temperature"], "expected KEY=V1,V2"),
    (["--grid", "student.layers=[0,9]"], "student.layers"),
    (["--grid", "stages.distill.temperature=1,2", "--set", "sweep.seed=3"], "sweep keys are not set with --set"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               args: list[str], expected: str) -> None:
    config_path = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))
    assert main(["sweep", str(config_path), *args]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert not (tmp_path / "runs").exists()


def test_another_sweep_in_the_same_folder_is_refused(swept: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(swept["config"]), "--grid", "stages.distill.temperature=3,5"]) == EXIT_BAD_INPUT
    assert "holds another sweep" in capsys.readouterr().err


def test_run_refuses_a_config_with_a_sweep_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {**tiny_config(tmp_path / "glue", tmp_path / "runs"), "sweep": {"grid": {"run.seed": [1, 2]}}}
    assert main(["run", str(write_config(tmp_path / "s.toml", raw))]) == EXIT_BAD_INPUT
    assert "greendistil sweep CONFIG" in capsys.readouterr().err


def test_the_shipped_sweep_config_is_eight_trials_on_one_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUE_DIR", str(real_glue_dir()))
    planned = prepare_sweep(SweepRequest(config_path=Path(__file__).resolve().parents[1] / "configs" / "sweep.toml"))
    assert len(planned.trials) == 8 and planned.teacher is not None
    assert planned.sweep_dir == Path("runs") / "sweeps" / "stsb-loss"


def test_a_seed_axis_gives_each_configuration_its_median_and_spread() -> None:
    from greendistil.report.sweep import SweepFigures, TrialFigures, sweep_section

    scores = {"t000": 0.80, "t001": 0.84, "t002": 0.83, "t003": 0.70, "t004": 0.72, "t005": 0.75}
    values = [{"stages.distill.alpha_ce": a, "run.seed": seed} for a in (1.0, 5.0) for seed in (1, 2, 3)]
    definition = {"axes": [{"key": "stages.distill.alpha_ce", "values": [1.0, 5.0]},
                           {"key": "run.seed", "values": [1, 2, 3]}],
                  "trials": [{"trial_id": t, "values": v} for t, v in zip(scores, values)], "share_teacher": False}
    sweep = SweepFigures(sweep_id="s", definition=definition, teacher=None, energy_kinds=" (est.)", trials=tuple(
        TrialFigures(trial_id=t, label="", status="ok", score=v, energy_kwh=0.001 * (i + 1), co2_kg=0.0004,
                     flops=1e12, duration_s=10.0) for i, (t, v) in enumerate(scores.items())))
    section = sweep_section([sweep])
    seeds = next(t for t in markdown_tables(section) if t and "median" in t[0])
    assert [(r["configuration"], r["seeds"], r["median"], r["min"], r["max"]) for r in seeds] == [
        ("alpha_ce=1.0", "3", "0.83", "0.8", "0.84"), ("alpha_ce=5.0", "3", "0.72", "0.7", "0.75")]
    assert seeds[0]["mean ± std"] == "0.8233 ± 0.021" and seeds[0]["kWh per seed"] == "0.002 (est.)"
    assert "Best: `t001`" in section and "total" not in seeds[0]


def test_the_sweep_figures_are_legible(swept: dict[str, Any]) -> None:
    from greendistil.report.frame import load_report_frame
    from greendistil.report.legibility import outside_figure, overlapping_texts
    from greendistil.report.sweep import sweep_figures
    from greendistil.report.sweep_plots import draw_budget_curves, draw_trials_pareto

    sweep = sweep_figures(swept["dir"], load_report_frame([swept["dir"]]))
    for fig in (draw_budget_curves([sweep, sweep]), draw_trials_pareto(sweep)):
        assert overlapping_texts(fig) == [] and outside_figure(fig) == []


def test_two_sweeps_whose_curves_cross_are_said_to() -> None:
    from greendistil.report.sweep import SweepFigures, TrialFigures, sweep_section

    def sweep(sweep_id: str, scores: list[float], kwh: float) -> SweepFigures:
        trials = tuple(TrialFigures(trial_id=f"t00{i}", label="", status="ok", score=v, energy_kwh=kwh, co2_kg=None,
                                    flops=None, duration_s=None) for i, v in enumerate(scores))
        definition = {"axes": [{"key": "stages.distill.temperature", "values": list(range(len(scores)))}],
                      "trials": [{"trial_id": t.trial_id, "values": {}} for t in trials]}
        return SweepFigures(sweep_id=sweep_id, definition=definition, trials=trials, teacher=None, energy_kinds="")

    # A: mostly poor, one excellent trial (0.58 expected from one trial, 0.77 from five); B: always 0.70.
    wide, steady = sweep("wide", [0.5, 0.5, 0.5, 0.9, 0.5], 0.001), sweep("steady", [0.7] * 5, 0.001)
    text = sweep_section([wide, steady])
    assert ("`wide` and `steady`: the curves cross over 1 to 5 trials; against energy they cross where both are "
            "drawn; at 5 trials `wide` leads. Which is better depends on the budget.") in text
    assert "do not cross" in sweep_section([steady, sweep("better", [0.8] * 5, 0.002)])


def test_a_sweep_stopped_by_sigterm_resumes_its_stopped_trial_and_skips_the_finished(tmp_path: Path) -> None:
    """A real SIGTERM in the second trial's distillation (after its second step, every step checkpointed):
    exit 143; the same command again skips the first trial, continues the second from its checkpoint as a
    second segment, and runs the third."""
    import subprocess
    import sys

    from builders import subprocess_env

    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {
        "stages": [{"kind": "finetune", "role": "teacher", "batch_size": 16},
                   {"kind": "distill", "batch_size": 16, "checkpoint_every_steps": 1},
                   {"kind": "evaluate", "roles": ["teacher", "student"]}]})
    command = [sys.executable, "-m", "greendistil", "sweep", str(config), "--grid",
               "stages.distill.temperature=1,2,4", "--no-progress"]
    killed = subprocess.run(command, env=subprocess_env("step:distill:2@2:SIGTERM"), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 143, killed.stderr[-2000:]
    folder = tmp_path / "runs" / "sweeps" / "tiny"
    assert [r["status"] for r in records(folder / "t001")] == ["interrupted"]
    assert not (folder / "t002").exists()
    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "t000 (temperature=1): skipped" in again.stdout
    assert [r["segment"] for r in records(folder / "t000")] == [1, 1]  # distill, evaluate: not rerun
    resumed = [(r["stage"], r["segment"], r["status"], r["resumed_from_step"]) for r in records(folder / "t001")]
    # From step 1's checkpoint: the signal came after step 2, before its checkpoint was written.
    assert resumed == [("distill", 1, "interrupted", None), ("distill", 2, "ok", 1), ("evaluate", 1, "ok", None)]
    assert [r["status"] for r in records(folder / "t002")] == ["ok", "ok"]
    assert [r["stage"] for r in records(folder / "teacher")] == ["finetune"]  # the shared teacher: trained once
