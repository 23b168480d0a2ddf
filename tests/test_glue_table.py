"""Table 1 and the cost of every cell, from synthetic suite records with known numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from builders import markdown_tables, section_of, suite_run, table_row, table_rows
from greendistil import glue_table, load_runs
from greendistil.data.tasks import GLUE_ORDER
from greendistil.report import write_report
from greendistil.report.glue import MODEL_LABELS, UNDISTILLED_LABEL, ModelRow, macro_label
from greendistil.report.seeds import seeds_section
from greendistil.report.suite_plots import draw_retention_vs_energy

SCORES = {
    "cola": {"teacher": {"mcc": 0.40, "score": 0.40}, "student": {"mcc": 0.30, "score": 0.30}},
    "sst2": {"teacher": {"accuracy": 0.90, "score": 0.90}, "student": {"accuracy": 0.88, "score": 0.88}},
    "mrpc": {"teacher": {"f1": 0.88, "accuracy": 0.82, "score": 0.85},
             "student": {"f1": 0.86, "accuracy": 0.80, "score": 0.83}},
    "stsb": {"teacher": {"pearson": 0.86, "spearman": 0.84, "score": 0.85},
             "student": {"pearson": 0.82, "spearman": 0.80, "score": 0.81}},
}


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    return suite_run(tmp_path, "glue-1", SCORES)


def test_macro_is_named_glue_score_only_with_all_nine_tasks() -> None:
    assert macro_label(GLUE_ORDER) == "GLUE score"
    assert macro_label(("rte", "cola", "sst2")) == "macro over 3 of 9 tasks (CoLA, SST-2, RTE)"


def test_macro_is_the_mean_of_task_scores_and_needs_every_task() -> None:
    row = ModelRow(run_id="r", model="teacher", label="teacher", task_scores={"cola": 40.0, "sst2": 90.0, "rte": 65.0})
    assert row.macro(("cola", "sst2", "rte")) == pytest.approx(65.0)
    assert row.macro(("cola", "sst2")) == pytest.approx(65.0)
    assert row.macro(("cola", "mrpc")) is None  # a task not run is never a 0


def test_glue_table_numbers(suite_dir: Path) -> None:
    table = glue_table(load_runs(suite_dir))
    label = "macro over 4 of 9 tasks (CoLA, SST-2, MRPC, STS-B)"
    assert table.attrs["macro_label"] == label
    assert list(table.columns) == ["run", "model", label, "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI",
                                   "RTE", "WNLI", "retention"]
    teacher, student, bert, distilbert = (table.iloc[i] for i in range(4))
    assert (teacher["model"], student["model"]) == ("teacher", "student (task distillation)")
    assert teacher[label] == pytest.approx((40 + 90 + 85 + 85) / 4)
    assert student[label] == pytest.approx((30 + 88 + 83 + 81) / 4)
    assert student["retention"] == pytest.approx(((30 + 88 + 83 + 81) / 4) / ((40 + 90 + 85 + 85) / 4))
    assert math.isnan(teacher["retention"]) and math.isnan(teacher["RTE"]) and math.isnan(student["QQP"])
    assert teacher["MRPC"] == pytest.approx(85.0)  # the task score: mean of F1 and accuracy
    # The paper's rows, over the same four tasks as the runs' macro.
    assert bert["run"] == "published" and bert[label] == pytest.approx((56.3 + 92.7 + 88.6 + 89.0) / 4)
    assert distilbert["retention"] == pytest.approx((51.3 + 91.3 + 87.5 + 86.9) / (56.3 + 92.7 + 88.6 + 89.0))


def test_glue_table_in_the_papers_form(suite_dir: Path) -> None:
    table = glue_table(load_runs(suite_dir), form="paper").set_index("model")
    assert table.loc["teacher", "MRPC"] == "88.0/82.0" and table.loc["teacher", "STS-B"] == "86.0/84.0"
    assert table.loc["teacher", "CoLA"] == "40.0"
    assert table.loc["student (task distillation)", "RTE"] == "—" and table.loc["teacher", "retention"] == "—"
    assert table.loc["student (task distillation)", "retention"] == f"{100 * 282 / 300:.1f}%"


def test_all_nine_tasks_give_the_glue_score_and_the_papers_own(tmp_path: Path) -> None:
    scores = {task: {"teacher": {"accuracy": 0.8, "score": 0.8}, "student": {"accuracy": 0.78, "score": 0.78}}
              for task in GLUE_ORDER}
    table = glue_table(load_runs(suite_run(tmp_path, "all", scores)))
    assert table.attrs["macro_label"] == "GLUE score"
    published = table[table["run"] == "published"].set_index("model")
    assert published.loc["BERT-base (published)", "GLUE score"] == 79.5  # the paper's, not the mean (79.7)
    assert published.loc["DistilBERT (published)", "retention"] == pytest.approx(77.0 / 79.5)


def test_a_task_column_and_one_row_per_task_and_stage(suite_dir: Path) -> None:
    frame = load_runs(suite_dir)
    assert list(frame.groupby("task", sort=False).size().items()) == [("cola", 3), ("sst2", 3), ("mrpc", 3),
                                                                      ("stsb", 3)]
    assert frame[["task", "stage"]].duplicated().sum() == 0


def test_the_report_opens_with_table_1_and_costs_every_cell(tmp_path: Path) -> None:
    run_dir = suite_run(tmp_path / "runs", "glue-1", {**SCORES, "rte": {
        "teacher": {"accuracy": 0.6, "score": 0.6}, "student": {"accuracy": 0.55, "score": 0.55},
        "general_student": {"accuracy": 0.58, "score": 0.58}}}, shared_kwh=2.0)
    markdown = write_report([run_dir], tmp_path / "report").read_text(encoding="utf-8")
    first_table = next(line for line in markdown.splitlines() if line.startswith("|"))
    assert first_table.startswith("| run | model | macro over 5 of 9 tasks")
    table1 = section_of(markdown, "## Table 1: GLUE dev scores")
    general = table_row(table1, "glue-1")  # the teacher's row first
    assert general["model"] == "teacher"
    rows = {row["model"]: row for row in table_rows(table1)}
    assert rows["student (general distillation, then the task)"]["RTE"] == "58.0"
    assert rows["student (general distillation, then the task)"]["SST-2"] == "—"

    costs = section_of(markdown, "## What each cell cost")
    by_cell = {(row["task"], row["model"]): row for row in table_rows(costs) if "model" in row}
    assert by_cell[("CoLA", "teacher")]["total kWh"] == "1 (est.)"
    assert by_cell[("RTE", "student (general distillation, then the task)")]["total kWh"] == "0.2 (est.)"
    assert by_cell[("shared", "**shared stages** (once for the suite)")]["total kWh"] == "2 (est.)"
    total = by_cell[("run", "**the cost of the study** (every stage)")]
    assert total["total kWh"] == "10.7 (est.)"  # 5 × (1.0 + 0.6 + 0.1) + 0.2 + 2.0: the parts add up
    routes = {row["task"]: row for row in table_rows(costs) if "task route kWh (teacher + distillation)" in row}
    assert routes["RTE"]["general route kWh (shared ÷ 1 tasks)"] == "2.2"  # 0.2 + 2.0 / 1 task that used them
    assert routes["RTE"]["task route kWh (teacher + distillation)"] == "1.6"
    rest = markdown.replace(table1, "")  # Table 1 has the paper's 13 columns; every other table reads on a screen
    assert all(len(t[0]) <= 10 for t in markdown_tables(rest) if t), [list(t[0]) for t in markdown_tables(rest)]


def test_load_runs_keeps_the_shared_stages_without_a_task(tmp_path: Path) -> None:
    frame = load_runs(suite_run(tmp_path, "g", {"rte": SCORES["sst2"] | {}}, shared_kwh=1.0))
    shared = frame[frame["task"].isna()]
    assert list(shared["stage"]) == ["pretrain", "distill-general"]
    assert isinstance(frame, pd.DataFrame)


def test_a_general_student_no_distill_stage_trained_is_named_the_layer_copy(tmp_path: Path) -> None:
    """configs/glue-no-corpus.toml's ablation: its general student was never distilled, so Table 1 must not
    call it a general-distillation student; with a corpus stage the usual name stays."""
    scores = {"teacher": {"accuracy": 0.6, "score": 0.6}, "general_student": {"accuracy": 0.55, "score": 0.55}}
    ablation = load_runs(suite_run(tmp_path / "a", "ablation", {"rte": scores, "mrpc": scores}))
    assert list(glue_table(ablation)["model"])[:2] == ["teacher", UNDISTILLED_LABEL]
    distilled = load_runs(suite_run(tmp_path / "d", "general", {"rte": scores}, shared_kwh=1.0))
    assert list(glue_table(distilled)["model"])[:2] == ["teacher", MODEL_LABELS["general_student"]]
    # the same name in the Seeds section and the retention figure's legend
    over_seeds = pd.concat([ablation.assign(seed=1), ablation.assign(seed=2)], ignore_index=True)
    seeds = seeds_section(over_seeds)
    assert f"| {UNDISTILLED_LABEL} |" in seeds and f"retention: {UNDISTILLED_LABEL}" in seeds
    assert MODEL_LABELS["general_student"] not in seeds
    legends = {run: [t.get_text() for t in draw_retention_vs_energy(frame, title=run).legends[0].get_texts()]
               for run, frame in (("ablation", ablation), ("general", distilled))}
    assert "hollow: teacher layers fine-tuned, no distillation" in legends["ablation"]
    assert "hollow: general-route student" in legends["general"]
