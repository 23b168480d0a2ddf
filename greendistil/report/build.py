"""`write_report()`: the Green AI efficiency report of one or more runs, as markdown with PNGs beside it.

Reads only the run log (records.jsonl, config.toml and power.csv of each run directory), never live objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from greendistil.errors import GreendistilError
from greendistil.report import plots, tables
from greendistil.report.compare import general_student_figures, teacher_student
from greendistil.report.costs import cost_totals, general_route_users, model_points
from greendistil.report.distributed import distributed_section
from greendistil.report.forecasts import forecasts_section
from greendistil.report.frame import (first_value, iter_runs, iter_tasks, iter_units, load_report_frame, run_seeds,
                                      task_order, unit_title)
from greendistil.report.markdown import fmt_number, fmt_percent, table
from greendistil.report.provenance import energy_kinds
from greendistil.report.objectives import objectives_section
from greendistil.report.routes import routes_section
from greendistil.report.suite import suite_cost_section, table1_section
from greendistil.report.seeds import seeds_section
from greendistil.report.suite_plots import plot_retention_vs_energy, plot_suite_pareto
from greendistil.report.sweep import SweepFigures, budget_curve, sweep_figures, sweep_folders, sweep_section
from greendistil.report.sweep_plots import plot_budget_curves, plot_trials_pareto
from greendistil.report.serving import BENCHMARK_KIND, benchmark_summary, plot_serving, serving_section
from greendistil.runlog.store import read_records

REPORT_FILE = "report.md"


@dataclass(frozen=True, kw_only=True)
class ReportFigure:
    """A PNG written beside the report, with the caption it is shown under."""

    caption: str
    file_name: str

    def markdown(self) -> str:
        return f"![{self.caption}]({self.file_name})"


def write_report(paths: list[Path], out_dir: Path, *, name: str | None = None) -> Path:
    """Write `out_dir/report.md` and its PNGs for the runs under `paths`; return the report's path.

    `paths` are run directories or runs roots. Raises GreendistilError when no run is found there or
    `out_dir` cannot be written.
    """
    frame = load_report_frame(paths)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GreendistilError(f"cannot create the report folder {str(out_dir)!r}: {err.strerror}; "
                               "pass a writable --out folder") from None
    sweeps = [sweep_figures(folder, frame) for folder in sweep_folders(frame)]
    if sweeps:  # many runs of one config: the sweep's own view, not a report per trial
        sections = [_header(frame, name), sweep_section(sweeps), _sweep_figures(sweeps, out_dir),
                    tables.cost_section(frame), tables.environment_section(frame)]
        path = out_dir / REPORT_FILE
        path.write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8")
        return path
    figures = _write_figures(frame, out_dir)
    sections = [
        _header(frame, name),
        table1_section(frame), seeds_section(frame), suite_cost_section(frame), _figure_block(figures["suite"]),
        _glance(frame),
        tables.cost_section(frame), _figure_block(figures["cost"]),
        distributed_section(frame),  # the cost table's distributed and GPU stages, per node and per GPU
        forecasts_section(frame),
        tables.teacher_student_section(frame), _figure_block(figures["teacher_student"]),
        routes_section(frame), objectives_section(frame),
        _serving_block(frame, out_dir),
        tables.regions_section(frame),
        tables.across_runs_section(frame), _figure_block(figures["across"]),
        tables.environment_section(frame),
    ]
    path = out_dir / REPORT_FILE
    path.write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8")
    return path


def _write_figures(frame: pd.DataFrame, out_dir: Path) -> dict[str, list[ReportFigure]]:
    names = _FileNames()
    figures: dict[str, list[ReportFigure]] = {"suite": [], "cost": [], "teacher_student": [], "across": []}
    for records in iter_runs(frame):
        if len(task_order(records["task"])) > 1:
            run_id = str(first_value(records, "run_id"))
            retention, pareto = names.new(f"retention-vs-energy-{run_id}"), names.new(f"suite-pareto-{run_id}")
            plot_retention_vs_energy(records, out_dir / retention, title=run_id)
            plot_suite_pareto(records, out_dir / pareto, title=run_id)
            figures["suite"] += [ReportFigure(caption=f"Retention vs energy per task, {run_id}", file_name=retention),
                                 ReportFigure(caption=f"Macro score vs energy, {run_id}", file_name=pareto)]
    for records in iter_runs(frame):
        run_id = str(first_value(records, "run_id"))
        energy = names.new(f"energy-{run_id}")
        plots.plot_energy_by_stage(records, out_dir / energy)
        power = names.new(f"power-{run_id}")
        plots.plot_power(records, Path(str(first_value(records, "run_dir"))), out_dir / power)
        figures["cost"] += [ReportFigure(caption=f"Energy per stage, {run_id}", file_name=energy),
                            ReportFigure(caption=f"Power per stage, {run_id}", file_name=power)]
    for records in iter_units(frame):
        comparison = teacher_student(records)
        title = unit_title(records)
        file_name = names.new(f"teacher-student-{title}")
        plots.plot_teacher_student(comparison, out_dir / file_name, title=title,
                                   general_student=general_student_figures(records))
        figures["teacher_student"].append(ReportFigure(caption=f"Teacher vs student, {title}", file_name=file_name))
    users = general_route_users(frame)
    for task, records in iter_tasks(frame):
        tradeoff = names.new(f"score-vs-cost-{task}")
        plots.plot_score_vs_cost(model_points(records, shared_users=users), out_dir / tradeoff, task=task)
        figures["across"].append(ReportFigure(caption=f"Score vs cost, task {task}", file_name=tradeoff))
    return figures


def _sweep_figures(sweeps: list[SweepFigures], out_dir: Path) -> str:
    names, figures = _FileNames(), []
    if any(budget_curve(s) is not None for s in sweeps):
        file_name = names.new("sweep-budget-curves")
        plot_budget_curves(sweeps, out_dir / file_name)
        figures.append(ReportFigure(caption="Expected best score against trials and energy", file_name=file_name))
    for sweep in sweeps:
        if sweep.scored():
            file_name = names.new(f"sweep-pareto-{sweep.sweep_id}")
            plot_trials_pareto(sweep, out_dir / file_name)
            figures.append(ReportFigure(caption=f"Score against energy per trial, {sweep.sweep_id}",
                                        file_name=file_name))
    return _figure_block(figures)


def _serving_block(frame: pd.DataFrame, out_dir: Path) -> str:
    """The serving-cost section and its PNGs, for the runs that have benchmark records ("" if none)."""
    run_dirs = [str(first_value(records, "run_dir")) for records in iter_runs(frame)
                if (records["kind"] == BENCHMARK_KIND).any()]
    if not run_dirs:
        return ""
    by_run = []
    for run_dir in run_dirs:
        run_id, records = str(first_value(frame[frame["run_dir"] == run_dir], "run_id")), read_records(Path(run_dir))
        tasks = list(dict.fromkeys(r.get("task") for r in records if r.get("kind") == BENCHMARK_KIND))
        by_run += [(run_id if len(tasks) == 1 else f"{run_id}, task {task}",
                    [r for r in records if r.get("task") == task]) for task in tasks]
    names, figures = _FileNames(), []
    for run_id, records in by_run:
        file_name = names.new(f"serving-{run_id}")
        plot_serving(benchmark_summary(records), out_dir / file_name, title=run_id)
        figures.append(ReportFigure(caption=f"Serving cost, {run_id}", file_name=file_name))
    return "\n\n".join([serving_section(by_run), _figure_block(figures)])


class _FileNames:
    """Safe, distinct PNG file names (two runs may share a run id when copied around)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def new(self, stem: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "figure"
        candidate, number = f"{stem}.png", 2
        while candidate in self._used:
            candidate, number = f"{stem}-{number}.png", number + 1
        self._used.add(candidate)
        return candidate


def _figure_block(figures: list[ReportFigure]) -> str:
    return "\n\n".join(figure.markdown() for figure in figures)


def _header(frame: pd.DataFrame, name: str | None) -> str:
    from greendistil import __version__

    runs = list(iter_runs(frame))
    title = name or (str(first_value(runs[0], "run_id")) if len(runs) == 1 else f"{len(runs)} runs")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"Written by greendistil {__version__} on {stamp} from the run log alone (records.jsonl, "
             f"config.toml, power.csv) of {len(runs)} run(s) on task(s) "
             f"{', '.join(f'`{t}`' for t in task_order(frame['task']))}. Following Green AI (Schwartz et al. 2019), "
             "every result is reported with what it cost: FLOPs, energy and CO2eq, teacher training included.")
    return "\n\n".join([f"# Green AI report: {title}", intro])


def _glance(frame: pd.DataFrame) -> str:
    return "\n\n".join(["## At a glance", _glance_table(frame)])


def _glance_table(frame: pd.DataFrame) -> str:
    """A row per (run, task); a suite's rows each count its shared stages (their cost is in each task's)."""
    rows = []
    for records in iter_units(frame):
        comparison, totals = teacher_student(records), cost_totals(records)
        status = "ok" if totals.num_not_ok == 0 else f"⚠ {totals.num_not_ok} stage(s) not ok"
        seeds = run_seeds(records)
        run_label = str(first_value(records, "run_id")) + (f", seed {seeds[0]}" if len(seeds) == 1 else "")
        rows.append([run_label, f"`{first_value(records, 'task')}`",
                     fmt_number(comparison.teacher.score), fmt_number(comparison.student.score),
                     fmt_percent(comparison.score_retention), fmt_number(totals.flops),
                     fmt_number(totals.energy_kwh) + energy_kinds(records),
                     fmt_number(totals.co2_kg) + energy_kinds(records), status])
    headers = ("run", "task", "teacher score", "student score", "retention", "FLOPs (its stages)",
               "kWh (its stages)", "kg CO2eq", "status")
    return table(headers, rows, right_align_from=2)
