"""The report's first sections: DistilBERT's Table 1 for the runs, and what each of its cells cost.

Table 1 is `glue.glue_table` in the paper's form. The cost tables split each run's records by task and by
the model they produced: a task's teacher row is its fine-tuning, the student row its distillation, the
general student row its task training, and the evaluation row its evaluate (and benchmark) windows. A suite's
shared stages (the corpus stages of the general route) ran once: they are shown once, and amortized over
the tasks that used them. The last row is the run's total, "the cost of the study": every stage once.
"""

from __future__ import annotations

import pandas as pd

from greendistil.report.compare import INFERENCE_KINDS
from greendistil.report.costs import cost_totals, general_route_users, student_training_records
from greendistil.report.frame import first_value, iter_runs, task_order
from greendistil.report.glue import MODEL_ROLES, NOT_RUN, glue_table, model_label, task_label
from greendistil.report.markdown import fmt_number, table
from greendistil.report.reference import DISTILBERT_GLUE
from greendistil.report.tables import component_cells, flops_cell, run_heading

_COST_HEADERS = ("task", "model", "stages", "duration (s)", "FLOPs", "CPU kWh", "GPU kWh", "RAM kWh", "total kWh",
                 "kg CO2eq")


def table1_section(frame: pd.DataFrame) -> str:
    """'## Table 1': the dev scores ×100 of every model, the macro score and the student's retention."""
    scores = glue_table(frame, form="paper")
    label = scores.attrs["macro_label"]
    headers = list(scores.columns)
    rows = [[row["run"], row["model"], *[row[h] for h in headers[2:]]] for _, row in scores.iterrows()]
    return "\n\n".join([
        "## Table 1: GLUE dev scores",
        "DistilBERT's Table 1 (Sanh et al. 2019) for the models of these runs: each task's dev score ×100 in "
        "the GLUE papers' form (CoLA: Matthews correlation; MRPC and QQP: F1/accuracy; STS-B: Pearson/"
        "Spearman; MNLI: matched/mismatched accuracy; accuracy otherwise). A two-metric task enters the macro "
        "score as the mean of its two figures, as on the GLUE leaderboard, so each task counts once. The macro "
        f"column is the {label}; it is called the GLUE score only when all nine tasks are present. "
        f"{NOT_RUN} marks a task that was not run: it is never counted as 0. Retention is the student's macro "
        "score ÷ its run's teacher's over the tasks both were evaluated on. A run over several seeds "
        "(`run.seeds`) shows each metric's median over its seeds, as the paper gives the median of 5 runs; "
        "the spread is in the Seeds section.",
        table(headers, rows, right_align_from=2),
        f"The last two rows are published figures of other models ({DISTILBERT_GLUE.citation}), not "
        "measurements of this package: BERT-base (110M parameters) and DistilBERT (66M), trained on far more "
        "data and compute than these runs. Their macro is taken over the same tasks as the runs' (the paper's "
        "own GLUE scores are 79.5 and 77.0; the mean of BERT-base's nine figures is 79.7).",
    ])


def suite_cost_section(frame: pd.DataFrame) -> str:
    """'## What each cell cost': per run, per task and model, then the totals per model, the shared stages
    and the whole run; with shared stages, each route's cost per task, amortized and not."""
    parts = ["## What each cell cost",
             "Per task, the stages that produced each model of Table 1 and the evaluation that scored them; "
             "energy marked measured (meas.) or estimated (est.) as in the cost table below, FLOPs counted. "
             "The student's distillation runs the teacher's forward pass, so its row includes that teacher "
             "inference, but not the teacher's own fine-tuning: the totals say what producing the students "
             "took, teacher included. A multi-seed run's rows sum every seed's stages: the cell cost all of them."]
    for records in iter_runs(frame):
        tasks = task_order(records["task"])
        rows = [row for task in tasks for row in _task_rows(records, task)]
        shared = records[records["task"].isna()]
        parts += [run_heading(records), table(_COST_HEADERS, rows, right_align_from=3),
                  table(_COST_HEADERS, _total_rows(records, shared), right_align_from=3)]
        if len(shared):
            parts.append(_routes_table(records, tasks, shared))
    return "\n\n".join(parts)


def _task_rows(records: pd.DataFrame, task: str) -> list[list[str]]:
    own = records[records["task"] == task]
    training = own[~own["kind"].isin(INFERENCE_KINDS)]
    rows = [_cost_row(task_label(task), model_label(records, role), training[training["role"] == role])
            for role in MODEL_ROLES if (training["role"] == role).any()]
    inference = own[own["kind"].isin(INFERENCE_KINDS)]
    if len(inference):
        rows.append(_cost_row(task_label(task), "evaluation", inference))
    return rows


def _total_rows(records: pd.DataFrame, shared: pd.DataFrame) -> list[list[str]]:
    per_task = records[records["task"].notna()]
    training = per_task[~per_task["kind"].isin(INFERENCE_KINDS)]
    rows = [_cost_row("all tasks", f"**{model_label(records, role)}**", training[training["role"] == role])
            for role in MODEL_ROLES if (training["role"] == role).any()]
    inference = per_task[per_task["kind"].isin(INFERENCE_KINDS)]
    if len(inference):
        rows.append(_cost_row("all tasks", "**evaluation**", inference))
    if len(shared):
        rows.append(_cost_row("shared", "**shared stages** (once for the suite)", shared))
    students = student_training_records(records)
    if (students["role"] == "student").any():
        rows.append(_cost_row("all tasks", "**to produce the students** (the teacher's training included)", students))
    rows.append(_cost_row("run", "**the cost of the study** (every stage)", records))
    return rows


def _routes_table(records: pd.DataFrame, tasks: list[str], shared: pd.DataFrame) -> str:
    """Per task, what each route's student cost: the task route (the teacher's fine-tuning and the
    distillation), the general route with the shared stages amortized over the tasks, and without."""
    num_users = general_route_users(records).get(str(first_value(records, "run_dir")), 0)
    shared_kwh = cost_totals(shared).energy_kwh
    rows = []
    for task in tasks:
        own = records[records["task"] == task]
        task_route = student_training_records(own)
        general = own[(own["role"] == "general_student") & ~own["kind"].isin(INFERENCE_KINDS)]
        general_kwh = cost_totals(general).energy_kwh if len(general) else None
        amortized = None if general_kwh is None or shared_kwh is None or not num_users else \
            general_kwh + shared_kwh / num_users
        whole = None if general_kwh is None or shared_kwh is None else general_kwh + shared_kwh
        rows.append([task_label(task), fmt_number(cost_totals(task_route).energy_kwh if len(task_route) else None),
                     fmt_number(amortized), fmt_number(whole)])
    headers = ("task", "task route kWh (teacher + distillation)",
               f"general route kWh (shared ÷ {num_users} tasks)", "general route kWh (shared in full)")
    per_task = None if not num_users or shared_kwh is None else shared_kwh / num_users
    note = (f"The shared stages cost {fmt_number(shared_kwh)} kWh once; amortized over the {num_users} task(s) "
            f"whose general student used them, {fmt_number(per_task)} kWh per task.")
    return "\n\n".join([note, table(headers, rows, right_align_from=1)])


def _cost_row(task: str, model: str, records: pd.DataFrame) -> list[str]:
    totals = cost_totals(records)
    stages = " + ".join(dict.fromkeys(str(s).split(".")[0] for s in records["stage"]))
    return [task, model, stages, fmt_number(totals.duration_s), flops_cell(records), *component_cells(records),
            fmt_number(totals.co2_kg)]

