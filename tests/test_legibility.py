"""Every figure the report draws can be read: no two of its texts overlap, and none is cut off.

Drawn from real run logs kept in reports/ (base.toml's, with its short benchmark windows beside two long
training stages; the general-vs-task pair; the five- and six-task suites) and from a synthetic six-task suite
with shared stages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from builders import suite_run
from greendistil.report.compare import general_student_figures, teacher_student
from greendistil.report.costs import general_route_users, model_points
from greendistil.report.frame import iter_runs, iter_tasks, iter_units, load_report_frame
from greendistil.report.legibility import outside_figure, overlapping_texts
from greendistil.report.plots import draw_energy_by_stage, draw_power, draw_score_vs_cost, draw_teacher_student
from greendistil.report.serving import benchmark_summary, draw_serving
from greendistil.report.suite_plots import draw_retention_vs_energy, draw_suite_pareto
from greendistil.runlog.store import read_records

REPORTS = Path(__file__).resolve().parents[1] / "reports"
RUN_LOGS = [REPORTS / "base" / "run-log", REPORTS / "general-vs-task" / "run-log", REPORTS / "glue-five" / "run-log",
            REPORTS / "glue-intermediate" / "run-log"]
SIX = ("cola", "sst2", "mrpc", "stsb", "rte", "wnli")


def suite_dir(root: Path) -> Path:
    scores = {task: {"teacher": {"accuracy": 0.8, "mcc": 0.4, "f1": 0.8, "pearson": 0.8, "spearman": 0.8,
                                 "score": 0.8},
                     "student": {"accuracy": 0.78, "mcc": 0.35, "f1": 0.78, "pearson": 0.78, "spearman": 0.78,
                                 "score": 0.78 - 0.01 * i},
                     "general_student": {"accuracy": 0.76, "mcc": 0.3, "f1": 0.76, "pearson": 0.76,
                                         "spearman": 0.76, "score": 0.76}}
              for i, task in enumerate(SIX)}
    return suite_run(root, "glue-20261202-041500-abcdef", scores, shared_kwh=2.0)


def figures(run_dir: Path) -> dict[str, Figure]:
    """Every figure the report draws for the runs in `run_dir` (a run directory or a folder of them)."""
    frame = load_report_frame([run_dir])
    drawn: dict[str, Figure] = {}
    for records in iter_runs(frame):
        run_id = str(records["run_id"].iloc[0])
        drawn[f"energy {run_id}"] = draw_energy_by_stage(records)
        drawn[f"power {run_id}"] = draw_power(records, Path(str(records["run_dir"].iloc[0])))
        if records["task"].nunique() > 1:
            drawn[f"retention {run_id}"] = draw_retention_vs_energy(records, title=run_id)
            drawn[f"pareto {run_id}"] = draw_suite_pareto(records, title=run_id)
        summary = benchmark_summary(read_records(Path(str(records["run_dir"].iloc[0]))))
        if summary:
            drawn[f"serving {run_id}"] = draw_serving(summary, title=run_id)
    for index, records in enumerate(iter_units(frame)):
        drawn[f"teacher-student {index}"] = draw_teacher_student(teacher_student(records), title=f"unit {index}",
                                                                 general_student=general_student_figures(records))
    users = general_route_users(frame)
    for task, records in iter_tasks(frame):
        drawn[f"score-vs-cost {task}"] = draw_score_vs_cost(model_points(records, shared_users=users), task=task)
    return drawn


def check_all(drawn: dict[str, Figure]) -> None:
    problems = {name: (overlapping_texts(fig), outside_figure(fig)) for name, fig in drawn.items()}
    assert not {name: found for name, found in problems.items() if found[0] or found[1]}


@pytest.mark.parametrize("run_log", RUN_LOGS, ids=lambda p: p.parent.name)
def test_figures_of_real_runs_are_legible(run_log: Path) -> None:
    if not run_log.is_dir():
        pytest.skip(f"{run_log} is not in this checkout")
    check_all(figures(run_log))


def test_figures_of_a_six_task_suite_are_legible(tmp_path: Path) -> None:
    drawn = figures(suite_dir(tmp_path))
    assert {"energy glue-20261202-041500-abcdef", "retention glue-20261202-041500-abcdef",
            "pareto glue-20261202-041500-abcdef", "score-vs-cost wnli"} <= set(drawn)
    check_all(drawn)


def test_the_check_finds_overlapping_and_cut_off_texts() -> None:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.text(0.5, 0.5, "a long label here", transform=ax.transAxes)
    ax.text(0.52, 0.5, "another long label", transform=ax.transAxes)
    ax.text(1.3, 0.5, "outside the figure on the right", transform=ax.transAxes)
    assert any("a long label here" in a + b and "another long label" in a + b for a, b in overlapping_texts(fig))
    assert any("outside the figure" in what for what in outside_figure(fig))
