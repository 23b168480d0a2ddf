"""The report's route comparison from records with known numbers: what each route's student cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from greendistil.report import write_report
from greendistil.report.costs import general_route_users, model_points, student_training_records
from greendistil.report.frame import iter_runs, iter_tasks, load_report_frame
from greendistil.report.routes import GENERAL, TASK_ONLY, routes_section, student_route

from builders import full_run, stage_record, suite_run, write_run


def general_run(root: Path, run_id: str = "general", *, task_distill: bool = False) -> Path:
    """pretrain 0.2 kWh, distill(mlm) 0.4, finetune-student 0.1, finetune-teacher 1.0, evaluate 0.1."""
    def record(stage: str, kind: str, role: str, kwh: float, **extra):
        return stage_record(run_id, stage, kind, role, cpu=kwh / 2, gpu=None, ram=kwh / 2, flops=1e12 * kwh,
                            num_examples=100, **extra)

    metrics = {"teacher.score": 0.9, "student.score": 0.8, "retention.score": 0.8 / 0.9}
    records = [
        record("pretrain", "pretrain", "teacher", 0.2, num_tokens=5000,
               metrics={"teacher.mlm_accuracy_before": 0.0, "teacher.mlm_accuracy_after": 0.31,
                        "teacher.mlm_loss_before": 10.4, "teacher.mlm_loss_after": 4.2},
               details={"train": "head", "mlm_head": "trained in stage 'pretrain': head only"}),
        record("distill", "distill", "student", 0.4, details={"objective": "mlm", "mlm_head": "distilled"},
               metrics={"teacher.mlm_accuracy": 0.31, "student.mlm_accuracy_before": 0.2,
                        "student.mlm_accuracy_after": 0.25}),
        record("finetune-student", "finetune", "student", 0.1),
        record("finetune-teacher", "finetune", "teacher", 1.0),
    ]
    if task_distill:
        records.append(record("distill-task", "distill", "student", 0.3, details={"objective": "task"}))
    records.append(record("evaluate", "evaluate", "teacher+student", 0.1, metrics=metrics))
    return write_run(root, run_id, "sst2", records)


def runs_of(path: Path):
    return {str(r["run_id"].iloc[0]): r for r in iter_runs(load_report_frame(path))}


def test_the_general_route_leaves_out_the_teacher_finetune_that_served_evaluation(tmp_path: Path) -> None:
    general_run(tmp_path)
    full_run(tmp_path, "task")
    runs = runs_of(tmp_path)
    assert student_route(runs["general"]) == GENERAL and student_route(runs["task"]) == TASK_ONLY
    assert list(student_training_records(runs["general"])["stage"]) == ["pretrain", "distill", "finetune-student"]
    assert list(student_training_records(runs["task"])["stage"]) == ["finetune", "distill"]
    student = [p for p in model_points(load_report_frame(tmp_path)) if p.run_id == "general" and p.role == "student"]
    assert student[0].energy_kwh == pytest.approx(0.2 + 0.4 + 0.1)


def test_a_task_distillation_after_general_distillation_counts_the_teacher_finetune(tmp_path: Path) -> None:
    general_run(tmp_path, task_distill=True)
    stages = list(student_training_records(runs_of(tmp_path)["general"])["stage"])
    assert stages == ["pretrain", "distill", "finetune-student", "finetune-teacher", "distill-task"]


def test_routes_section_by_hand(tmp_path: Path) -> None:
    general_run(tmp_path)
    full_run(tmp_path, "task")  # finetune 1.0 + distill 0.6 kWh, student 0.87
    section = routes_section(load_report_frame(tmp_path))
    # CO2 = 0.7 kWh x PUE 1.5 x 400 g/kWh
    assert "| general | general + task | pretrain + distill + finetune-student | 0.8 | 0.9 | 88.9% | 7.00e11 | " \
           "0.7 (est.) | 0.42 |" in section
    assert "| task | task only | finetune + distill | 0.87 | 0.9 | 96.7% |" in section
    assert "student score 0.8 vs 0.87 (difference -0.07), energy to produce the student 0.438× the task-only" \
           in section  # 0.7 / 1.6 kWh
    assert "| general | pretrain | teacher | `trained in stage 'pretrain': head only` | 10.4 → 4.2 | 0 → 0.31 |" \
           in section
    assert "| n/a → n/a | n/a | 5,000 |" in section  # the pretrain row: no perplexity recorded, no frozen teacher
    assert "| general | distill | student | `distilled` | n/a → n/a | 0.2 → 0.25 | n/a → n/a | 0.31 |" in section


def test_no_section_without_general_distillation(tmp_path: Path) -> None:
    full_run(tmp_path, "task")
    assert routes_section(load_report_frame(tmp_path)) == ""
    report = write_report([tmp_path], tmp_path / "report").read_text(encoding="utf-8")
    assert "General vs task-only" not in report


def test_report_of_both_routes(tmp_path: Path) -> None:
    general_run(tmp_path / "runs")
    full_run(tmp_path / "runs", "task")
    report = write_report([tmp_path / "runs"], tmp_path / "report").read_text(encoding="utf-8")
    assert "## General vs task-only distillation" in report and "### MLM stages" in report
    assert "**to produce the student** (pretrain + distill + finetune-student)" in report


def test_a_suites_general_student_is_a_model_point_with_the_shared_stages_amortized(tmp_path: Path) -> None:
    scores = {"teacher": {"score": 0.9}, "student": {"score": 0.85}, "general_student": {"score": 0.8}}
    suite_run(tmp_path, "suite", {"rte": scores, "mrpc": scores}, shared_kwh=2.0)
    frame = load_report_frame(tmp_path)
    points = {(p.task, p.role): p for p in model_points(frame)}
    general = points[("rte", "general_student")]
    # its finetune-general (0.2 kWh) + the shared pretrain and distill-general (2.0 kWh) over the 2 tasks
    assert general.energy_kwh == pytest.approx(0.2 + 2.0 / 2)
    assert general.flops == pytest.approx((0.2 + 2.0 / 2) * 1e15)
    assert general.score == pytest.approx(0.8)
    assert general.inference_flops_per_example == pytest.approx(5e11 / (100 / 3))
    assert points[("rte", "student")].energy_kwh == pytest.approx(1.0 + 0.6)  # no shared stage
    # one task's records with the shared stages (as the report reads them) need the run's number of users
    rte = [records for task, records in iter_tasks(frame) if task == "rte"][0]
    alone = {p.role: p for p in model_points(rte)}
    assert alone["general_student"].energy_kwh == pytest.approx(0.2 + 2.0)
    told = {p.role: p for p in model_points(rte, shared_users=general_route_users(frame))}
    assert told["general_student"].energy_kwh == pytest.approx(0.2 + 2.0 / 2)


def test_runs_without_a_general_student_give_two_points_per_task(tmp_path: Path) -> None:
    full_run(tmp_path, "task")
    assert [p.role for p in model_points(load_report_frame(tmp_path))] == ["teacher", "student"]


def test_a_general_student_without_a_corpus_stage_costs_its_fine_tuning(tmp_path: Path) -> None:
    """The no-corpus ablation (configs/glue-no-corpus.toml): nothing shared to amortize."""
    scores = {"teacher": {"score": 0.9}, "general_student": {"score": 0.7}}
    suite_run(tmp_path, "ablation", {"rte": scores, "mrpc": scores})
    points = {(p.task, p.role): p for p in model_points(load_report_frame(tmp_path))}
    assert points[("mrpc", "general_student")].energy_kwh == pytest.approx(0.2)
    assert points[("mrpc", "general_student")].flops == pytest.approx(0.2e15)
