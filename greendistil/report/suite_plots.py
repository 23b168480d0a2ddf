"""The figures of a suite run: per task, what the student kept against what it cost; and the suite's models
on one score-vs-energy plane with their Pareto front.

Each `draw_*` returns the Figure (the legibility test draws them), each `plot_*` writes it as a PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from greendistil.report.compare import INFERENCE_KINDS, teacher_training_records
from greendistil.report.costs import cost_totals, general_route_users, pareto_optimal, student_training_records
from greendistil.report.frame import first_value, number, task_order
from greendistil.report.glue import is_undistilled, measured_tasks, model_label, model_rows, task_label
from greendistil.report.plots import DPI, energy_unit, save_figure

RETENTION_LINE = 0.969  # DistilBERT's: 77.0 / 79.5
MARKERS = "osD^vP*Xhp"


@dataclass(frozen=True, kw_only=True)
class TaskPoint:
    """One task's student against its teacher: retention, and the ratios of what each cost."""

    task: str
    role: str
    retention: float | None
    # the student's training kWh (the general route: with the shared stages amortized) ÷ the teacher's
    train_energy_ratio: float | None
    inference_flops_ratio: float | None  # forward FLOPs per dev example, student ÷ teacher


def task_points(records: pd.DataFrame) -> list[TaskPoint]:
    """A point per (task, student role) of one run that has a retention."""
    points = []
    shared = records[records["task"].isna() & ~records["kind"].isin(INFERENCE_KINDS)]
    users = general_route_users(records).get(str(first_value(records, "run_dir")), 0)
    shared_kwh = cost_totals(shared).energy_kwh if len(shared) and users else None
    for task in task_order(records["task"]):
        own = records[records["task"] == task]
        evaluates = own[own["kind"] == "evaluate"]
        if evaluates.empty:
            continue
        evaluate = evaluates.iloc[-1]
        training = own[~own["kind"].isin(INFERENCE_KINDS)]
        teacher_kwh = cost_totals(teacher_training_records(own)).energy_kwh
        for role in ("student", "general_student"):
            key = "retention.score" if role == "student" else f"retention.{role}.score"
            kept = number(evaluate, f"metric.{key}")
            if kept is None:
                continue
            own_kwh = cost_totals(training[training["role"] == role]).energy_kwh
            if role == "general_student" and own_kwh is not None and shared_kwh is not None:
                own_kwh += shared_kwh / users  # the general route's shared stages, amortized over their tasks
            points.append(TaskPoint(task=task, role=role, retention=kept,
                                    train_energy_ratio=_ratio(own_kwh, teacher_kwh),
                                    inference_flops_ratio=_ratio(number(evaluate, f"flops_by_component.{role}_forward"),
                                                                 number(evaluate, "flops_by_component.teacher_forward"))))
    return points


def draw_retention_vs_energy(records: pd.DataFrame, *, title: str) -> Figure:
    """Per task: the student's retention of the teacher's dev score against its training energy (left) and
    its inference FLOPs (right), each relative to the teacher's. Left of 1×: cheaper than the teacher."""
    points = task_points(records)
    fig = Figure(figsize=(9.0, 5.2), dpi=DPI)
    axes = fig.subplots(1, 2, sharey=True)
    tasks = list(dict.fromkeys(p.task for p in points))
    colors = {t: matplotlib.colormaps["tab10"](i % 10) for i, t in enumerate(tasks)}
    markers = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(tasks)}
    panels = ((axes[0], "train_energy_ratio", "training energy, student ÷ teacher (×)"),
              (axes[1], "inference_flops_ratio", "inference FLOPs per example, student ÷ teacher (×)"))
    for ax, attribute, label in panels:
        for p in points:
            x = getattr(p, attribute)
            if x is None or p.retention is None:
                continue
            filled = p.role == "student"  # hollow: the general student
            ax.scatter(x, 100 * p.retention, marker=markers[p.task], s=70, color=colors[p.task] if filled else "none",
                       edgecolors=colors[p.task], linewidths=1.5, zorder=3)
        ax.axhline(100 * RETENTION_LINE, color="grey", ls=":", lw=1)
        ax.axvline(1.0, color="grey", ls="--", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(0.15)
    axes[0].set_ylabel("retention of the teacher's dev score (%)")
    handles = [Line2D([], [], marker=markers[t], ls="", color=colors[t], label=task_label(t)) for t in tasks]
    handles.append(Line2D([], [], color="grey", ls=":", label="DistilBERT's 96.9% (published)"))
    if any(p.role == "general_student" for p in points):
        hollow = ("teacher layers fine-tuned, no distillation" if is_undistilled(records, "general_student")
                  else "general-route student")
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", color="black",
                              label=f"hollow: {hollow}"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8)
    fig.suptitle(f"What the student kept, and what it cost — {title}")
    rows_of_legend = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, 0.05 + 0.045 * rows_of_legend, 1, 1))
    return fig


def plot_retention_vs_energy(records: pd.DataFrame, path: Path, *, title: str) -> Path:
    return save_figure(draw_retention_vs_energy(records, title=title), path)


@dataclass(frozen=True, kw_only=True)
class SuitePoint:
    """A model of the suite: its macro score and the energy (and FLOPs) that produced it across the tasks."""

    label: str
    macro: float | None
    energy_kwh: float | None
    flops: float | None


def suite_points(records: pd.DataFrame) -> list[SuitePoint]:
    """The run's teacher, student and general student: macro over the run's tasks, and what producing each
    took over all tasks (a student: the teachers' fine-tuning too; the general student: the shared stages)."""
    rows = [r for r in model_rows(records) if r.published is None]
    tasks = measured_tasks(rows)
    scopes = {"teacher": teacher_training_records(records),
              "student": student_training_records(records),
              "general_student": student_training_records(records, "general_student")}
    points = []
    for row in rows:
        cost = cost_totals(scopes[row.model])
        points.append(SuitePoint(label=model_label(records, row.model), macro=row.macro(tasks),
                                 energy_kwh=cost.energy_kwh, flops=cost.flops))
    return points


def draw_suite_pareto(records: pd.DataFrame, *, title: str) -> Figure:
    """Macro score against the energy and the FLOPs that produced each model, the Pareto front ringed."""
    points = [p for p in suite_points(records) if p.macro is not None]
    fig = Figure(figsize=(9.0, 5.0), dpi=DPI)
    axes = fig.subplots(1, 2, sharey=True)
    factor, unit = energy_unit(max((p.energy_kwh or 0.0 for p in points), default=0.0))
    colors = {p.label: matplotlib.colormaps["Set1"](i % 9) for i, p in enumerate(points)}
    for ax, attribute, scale, label in ((axes[0], "energy_kwh", factor, f"energy to produce ({unit})"),
                                        (axes[1], "flops", 1.0, "FLOPs to produce (counted)")):
        known = [p for p in points if getattr(p, attribute) is not None]
        costs = [getattr(p, attribute) * scale for p in known]
        for p, cost in zip(known, costs):
            ax.scatter(cost, p.macro, s=80, color=colors[p.label], edgecolor="black", zorder=3)
        front = sorted((c, p.macro) for c, p, f in zip(costs, known, pareto_optimal(costs, [p.macro for p in known]))
                       if f)
        if front:
            ax.step([c for c, _ in front], [m for _, m in front], where="post", ls="--", color="black", zorder=2)
            ax.scatter([c for c, _ in front], [m for _, m in front], s=220, facecolors="none", edgecolors="black")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    tasks = measured_tasks([r for r in model_rows(records) if r.published is None])
    axes[0].set_ylabel(f"macro dev score over {len(tasks)} task(s)")
    handles = [Line2D([], [], marker="o", ls="", color=colors[p.label], markeredgecolor="black", label=p.label)
               for p in points]
    handles.append(Line2D([], [], ls="--", marker="o", markerfacecolor="none", markersize=10, color="black",
                          label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8)
    fig.suptitle(f"Macro score vs cost — {title}")
    fig.tight_layout(rect=(0, 0.05 + 0.045 * -(-len(handles) // 3), 1, 1))
    return fig


def plot_suite_pareto(records: pd.DataFrame, path: Path, *, title: str) -> Path:
    return save_figure(draw_suite_pareto(records, title=title), path)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator

