"""General (MLM) + task distillation against task-only distillation, and the figures of the MLM stages.

A run's route is read from its distill records: one with `details.objective = "mlm"` (or "corpus") makes the run's
student a general-distillation student (DistilBERT's recipe: distilled on a corpus, then trained on the
task); otherwise the student was distilled on the task only. Each route's cost is what produced its student
(`costs.student_training_records`): for the general route the teacher's MLM training, the MLM distillation
and the student's task training; for the task-only route the teacher's fine-tuning and the distillation.
"""

from __future__ import annotations

import pandas as pd

from greendistil.report.compare import teacher_student
from greendistil.report.costs import GENERAL_OBJECTIVES, cost_totals, distill_objectives, student_training_records
from greendistil.report.frame import first_value, iter_runs, iter_tasks, iter_units, number, value
from greendistil.report.markdown import NOT_AVAILABLE, code, fmt_count, fmt_number, fmt_percent, fmt_ratio, table
from greendistil.report.provenance import energy_kinds

GENERAL, TASK_ONLY = "general + task", "task only"
MLM_KINDS = ("pretrain", "distill")


def student_route(records: pd.DataFrame) -> str | None:
    """GENERAL, TASK_ONLY, or None for a run that distilled no student."""
    objectives = distill_objectives(records)
    if not objectives:
        return None
    return GENERAL if objectives & GENERAL_OBJECTIVES else TASK_ONLY


def routes_section(frame: pd.DataFrame) -> str:
    """The route comparison and the MLM stages' figures; "" when no run has an MLM stage."""
    units = list(iter_units(frame))
    if not any(student_route(records) == GENERAL for records in units):
        return ""
    parts = ["## General vs task-only distillation",
             "DistilBERT distils its student during pretraining (general distillation: soft targets over the "
             "vocabulary, MLM and hidden-state cosine on a text corpus) and then trains it on the task. The "
             "task-only route distils a fine-tuned teacher on the task's data. Each route's cost is what "
             "produced its student: the general route counts the teacher's MLM-head training, the MLM "
             "distillation and the student's task training; the task-only route counts the teacher's "
             "fine-tuning and the distillation. A teacher fine-tuned only to be evaluated beside a general "
             "student is left out of that route's cost. Energy is marked measured (meas.) or estimated (est.)."]
    for task, records in iter_tasks(frame):
        rows = [_route_row(r) for r in iter_units(records) if student_route(r) is not None]
        if rows:
            parts += [f"### Task `{task}`", table(("run", "route", "stages counted", "student score", "teacher score",
                                                   "retention", "FLOPs", "kWh", "kg CO2eq"), rows, right_align_from=3),
                      _verdict(records)]
    parts += [_mlm_block(frame)]
    return "\n\n".join(p for p in parts if p)


def _route_row(records: pd.DataFrame) -> list[str]:
    comparison, produced = teacher_student(records), student_training_records(records)
    totals = cost_totals(produced)
    return [str(first_value(records, "run_id")), student_route(records) or "",
            " + ".join(str(s) for s in produced["stage"]) or NOT_AVAILABLE, fmt_number(comparison.student.score),
            fmt_number(comparison.teacher.score), fmt_percent(comparison.score_retention), fmt_number(totals.flops),
            fmt_number(totals.energy_kwh) + energy_kinds(produced), fmt_number(totals.co2_kg)]


def _verdict(records: pd.DataFrame) -> str:
    """One line comparing the latest run of each route, when the task has both."""
    latest: dict[str, pd.DataFrame] = {}
    for run in iter_units(records):
        route = student_route(run)
        if route is not None:
            latest[route] = run
    if set(latest) != {GENERAL, TASK_ONLY}:
        missing = TASK_ONLY if GENERAL in latest else GENERAL
        return (f"No {missing.replace(' ', '-')} run of this task to compare with: report it together with one (e.g. a "
                f"`configs/quick.toml` run for the task-only route).")
    general, task_only = (latest[GENERAL], latest[TASK_ONLY])
    scores = [teacher_student(r).student.score for r in (general, task_only)]
    kwh = [cost_totals(student_training_records(r)).energy_kwh for r in (general, task_only)]
    delta = None if None in scores else scores[0] - scores[1]
    ratio = None if None in kwh or not kwh[1] else kwh[0] / kwh[1]
    return (f"{GENERAL} ({first_value(general, 'run_id')}) against {TASK_ONLY} ({first_value(task_only, 'run_id')}): "
            f"student score {fmt_number(scores[0])} vs {fmt_number(scores[1])} (difference {fmt_number(delta)}), "
            f"energy to produce the student {fmt_ratio(ratio)} the task-only route's.")


def _mlm_block(frame: pd.DataFrame) -> str:
    rows = []
    for records in iter_runs(frame):
        for _, row in records[records["kind"].isin(MLM_KINDS)].iterrows():
            if row["kind"] == "distill" and value(row, "details.objective") != "mlm":
                continue
            rows.append(_mlm_row(row))
    if not rows:
        return ""
    headers = ("run", "stage", "model", "MLM head", "held-out MLM loss", "masked-token accuracy", "perplexity",
               "teacher accuracy", "tokens seen")
    return "\n\n".join([
        "### MLM stages",
        "Held-out MLM figures before → after the stage, on the same masked positions of the corpus's held-out "
        "lines (a fixed mask seed), as the records hold them. The teacher's accuracy is the frozen teacher's "
        "on those positions. Tokens seen are the real (unpadded) training tokens.",
        table(headers, rows, right_align_from=4)])


def _mlm_row(row: pd.Series) -> list[str]:
    role = str(value(row, "role") or "")

    def change(metric: str) -> str:
        before = number(row, f"metric.{role}.{metric}_before")
        after = number(row, f"metric.{role}.{metric}_after")
        return f"{fmt_number(before)} → {fmt_number(after)}"

    head = value(row, "details.mlm_head")
    return [str(value(row, "run_id")), str(row["stage"]), role, code(head) if head else NOT_AVAILABLE,
            change("mlm_loss"), change("mlm_accuracy"), change("perplexity"),
            fmt_number(number(row, "metric.teacher.mlm_accuracy")), fmt_count(number(row, "num_tokens"))]
