"""A GLUE suite end to end on tiny in-process models: one run id over four tasks with DistilBERT's general
route beside the task route, killed mid-task with a real SIGTERM and resumed to the same Table 1, and the
six real offline tasks of ../shared/glue when it exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from builders import read_records_strict, subprocess_env
from conftest import deep_update, real_glue_dir, tiny_config, write_config, write_suite_glue
from greendistil import glue_table, load_runs

REPO = Path(__file__).resolve().parents[1]
TASKS = ["cola", "sst2", "stsb", "rte"]


def suite_config(glue_dir: Path, output_dir: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny teacher and student over `TASKS`, with the general route: pretraining and general distillation
    once, then per task the teacher's fine-tuning, task distillation, the general student's fine-tuning and
    an evaluation of all three."""
    raw = deep_update(tiny_config(glue_dir, output_dir), {
        "task": {"name": None},
        "suite": {"tasks": TASKS, "overrides": {"rte": {"epochs": 2, "max_seq_length": 48}}},
        "corpus": {"source": "glue", "glue_tasks": ["sst2"], "heldout_examples": 8, "max_seq_length": 32},
    })
    raw["stages"] = [
        {"kind": "pretrain", "train": "all", "batch_size": 16},
        {"kind": "distill", "name": "distill-general", "role": "general_student", "objective": "mlm",
         "batch_size": 16},
        {"kind": "finetune", "role": "teacher", "batch_size": 16, "checkpoint_every_steps": 1},
        {"kind": "distill", "batch_size": 16, "checkpoint_every_steps": 1},
        {"kind": "finetune", "name": "finetune-general", "role": "general_student", "batch_size": 16},
        {"kind": "evaluate", "roles": ["teacher", "student", "general_student"]},
    ]
    return deep_update(raw, changes or {})


def greendistil(*args: str, signal_at: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greendistil", *args, "--no-progress"], cwd=REPO,
                          env=subprocess_env(signal_at), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same suite twice: once unbroken, once killed by SIGTERM in the second task's distillation (after
    its second step; every step is checkpointed) and resumed."""
    root = tmp_path_factory.mktemp("suite")
    glue = write_suite_glue(root / "glue")
    config = write_config(root / "suite.toml", suite_config(glue, root / "runs"))
    whole = greendistil("run", str(config), "--run-id", "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = greendistil("run", str(config), "--run-id", "killed", signal_at="step:distill:2@2:SIGTERM")
    assert killed.returncode == 143, killed.stderr[-3000:]
    assert "continue with: greendistil run --resume" in killed.stderr
    resumed = greendistil("run", "--resume", str(root / "runs" / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"whole": root / "runs" / "whole", "resumed": root / "runs" / "killed"}


def test_one_run_directory_with_a_record_per_task_and_stage(runs: dict[str, Path]) -> None:
    records = read_records_strict(runs["whole"])
    shared = [(r["task"], r["stage"]) for r in records[:2]]
    assert shared == [(None, "pretrain"), (None, "distill-general")]  # once, before any task, with no task
    per_task = [(r["task"], r["stage"]) for r in records[2:]]
    assert per_task == [(task, stage) for task in TASKS
                        for stage in ("finetune", "distill", "finetune-general", "evaluate")]
    assert {r["status"] for r in records} == {"ok"}
    steps = {(r["task"], r["stage"]): r["num_steps"] for r in records}
    assert steps[("rte", "distill")] == 2 * steps[("sst2", "distill")] == 6  # rte: epochs = 2 (its override)
    for task in TASKS:
        assert (runs["whole"] / "checkpoints" / task / "distill" / "model.safetensors").is_file()
    assert (runs["whole"] / "checkpoints" / "distill-general" / "model.safetensors").is_file()


def test_each_task_starts_from_the_shared_general_student(runs: dict[str, Path]) -> None:
    finetunes = [r for r in read_records_strict(runs["whole"]) if r["stage"] == "finetune-general"]
    assert {r["model"] for r in finetunes} == {"checkpoint:checkpoints/distill-general"}
    assert [r["artifacts"]["general_student"] for r in finetunes] == [
        f"checkpoints/{task}/finetune-general" for task in TASKS]


def test_every_task_model_and_the_shared_general_student_get_cards(runs: dict[str, Path]) -> None:
    from huggingface_hub import ModelCard

    records = {(r["task"], r["stage"]): r for r in read_records_strict(runs["whole"])}
    general = ModelCard.load(runs["whole"] / "checkpoints" / "distill-general" / "README.md").data
    assert general.pipeline_tag == "fill-mask" and general.eval_results is None  # an MLM model, not scored
    shared_g = 1000 * (records[(None, "pretrain")]["co2_kg"] + records[(None, "distill-general")]["co2_kg"])
    assert general.co2_eq_emissions["emissions"] == pytest.approx(shared_g, rel=1e-5)
    for task in TASKS:
        student = ModelCard.load(runs["whole"] / "checkpoints" / task / "distill" / "README.md").data
        expected = sum(records[(task, stage)]["co2_kg"] for stage in ("finetune", "distill"))
        # The task student needed its task's teacher, and the pretrained (MLM-trained) teacher of the shared stage.
        expected += records[(None, "pretrain")]["co2_kg"]
        assert student.co2_eq_emissions["emissions"] == pytest.approx(1000 * expected, rel=1e-5), task
        assert student.eval_results[0].dataset_config == task
        routed = ModelCard.load(runs["whole"] / "checkpoints" / task / "finetune-general" / "README.md").data
        assert routed.co2_eq_emissions["emissions"] == pytest.approx(
            shared_g + 1000 * records[(task, "finetune-general")]["co2_kg"], rel=1e-5), task


def test_the_interrupted_task_resumed_from_its_checkpoint(runs: dict[str, Path]) -> None:
    records = read_records_strict(runs["resumed"])
    distills = [(r["task"], r["status"], r["segment"]) for r in records if r["stage"] == "distill"]
    assert distills == [("cola", "ok", 1), ("sst2", "interrupted", 1), ("sst2", "ok", 2), ("stsb", "ok", 1),
                        ("rte", "ok", 1)]
    second = next(r for r in records if r["stage"] == "distill" and r["segment"] == 2)
    assert second["resumed_from_step"] == 1  # the signal came after step 2, before its checkpoint
    frame = load_runs(runs["resumed"])
    assert frame[["task", "stage"]].duplicated().sum() == 0  # the two segments are one row
    row = frame[(frame["task"] == "sst2") & (frame["stage"] == "distill")].iloc[0]
    assert row["num_segments"] == 2 and row["segment_statuses"] == "interrupted,ok"


def test_a_resumed_suite_gives_the_same_table_1_as_an_unbroken_one(runs: dict[str, Path]) -> None:
    whole, resumed = (glue_table(load_runs(runs[name])).drop(columns="run") for name in ("whole", "resumed"))
    assert list(whole["model"])[:3] == ["teacher", "student (task distillation)",
                                        "student (general distillation, then the task)"]
    pd.testing.assert_frame_equal(whole, resumed)
    assert whole.iloc[:3][["CoLA", "SST-2", "STS-B", "RTE"]].notna().all().all()
    assert whole.iloc[:3][["MRPC", "QQP", "MNLI", "QNLI", "WNLI"]].isna().all().all()  # not run: NaN, never 0


def test_the_report_opens_with_table_1(runs: dict[str, Path]) -> None:
    report = (runs["whole"] / "report" / "report.md").read_text(encoding="utf-8")
    first_table = next(line for line in report.splitlines() if line.startswith("|"))
    assert first_table.startswith("| run | model | macro over 4 of 9 tasks (CoLA, SST-2, STS-B, RTE) | CoLA |")
    assert "## What each cell cost" in report and "general route kWh (shared ÷ 4 tasks)" in report
    assert (runs["whole"] / "report" / "retention-vs-energy-whole.png").is_file()


def test_the_six_offline_tasks_of_shared_glue(tmp_path: Path) -> None:
    """The real files (CoLA without a header, MRPC's byte-order mark, RTE's text labels, STS-B's scores)
    through the suite, capped to a few examples per task."""
    glue = real_glue_dir()
    if glue is None:
        pytest.skip("../shared/glue is not here")
    six = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]
    raw = deep_update(tiny_config(glue, tmp_path / "runs"), {
        "task": {"name": None, "max_train_examples": 32, "max_eval_examples": 32},
        "suite": {"tasks": six}, "run": {"report": False}})
    done = greendistil("run", str(write_config(tmp_path / "six.toml", raw)), "--run-id", "six")
    assert done.returncode == 0, done.stderr[-3000:]
    table = glue_table(load_runs(tmp_path / "runs" / "six"))
    assert table.attrs["macro_label"] == "macro over 6 of 9 tasks (CoLA, SST-2, MRPC, STS-B, RTE, WNLI)"
    measured = table[table["run"] == "six"]
    assert measured[["CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI"]].notna().all().all()
    sources = {r["task"]: r["data_sources"]["train"] for r in read_records_strict(tmp_path / "runs" / "six")}
    assert sources["mrpc"].endswith("MRPC/train.tsv") and sources["cola"].endswith("CoLA/train.tsv")
