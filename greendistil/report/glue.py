"""DistilBERT's Table 1 from a run log: each model's dev score on every GLUE task it was evaluated on, the
macro score, and the student's retention of the teacher's macro score, beside the paper's published rows.

A task's score is the unweighted mean of its official metrics, the GLUE leaderboard's rule: MRPC and QQP the
mean of F1 and accuracy, STS-B of Pearson and Spearman correlation, MNLI of its matched and mismatched
accuracy, CoLA its Matthews correlation, the others their accuracy. The cells show both metrics of a
two-metric task ("F1/accuracy"), as the GLUE papers print them; the macro score averages the one-number task
scores, each task counting once. It is called the GLUE score only when all nine tasks are present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from greendistil.data.tasks import GLUE_ORDER, get_task
from greendistil.report.frame import number, value
from greendistil.report.objectives import role_objective, uses_new_objectives
from greendistil.report.reference import PUBLISHED_GLUE_ROWS, PublishedGlueRow

MODEL_ROLES = ("teacher", "student", "general_student")
MODEL_LABELS = {"teacher": "teacher", "student": "student (task distillation)",
                "general_student": "student (general distillation, then the task)"}
UNDISTILLED_LABEL = "student (teacher layers fine-tuned on the task, no distillation)"
NOT_RUN = "—"
# The metrics a cell shows, in the paper's order, as `<role>.<key>` metric keys of the evaluate record.
_CELL_METRICS = {"mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"), "stsb": ("pearson", "spearman"),
                 "mnli": ("dev_matched.accuracy", "dev_mismatched.accuracy"), "cola": ("mcc",)}


def is_undistilled(records: pd.DataFrame, role: str) -> bool:
    """A general student that no distill stage of `records` (one run) trained: the layer copy fine-tuned on
    each task (configs/glue-no-corpus.toml, an ablation)."""
    return role == "general_student" and not ((records["kind"] == "distill") & (records["role"] == role)).any()


def model_label(records: pd.DataFrame, role: str) -> str:
    """The role's name in the report's tables (see `is_undistilled`)."""
    return UNDISTILLED_LABEL if is_undistilled(records, role) else MODEL_LABELS[role]


def task_label(task: str) -> str:
    """'SST-2', 'CoLA', ...: the name GLUE's files and papers use."""
    return get_task(task).dir_name


@dataclass(frozen=True, kw_only=True)
class ModelRow:
    """One row of Table 1: a model of a run (or a published one) and its scores ×100 per task."""

    run_id: str
    model: str  # the role, or the published model's name
    label: str
    task_scores: dict[str, float] = field(default_factory=dict)  # task -> task score ×100
    cells: dict[str, str] = field(default_factory=dict)  # task -> the paper's form, e.g. "88.6/84.0"
    published: PublishedGlueRow | None = None

    def macro(self, tasks: tuple[str, ...]) -> float | None:
        """The mean task score over `tasks`; None unless the row has every one of them."""
        if not tasks or any(t not in self.task_scores for t in tasks):
            return None
        if self.published is not None and set(tasks) == set(GLUE_ORDER):
            return self.published.score  # the paper's own GLUE score (see reference.py on BERT-base's)
        return float(np.mean([self.task_scores[t] for t in tasks]))


def macro_label(tasks: tuple[str, ...]) -> str:
    """'GLUE score' for all nine tasks, else 'macro over N of 9 tasks (names)'."""
    ordered = [t for t in GLUE_ORDER if t in tasks]
    if len(ordered) == len(GLUE_ORDER):
        return "GLUE score"
    return f"macro over {len(ordered)} of {len(GLUE_ORDER)} tasks ({', '.join(task_label(t) for t in ordered)})"


def model_rows(frame: pd.DataFrame) -> list[ModelRow]:
    """Each run's teacher, student and general student (those evaluated on some task), runs in the order
    they started, then the paper's rows."""
    rows = []
    evaluates = frame[frame["kind"] == "evaluate"] if "kind" in frame else frame.iloc[0:0]
    # When any run used the new objectives, every student row names its objective: the routes are compared
    # on this one table. Otherwise the labels are as they always were.
    named = uses_new_objectives(frame)
    for run_dir in _runs_in_order(evaluates):
        records = evaluates[evaluates["run_dir"] == run_dir]
        run_id, run = str(value(records.iloc[0], "run_id")), frame[frame["run_dir"] == run_dir]
        for role in MODEL_ROLES:
            scores, cells, num_seeds = _role_scores(records, role)
            if scores:
                objective = role_objective(run, role) if named else None
                label = model_label(run, role) + (f" [{objective}]" if objective else "") + (
                    f", median of {num_seeds} seeds" if num_seeds > 1 else "")
                rows.append(ModelRow(run_id=run_id, model=role, label=label, task_scores=scores, cells=cells))
    for paper in PUBLISHED_GLUE_ROWS:
        rows.append(ModelRow(run_id="published", model=paper.model, label=f"{paper.model} (published)",
                             task_scores=dict(paper.task_scores), cells={t: f"{s:.1f}" for t, s in
                                                                         paper.task_scores.items()},
                             published=paper))
    return rows


def measured_tasks(rows: list[ModelRow]) -> tuple[str, ...]:
    """The tasks any measured row has, in GLUE order (what the macro is taken over)."""
    found = {t for row in rows if row.published is None for t in row.task_scores}
    return tuple(t for t in GLUE_ORDER if t in found)


def retention(rows: list[ModelRow], row: ModelRow) -> float | None:
    """A student's macro ÷ its run's teacher's, over the tasks both have (DistilBERT ÷ BERT-base for the
    paper's row); None for a teacher."""
    if row.model in ("teacher", "BERT-base"):
        return None
    teacher_name = "BERT-base" if row.published is not None else "teacher"
    teacher = next((r for r in rows if r.run_id == row.run_id and r.model == teacher_name), None)
    if teacher is None:
        return None
    if row.published is not None:
        common = measured_tasks(rows) or GLUE_ORDER
    else:
        common = tuple(t for t in GLUE_ORDER if t in row.task_scores and t in teacher.task_scores)
    mine, theirs = row.macro(common), teacher.macro(common)
    return None if mine is None or not theirs else mine / theirs


def glue_table(frame: pd.DataFrame, *, form: Literal["score", "paper"] = "score") -> pd.DataFrame:
    """Table 1 as a DataFrame, from a `load_runs` frame: one row per model (run, model, label), a macro
    column, one column per GLUE task in GLUE order and the retention of the teacher's macro score.

    `form="score"`: task scores ×100 as numbers (NaN: not run); `"paper"`: the cells as the report prints
    them ("88.6/84.0" for a two-metric task, "—" for a task not run). The macro is over the tasks the runs
    measured; its column is named by `macro_label` (also in `table.attrs["macro_label"]`).
    """
    rows = model_rows(frame)
    tasks = measured_tasks(rows) or GLUE_ORDER
    label = macro_label(tasks)
    records = []
    for row in rows:
        macro, kept = row.macro(tasks), retention(rows, row)
        record = {"run": row.run_id, "model": row.label}
        if form == "paper":
            record[label] = _macro_cell(row, tasks)
            record.update({task_label(t): row.cells.get(t, NOT_RUN) for t in GLUE_ORDER})
            record["retention"] = NOT_RUN if kept is None else f"{100 * kept:.1f}%"
        else:
            record[label] = np.nan if macro is None else macro
            record.update({task_label(t): row.task_scores.get(t, np.nan) for t in GLUE_ORDER})
            record["retention"] = np.nan if kept is None else kept
        records.append(record)
    table = pd.DataFrame(records)
    table.attrs["macro_label"] = label
    return table


def _macro_cell(row: ModelRow, tasks: tuple[str, ...]) -> str:
    macro = row.macro(tasks)
    if macro is not None:
        return f"{macro:.1f}"
    own = tuple(t for t in tasks if t in row.task_scores)
    if not own:
        return NOT_RUN
    partial = float(np.mean([row.task_scores[t] for t in own]))
    return f"{partial:.1f} (over {len(own)} of them)"


def _role_scores(records: pd.DataFrame, role: str) -> tuple[dict[str, float], dict[str, str], int]:
    """Per task, the role's task score ×100 and its cell, from the task's last evaluate record that scored it;
    in a multi-seed run each metric's median over the seeds (each seed's last record), as DistilBERT's
    Table 1 gives the median of 5 runs. Also the most seeds any task's cell is the median of."""
    scores, cells, most_seeds = {}, {}, 1
    latest: dict[tuple[str, Any], pd.Series] = {}
    for _, row in records.iterrows():
        task, score = value(row, "task"), number(row, f"metric.{role}.score")
        if task is not None and score is not None and task in GLUE_ORDER:
            latest[(str(task), value(row, "seed"))] = row
    for task in dict.fromkeys(task for task, _ in latest):
        rows = pd.DataFrame([row for (t, _), row in latest.items() if t == task])
        columns = [c for c in rows.columns if str(c).startswith(f"metric.{role}.")]
        median = rows[columns].apply(pd.to_numeric, errors="coerce").median()
        score = float(median[f"metric.{role}.score"])
        scores[task], cells[task] = 100.0 * score, _cell(task, median, role, score)
        most_seeds = max(most_seeds, len(rows))
    return scores, cells, most_seeds


def _cell(task: str, row: pd.Series, role: str, score: float) -> str:
    found = [number(row, f"metric.{role}.{key}") for key in _CELL_METRICS.get(task, ("accuracy",))]
    if any(f is None for f in found):
        return f"{100 * score:.1f}"
    return "/".join(f"{100 * f:.1f}" for f in found)


def _runs_in_order(records: pd.DataFrame) -> list[str]:
    if records.empty:
        return []
    started = records.groupby("run_dir", sort=False)["started_at"].min() if "started_at" in records else None
    if started is None:
        return list(dict.fromkeys(records["run_dir"]))
    return list(started.sort_values(kind="stable").index)
