"""`run.seeds`: the seed-dependent stages once per seed inside one run (a teacher per seed, or one shared),
each seed's cell equal to a single-seed run with that seed, a multi-seed run resumed after a kill, and the
seeds combined by `load_runs(over_seeds=True)` and the report (median, mean ± std, min, max, summed cost)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from builders import read_records_strict, section_of, subprocess_env
from conftest import deep_update, tiny_config, write_config, write_sst2, write_suite_glue
from greendistil import load_runs
from greendistil.cli import main
from greendistil.config import load_config, suite_steps
from greendistil.runlog.seeds import aggregate_seeds

SEEDS = [3, 4, 5]


def seeded_config(root: Path, glue: Path, changes: dict[str, Any] | None = None) -> Path:
    # STS-B: a regression score that moves with the seed even on tiny models (SST-2's accuracy sits at 0.5).
    raw = deep_update(tiny_config(glue, root / "runs"), {"run": {"seeds": SEEDS}, "task": {"name": "stsb"},
                                                         **(changes or {})})
    raw["stages"].append({"kind": "benchmark", "roles": ["teacher", "student"], "batch_sizes": [4],
                          "num_examples": 8, "repeats": 1, "min_window_s": 0.1, "warmup_batches": 0})
    return write_config(root / f"seeds-{len(list(root.glob('*.toml')))}.toml", raw)


def run(*args: str) -> int:
    return main(["run", *args, "--no-progress"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three seeds with a teacher each, three seeds on one shared teacher, and a single-seed run of seed 4."""
    root = tmp_path_factory.mktemp("seeds")
    glue = write_suite_glue(root / "glue")
    own = seeded_config(root, glue)
    shared = seeded_config(root, glue, {"run": {"seeds": SEEDS, "share_teacher": True}})
    single = write_config(root / "single.toml", deep_update(tiny_config(glue, root / "runs"),
                                                            {"run": {"seed": 4}, "task": {"name": "stsb"}}))
    for config, run_id in ((own, "own"), (shared, "shared"), (single, "single")):
        assert run(str(config), "--run-id", run_id) == 0
    return {name: root / "runs" / name for name in ("own", "shared", "single")}


def test_every_seed_dependent_stage_runs_once_per_seed(runs: dict[str, Path]) -> None:
    cells = [(r["seed"], r["stage"]) for r in read_records_strict(runs["own"])]
    per_seed = [(seed, stage) for seed in SEEDS for stage in ("finetune", "distill", "evaluate")]
    benchmark = [(3, stage) for _, stage in cells if stage.startswith("benchmark.")]
    assert benchmark and cells == per_seed[:3] + benchmark + per_seed[3:]  # timed once: the first seed's models
    for seed in SEEDS:
        assert (runs["own"] / "checkpoints" / f"seed-{seed}" / "distill" / "model.safetensors").is_file()
    assert {r["status"] for r in read_records_strict(runs["own"])} == {"ok"}


def test_a_shared_teacher_is_trained_once_and_every_seed_distils_from_it(runs: dict[str, Path]) -> None:
    records = read_records_strict(runs["shared"])
    finetunes = [r for r in records if r["stage"] == "finetune"]
    assert len(finetunes) == 1 and finetunes[0]["seed"] is None
    assert finetunes[0]["artifacts"] == {"teacher": "checkpoints/finetune"}
    assert [r["seed"] for r in records if r["stage"] == "distill"] == SEEDS
    teachers = {r["metrics"]["teacher.score"] for r in records if r["stage"] == "evaluate"}
    assert len(teachers) == 1  # the one teacher, scored by every seed's evaluation
    assert len({r["metrics"]["student.score"] for r in records if r["stage"] == "evaluate"}) == 3
    students = [load_file(runs["shared"] / "checkpoints" / f"seed-{s}" / "distill" / "model.safetensors")
                for s in SEEDS]
    assert any(not torch.equal(students[0][k], students[1][k]) for k in students[0])  # the seed matters


def test_a_seeds_cell_equals_a_single_seed_run_with_that_seed(runs: dict[str, Path]) -> None:
    cell = load_file(runs["own"] / "checkpoints" / "seed-4" / "distill" / "model.safetensors")
    single = load_file(runs["single"] / "checkpoints" / "distill" / "model.safetensors")
    assert cell.keys() == single.keys() and all(torch.equal(cell[k], single[k]) for k in cell)
    by_seed = {r["seed"]: r for r in read_records_strict(runs["own"]) if r["stage"] == "evaluate"}
    (alone,) = [r for r in read_records_strict(runs["single"]) if r["stage"] == "evaluate"]
    assert by_seed[4]["metrics"] == alone["metrics"]


def test_load_runs_over_seeds_gives_the_median_spread_and_summed_cost(runs: dict[str, Path]) -> None:
    rows = load_runs(runs["own"])
    evaluate = rows[rows["stage"] == "evaluate"].sort_values("seed")
    scores = list(evaluate["metric.student.score"])
    assert len(set(scores)) == 3  # the seeds differ, so the statistics below are checked
    combined = load_runs(runs["own"], over_seeds=True)
    row = combined[combined["stage"] == "evaluate"].iloc[0]
    assert row["num_seeds"] == 3 and row["seeds"] == "3,4,5"
    assert row["metric.student.score"] == pytest.approx(statistics.median(scores))
    assert row["metric.student.score.mean"] == pytest.approx(statistics.mean(scores))
    assert row["metric.student.score.std"] == pytest.approx(statistics.stdev(scores))
    assert (row["metric.student.score.min"], row["metric.student.score.max"]) == (min(scores), max(scores))
    distill = rows[rows["stage"] == "distill"]
    summed = combined[combined["stage"] == "distill"].iloc[0]
    assert summed["flops"] == pytest.approx(distill["flops"].sum())
    assert summed["duration_s"] == pytest.approx(distill["duration_s"].sum())
    assert summed["per_seed_flops"] == pytest.approx(distill["flops"].mean())
    shared = load_runs(runs["shared"], over_seeds=True)
    teacher = shared[shared["stage"] == "finetune"].iloc[0]
    assert teacher["num_seeds"] == 1 and bool(teacher["shared_by_seeds"])


def test_aggregation_by_hand_with_a_missing_figure() -> None:
    frame = pd.DataFrame([
        {"run_dir": "r", "task": "sst2", "stage": "evaluate", "seed": s, "status": "ok", "metric.student.score": v,
         "energy_kwh": e, "flops": 10.0}
        for s, v, e in ((1, 0.5, 1.0), (2, 0.9, None), (3, 0.7, 2.0), (4, 0.6, 3.0))])
    row = aggregate_seeds(frame).iloc[0]
    assert row["metric.student.score"] == pytest.approx(0.65)  # the median of an even count: the middle two's mean
    assert row["metric.student.score.std"] == pytest.approx(statistics.stdev([0.5, 0.9, 0.7, 0.6]))
    assert row["energy_kwh"] == pytest.approx(6.0) and row["per_seed_energy_kwh"] == pytest.approx(2.0)
    assert row["seeds_incomplete"] == ["energy_kwh"]  # one seed lacks it: the sum is of the other three
    one = aggregate_seeds(frame.iloc[:1]).iloc[0]
    assert one["num_seeds"] == 1 and pd.isna(one["metric.student.score.std"])  # no spread from one seed


def test_the_report_gives_each_metric_over_the_seeds(runs: dict[str, Path]) -> None:
    markdown = (runs["own"] / "report" / "report.md").read_text(encoding="utf-8")
    seeds = section_of(markdown, "## Seeds")
    assert "3 seeds (3, 4, 5)" in seeds and "a teacher per seed" in seeds
    scores = sorted(r["metrics"]["student.score"] for r in read_records_strict(runs["own"])
                    if r["stage"] == "evaluate")
    student = next(line for line in seeds.splitlines() if line.startswith("| STS-B | student"))
    assert f"| {100 * scores[1]:.1f} |" in student  # the median, ×100
    assert f"{100 * scores[0]:.1f} – {100 * scores[2]:.1f}" in student
    table1 = section_of(markdown, "## Table 1")
    assert "student (task distillation), median of 3 seeds" in table1
    shared = (runs["shared"] / "report" / "report.md").read_text(encoding="utf-8")
    assert "one teacher shared by the seeds" in section_of(shared, "## Seeds")


def test_resume_of_a_multi_seed_run_skips_the_finished_seeds(tmp_path: Path) -> None:
    import subprocess
    import sys

    glue = write_suite_glue(tmp_path / "glue")
    config = seeded_config(tmp_path, glue, {"run": {"seeds": [3, 4], "report": False}})
    killed = subprocess.run([sys.executable, "-m", "greendistil", "run", str(config), "--run-id", "k",
                             "--no-progress"], env=subprocess_env("stage-start:distill@2:SIGTERM"),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 143, killed.stderr[-2000:]
    assert run("--resume", str(tmp_path / "runs" / "k")) == 0
    records = read_records_strict(tmp_path / "runs" / "k")
    segments = [(r["seed"], r["stage"], r["segment"], r["status"]) for r in records if r["stage"] == "distill"]
    assert segments == [(3, "distill", 1, "ok"), (4, "distill", 1, "interrupted"), (4, "distill", 2, "ok")]
    assert sum(1 for r in records if r["stage"] == "finetune") == 2  # seed 3's teacher was not trained again


def test_steps_of_a_suite_with_seeds(tmp_path: Path) -> None:
    raw = {"run": {"seeds": [1, 2], "share_teacher": True}, "suite": {"tasks": ["rte", "mrpc"]},
           "stages": [{"kind": "finetune", "role": "teacher"}, {"kind": "distill"},
                      {"kind": "evaluate", "roles": ["teacher", "student"]}]}
    path = write_config(tmp_path / "suite.toml", raw)
    steps = [(s.task, s.seed, s.stage.name, s.torch_seed) for s in suite_steps(load_config(path))]
    assert steps == [("rte", None, "finetune", 1), ("rte", 1, "distill", 2), ("rte", 1, "evaluate", 3),
                     ("rte", 2, "distill", 3), ("rte", 2, "evaluate", 4),
                     ("mrpc", None, "finetune", 1), ("mrpc", 1, "distill", 2), ("mrpc", 1, "evaluate", 3),
                     ("mrpc", 2, "distill", 3), ("mrpc", 2, "evaluate", 4)]


@pytest.mark.parametrize("override, message", [
    ("run.seeds=[1, 1]", "run.seeds: [1, 1] is out of range; valid: distinct integers"),
    ("run.seeds=[1.5]", "run.seeds[0]: expected an integer"),
    ("run.seeds=3", "run.seeds: expected a list"),
    ("run.share_teacher=true", "run.share_teacher: True is out of range; valid: true only with run.seeds"),
])
def test_bad_seed_keys_are_one_line_and_exit_2(tmp_path: Path, override: str, message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.toml", tiny_config(write_sst2(tmp_path / "glue"), tmp_path / "runs"))
    assert main(["run", str(config), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_plan_calibrates_each_stage_once_and_forecasts_every_seed(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    glue = write_suite_glue(tmp_path / "glue")
    config = seeded_config(tmp_path, glue, {"run": {"seeds": [3, 4], "share_teacher": True}})
    assert main(["plan", str(config), "--calibrate-steps", "2", "--out", str(tmp_path / "plan.json")]) == 0
    assert "distill (stsb, seed 4)" in capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    cells = [(e["seed"], e["window"]) for e in plan["stages"] if not e["window"].startswith("benchmark.")]
    assert cells == [(None, "finetune"), (3, "distill"), (3, "evaluate"), (4, "distill"), (4, "evaluate")]
    distills = [e for e in plan["stages"] if e["window"] == "distill"]
    assert distills[0]["duration_s"] == distills[1]["duration_s"]  # calibrated once: the same work per seed
    assert plan["total"]["flops"] == pytest.approx(sum(e["flops"] for e in plan["stages"]))


def test_a_suite_over_seeds_gives_table_1_as_medians(tmp_path: Path) -> None:
    from greendistil import glue_table

    raw = deep_update(tiny_config(write_suite_glue(tmp_path / "glue"), tmp_path / "runs"), {
        "run": {"seeds": [1, 2], "share_teacher": True, "report": False}, "task": {"name": None},
        "suite": {"tasks": ["stsb", "rte"]}})
    assert run(str(write_config(tmp_path / "suite.toml", raw)), "--run-id", "suite") == 0
    run_dir = tmp_path / "runs" / "suite"
    records = read_records_strict(run_dir)
    assert [(r["task"], r["seed"], r["stage"]) for r in records] == [
        (task, seed, stage) for task in ("stsb", "rte")
        for seed, stage in ((None, "finetune"), (1, "distill"), (1, "evaluate"), (2, "distill"), (2, "evaluate"))]
    assert (run_dir / "checkpoints" / "rte" / "seed-2" / "distill" / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "rte" / "finetune" / "model.safetensors").is_file()
    table = glue_table(load_runs(run_dir)).set_index("model")
    for task, column in (("stsb", "STS-B"), ("rte", "RTE")):
        scores = [r["metrics"]["student.score"] for r in records if r["task"] == task and r["stage"] == "evaluate"]
        assert table.loc["student (task distillation), median of 2 seeds", column] == pytest.approx(
            100 * statistics.median(scores))


def test_a_seeds_model_card_counts_only_that_seeds_stages(runs: dict[str, Path]) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(runs["own"] / "checkpoints" / "seed-4" / "distill" / "README.md")
    records = read_records_strict(runs["own"])
    own = sum(r["co2_kg"] for r in records if r["seed"] == 4 and r["stage"] in ("finetune", "distill"))
    assert card.data.co2_eq_emissions["emissions"] == pytest.approx(1000 * own, rel=1e-3)  # grams
