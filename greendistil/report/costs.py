"""What runs cost in total, and which models are worth their cost (the Pareto front of score vs cost).

A model's cost is the cost of producing it: the teacher's training stages for the teacher; for the student,
every training stage of the run, because distillation needs the trained teacher (and runs its forward
passes). One exception: after general (MLM) distillation, a teacher fine-tuned on the task that no task
distillation used was trained only to be evaluated beside the student, so it is not in the student's cost.
Failed and interrupted stages count: their energy was spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from greendistil.report.compare import INFERENCE_KINDS, role_figures, teacher_student, teacher_training_records
from greendistil.report.frame import column_sum, first_value, iter_units


@dataclass(frozen=True, kw_only=True)
class CostTotals:
    """Sums over a set of stage records; None where no record measured the figure (never 0)."""

    num_stages: int
    num_not_ok: int
    duration_s: float | None
    flops: float | None
    cpu_energy_kwh: float | None
    gpu_energy_kwh: float | None
    ram_energy_kwh: float | None
    energy_kwh: float | None
    facility_energy_kwh: float | None  # energy x PUE, per record
    co2_kg: float | None


def cost_totals(records: pd.DataFrame) -> CostTotals:
    """Sum the cost columns of `records` (any set of stage records, of one run or many)."""
    facility = pd.to_numeric(records["energy_kwh"], errors="coerce") * pd.to_numeric(records["pue"],
                                                                                     errors="coerce")
    facility_total = facility.sum(min_count=1)
    return CostTotals(
        num_stages=len(records), num_not_ok=int((records["status"] != "ok").sum()),
        duration_s=column_sum(records, "duration_s"), flops=column_sum(records, "flops"),
        cpu_energy_kwh=column_sum(records, "cpu_energy_kwh"), gpu_energy_kwh=column_sum(records, "gpu_energy_kwh"),
        ram_energy_kwh=column_sum(records, "ram_energy_kwh"), energy_kwh=column_sum(records, "energy_kwh"),
        facility_energy_kwh=None if pd.isna(facility_total) else float(facility_total),
        co2_kg=column_sum(records, "co2_kg"),
    )


def training_records(records: pd.DataFrame) -> pd.DataFrame:
    """The stages that produce models (everything but evaluation and benchmarking)."""
    return records[~records["kind"].isin(INFERENCE_KINDS)]


GENERAL_OBJECTIVES = frozenset({"mlm", "corpus"})  # distillation on a corpus: the general route


def distill_objectives(records: pd.DataFrame) -> set[str]:
    """The objectives of the distill stages that made a run's student ("task" for records written before
    objectives existed); a suite's general_student has a route of its own."""
    distill = records[(records["kind"] == "distill") & (records["role"] == "student")]
    if "details.objective" not in distill:
        return {"task"} if len(distill) else set()
    return {str(o) if isinstance(o, str) else "task" for o in distill["details.objective"]}


def student_training_records(records: pd.DataFrame, role: str = "student") -> pd.DataFrame:
    """The stages that produced the student of `role`.

    student: every training stage but the general route's, less a teacher fine-tuning that only served
    evaluation (general distillation learnt from the MLM teacher and no task distillation ran), and less an
    MLM-head training that only the general route used. general_student: the teacher's MLM training, the
    general distillation and the general student's task training: not the teacher's fine-tuning.
    """
    training = training_records(records)
    if role == "general_student":
        return training[(training["role"] == "general_student") | (training["kind"] == "pretrain")]
    training = training[training["role"] != "general_student"]
    objectives = distill_objectives(records)
    if not objectives & GENERAL_OBJECTIVES:
        head_only = (training["kind"] == "pretrain") & (training.get("details.train") == "head")
        return training[~head_only]
    if "task" in objectives:
        return training
    return training[~((training["kind"] == "finetune") & (training["role"] == "teacher"))]


@dataclass(frozen=True, kw_only=True)
class ModelPoint:
    """One trained model (a run's teacher or student): its dev score and what producing it cost."""

    run_id: str
    run_dir: str
    task: str
    role: str
    score: float | None
    flops: float | None
    energy_kwh: float | None
    co2_kg: float | None
    inference_flops_per_example: float | None
    all_stages_ok: bool


def model_points(frame: pd.DataFrame, *, shared_users: Mapping[str, int] | None = None) -> list[ModelPoint]:
    """A teacher point and a student point per run (per task of a suite run), in `iter_units` order, and a
    general_student point where a suite's general route produced one.

    A general student's cost is its task training plus the suite's shared stages (the corpus stages) divided
    by the number of tasks that used them, as the suite report's amortized column. `shared_users` gives that
    number per run_dir; pass `general_route_users` of the whole run when `frame` holds only some of its tasks.
    """
    users = general_route_users(frame) if shared_users is None else shared_users
    points = []
    for records in iter_units(frame):
        task = first_value(records[records["task"].notna()], "task") or "shared"
        comparison = teacher_student(records)
        run_dir = str(first_value(records, "run_dir"))
        figures = {"teacher": comparison.teacher, "student": comparison.student}
        scopes = {"teacher": cost_totals(teacher_training_records(records)),
                  "student": cost_totals(student_training_records(records))}
        if users.get(run_dir):
            figures["general_student"] = role_figures(records, "general_student")
            scopes["general_student"] = _amortized_general_cost(records, users[run_dir])
        for role, role_figure in figures.items():
            cost = scopes[role]
            points.append(ModelPoint(
                run_id=str(first_value(records, "run_id")), run_dir=run_dir,
                task=str(task), role=role, score=role_figure.score, flops=cost.flops,
                energy_kwh=cost.energy_kwh, co2_kg=cost.co2_kg,
                inference_flops_per_example=role_figure.inference_flops_per_example,
                all_stages_ok=bool((records["status"] == "ok").all()),
            ))
    return points


def general_route_users(frame: pd.DataFrame) -> dict[str, int]:
    """Per run_dir: how many tasks trained a general_student (the tasks a suite's shared stages served)."""
    general = frame[(frame["role"] == "general_student") & frame["task"].notna()]
    return {str(run_dir): int(n) for run_dir, n in general.groupby("run_dir")["task"].nunique().items()}


def _amortized_general_cost(records: pd.DataFrame, num_users: int) -> AmortizedCost:
    """One task's general student: its own training stages plus 1/`num_users` of the shared stages."""
    produced = student_training_records(records, "general_student")
    own, shared_records = cost_totals(produced[produced["task"].notna()]), produced[produced["task"].isna()]
    if shared_records.empty:  # a general student fine-tuned without a corpus stage (an ablation)
        return AmortizedCost(flops=own.flops, energy_kwh=own.energy_kwh, co2_kg=own.co2_kg)
    shared = cost_totals(shared_records)

    def add(mine: float | None, theirs: float | None) -> float | None:
        # an unmeasured part leaves the sum unknown, never understated
        return None if mine is None or theirs is None else mine + theirs / num_users

    return AmortizedCost(flops=add(own.flops, shared.flops), energy_kwh=add(own.energy_kwh, shared.energy_kwh),
                         co2_kg=add(own.co2_kg, shared.co2_kg))


@dataclass(frozen=True, kw_only=True)
class AmortizedCost:
    """What producing one task's general student cost, the shared stages amortized over their tasks."""

    flops: float | None
    energy_kwh: float | None
    co2_kg: float | None


def pareto_optimal(costs: Sequence[float | None], scores: Sequence[float | None]) -> list[bool]:
    """For each point: True when no other point costs no more and scores no less, and is better in one.

    Points with a missing cost or score are never optimal (and dominate nothing).
    """
    known = [c is not None and s is not None for c, s in zip(costs, scores, strict=True)]
    flags = []
    for i, (cost, score) in enumerate(zip(costs, scores)):
        if not known[i]:
            flags.append(False)
            continue
        dominated = any(
            known[j] and costs[j] <= cost and scores[j] >= score and (costs[j] < cost or scores[j] > score)
            for j in range(len(costs)) if j != i)
        flags.append(not dominated)
    return flags
