"""Teacher against student within one run: size, FLOPs per example, score retention, energy to train.

Figures come from the run's records: training stages are every non-evaluate stage of a role (the
teacher's `finetune`, the student's `distill`); scores and inference FLOPs from the `evaluate` record.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from greendistil.report.frame import column_sum, first_value, number, value

EVALUATE_KIND = "evaluate"
INFERENCE_KINDS = (EVALUATE_KIND, "benchmark")  # stages that run models without producing them


@dataclass(frozen=True, kw_only=True)
class RoleFigures:
    """One role's figures in one run; None where the run did not record them."""

    role: str
    num_params: float | None
    score: float | None
    train_stages: tuple[str, ...]
    train_flops: float | None
    train_num_examples: float | None
    train_energy_kwh: float | None
    inference_flops_per_example: float | None

    @property
    def train_flops_per_example(self) -> float | None:
        """Training FLOPs / training examples (over all of the role's training stages)."""
        return _ratio(self.train_flops, self.train_num_examples)


@dataclass(frozen=True, kw_only=True)
class TeacherStudent:
    """The two roles of one run side by side; ratios are student / teacher."""

    run_id: str
    task: str
    teacher: RoleFigures
    student: RoleFigures
    student_own_train_flops: float | None  # distillation FLOPs without the teacher's forward passes
    score_retention: float | None

    @property
    def param_ratio(self) -> float | None:
        return _ratio(self.student.num_params, self.teacher.num_params)

    @property
    def train_flops_per_example_ratio(self) -> float | None:
        return _ratio(self.student.train_flops_per_example, self.teacher.train_flops_per_example)

    @property
    def inference_flops_ratio(self) -> float | None:
        return _ratio(self.student.inference_flops_per_example, self.teacher.inference_flops_per_example)

    @property
    def train_energy_ratio(self) -> float | None:
        return _ratio(self.student.train_energy_kwh, self.teacher.train_energy_kwh)


def teacher_student(records: pd.DataFrame) -> TeacherStudent:
    """Compare teacher and student from one run's records."""
    evaluate = _last_evaluate(records)
    teacher, student = (_role_figures(records, evaluate, role) for role in ("teacher", "student"))
    retention = number(evaluate, "metric.retention.score") if evaluate is not None else None
    if retention is None:
        retention = _ratio(student.score, teacher.score)
    student_training = records[(records["role"] == "student") & ~records["kind"].isin(INFERENCE_KINDS)]
    return TeacherStudent(
        run_id=str(first_value(records, "run_id")), task=str(first_value(records, "task")),
        teacher=teacher, student=student, score_retention=retention,
        student_own_train_flops=column_sum(student_training, "flops_by_component.student_train"),
    )


def teacher_training_records(records: pd.DataFrame) -> pd.DataFrame:
    """The stages that produced the teacher: its training stages, less an MLM-head training (`train =
    "head"`: the encoder and the classifier are untouched), which only a general distillation uses."""
    teacher = records[(records["role"] == "teacher") & ~records["kind"].isin(INFERENCE_KINDS)]
    head_only = (teacher["kind"] == "pretrain") & (teacher.get("details.train") == "head")
    return teacher[~head_only]


def role_figures(records: pd.DataFrame, role: str) -> RoleFigures:
    """One role's figures from one run's records (a suite: one task's records with its shared stages)."""
    return _role_figures(records, _last_evaluate(records), role)


def general_student_figures(records: pd.DataFrame) -> RoleFigures | None:
    """A suite task's general student (the general route's), or None where the records have none."""
    return role_figures(records, "general_student") if (records["role"] == "general_student").any() else None


def _role_figures(records: pd.DataFrame, evaluate: pd.Series | None, role: str) -> RoleFigures:
    training = teacher_training_records(records) if role == "teacher" else \
        records[(records["role"] == role) & ~records["kind"].isin(INFERENCE_KINDS)]
    return RoleFigures(
        role=role, num_params=_num_params(records, evaluate, role),
        score=number(evaluate, f"metric.{role}.score") if evaluate is not None else None,
        train_stages=tuple(str(s) for s in training["stage"]),
        train_flops=column_sum(training, "flops"), train_num_examples=column_sum(training, "num_examples"),
        train_energy_kwh=column_sum(training, "energy_kwh"),
        inference_flops_per_example=_inference_flops_per_example(evaluate, role),
    )


def _num_params(records: pd.DataFrame, evaluate: pd.Series | None, role: str) -> float | None:
    """Evaluate's details, else the distill record's details, else the role's own training record."""
    if evaluate is not None and number(evaluate, f"details.{role}.num_params") is not None:
        return number(evaluate, f"details.{role}.num_params")
    from_details = first_value(records, f"details.{role}_num_params")
    if from_details is not None:
        return float(from_details)
    own = records[records["role"] == role]
    found = first_value(own, "num_params")
    return None if found is None else float(found)


def _inference_flops_per_example(evaluate: pd.Series | None, role: str) -> float | None:
    """The role's forward FLOPs in evaluate / the examples it saw (each evaluated role sees the same split)."""
    if evaluate is None:
        return None
    roles = str(value(evaluate, "role") or "").split("+")
    examples = number(evaluate, "num_examples")
    if role not in roles or not examples:
        return None
    return _ratio(number(evaluate, f"flops_by_component.{role}_forward"), examples / len(roles))


def _last_evaluate(records: pd.DataFrame) -> pd.Series | None:
    """The last evaluate record that holds scores (a later failed attempt holds none)."""
    evaluates = records[records["kind"] == EVALUATE_KIND]
    scored = [row for _, row in evaluates.iterrows()
              if any(value(row, f"metric.{r}.score") is not None for r in ("teacher", "student"))]
    if scored:
        return scored[-1]
    return evaluates.iloc[-1] if len(evaluates) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
