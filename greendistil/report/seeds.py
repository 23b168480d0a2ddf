"""'## Seeds': a multi-seed run's (`run.seeds`) scores over its seeds and what the seeds cost.

Per task and model: the median dev score (Table 1's headline, as DistilBERT's medians of 5 runs), the mean ±
the standard deviation (sample, ddof = 1), the range and the number of seeds; the student's retention of
the teacher's score the same way. Then per stage the cost of all the seeds and of one seed, so that a
reader sees both what the result cost and what one more seed would.
"""

from __future__ import annotations

import pandas as pd

from greendistil.report.frame import first_value, iter_runs, number, run_seeds, task_order, value
from greendistil.report.glue import MODEL_ROLES, model_label, task_label
from greendistil.report.markdown import fmt_number, table
from greendistil.report.provenance import energy_kinds
from greendistil.runlog.seeds import aggregate_seeds

_SCORE_HEADERS = ("task", "model", "median", "mean ± std", "min – max", "seeds")
_COST_HEADERS = ("task", "stage", "seeds", "duration (s), all", "per seed", "FLOPs, all", "kWh, all", "per seed",
                 "kg CO2eq, all", "per seed")


def seeds_section(frame: pd.DataFrame) -> str:
    """The section, or "" when no run has several seeds."""
    parts = []
    for records in iter_runs(frame):
        seeds = run_seeds(records)
        if seeds:
            parts += _run_part(records, seeds)
    if not parts:
        return ""
    intro = ("Each multi-seed run's dev scores ×100 over its seeds (`run.seeds`): the median is what Table 1 "
             "shows, as DistilBERT reports the median of 5 runs; ± is the sample standard deviation (n − 1). "
             "Retention is the student's score ÷ the teacher's, seed by seed. The costs are summed over the "
             "seeds (the run paid for all of them), and divided by their number for the cost of one seed; a "
             "stage the seeds share ran once.")
    return "\n\n".join(["## Seeds", intro, *parts])


def _run_part(records: pd.DataFrame, seeds: list[int]) -> list[str]:
    trains_teacher = records["kind"].isin(("pretrain", "finetune")) & (records["role"] == "teacher")
    shared = records[trains_teacher & records["seed"].isna()]
    teacher = (f"one teacher shared by the seeds (trained once, from seed {seeds[0]})" if len(shared)
               else "a teacher per seed, so the spread covers the whole pipeline" if trains_teacher.any()
               else "a teacher the run did not train (the same for every seed)")
    heading = f"### {first_value(records, 'run_id')}: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {teacher}"
    combined = aggregate_seeds(records)
    labels = {role: model_label(records, role) for role in MODEL_ROLES}
    score_rows = [row for task in task_order(records["task"])
                  for row in _score_rows(combined, task, labels, shared_teacher=len(shared) > 0)]
    kinds = energy_kinds(records)
    cost_rows = [_cost_row(row, kinds) for _, row in combined.iterrows()]
    return [heading, table(_SCORE_HEADERS, score_rows, right_align_from=2),
            table(_COST_HEADERS, cost_rows, right_align_from=2)]


def _score_rows(combined: pd.DataFrame, task: str, labels: dict[str, str], *,
                shared_teacher: bool) -> list[list[str]]:
    evaluates = combined[(combined["kind"] == "evaluate") & (combined["task"] == task)]
    rows = []
    for _, row in evaluates.iterrows():
        for role in MODEL_ROLES:
            label = labels[role] + (" (one model: each seed's evaluation scored it)"
                                    if role == "teacher" and shared_teacher else "")
            if number(row, f"metric.{role}.score") is not None:
                rows.append(_stat_row(task, label, row, f"metric.{role}.score"))
        for role in MODEL_ROLES[1:]:
            key = "metric.retention.score" if role == "student" else f"metric.retention.{role}.score"
            if number(row, key) is not None:
                rows.append(_stat_row(task, f"retention: {labels[role]}", row, key, percent=True))
    return rows


def _stat_row(task: str, label: str, row: pd.Series, key: str, *, percent: bool = False) -> list[str]:
    def cell(column: str, digits: int = 1) -> str:
        found = number(row, column)
        return "n/a" if found is None or pd.isna(found) else f"{100 * found:.{digits}f}" + ("%" if percent else "")

    std = number(row, f"{key}.std")
    spread = f"{cell(f'{key}.mean')} (one seed)" if std is None or pd.isna(std) else \
        f"{cell(f'{key}.mean')} ± {cell(f'{key}.std', 2)}"
    return [task_label(task), label, cell(key), spread, f"{cell(f'{key}.min')} – {cell(f'{key}.max')}",
            str(int(number(row, "num_seeds") or 1))]


def _cost_row(row: pd.Series, kinds: str) -> list[str]:
    task, seeds = value(row, "task"), value(row, "seeds")
    who = "shared (once)" if bool(value(row, "shared_by_seeds")) else str(seeds) if seeds else "—"

    def per_seed(figure: str, suffix: str = "") -> str:
        return fmt_number(number(row, f"per_seed_{figure}")) + suffix if seeds else "—"

    return [task_label(str(task)) if task is not None else "shared", str(row["stage"]), who,
            fmt_number(number(row, "duration_s")), per_seed("duration_s"), fmt_number(number(row, "flops")),
            fmt_number(number(row, "energy_kwh")) + kinds, per_seed("energy_kwh", kinds),
            fmt_number(number(row, "co2_kg")) + kinds, per_seed("co2_kg", kinds)]
