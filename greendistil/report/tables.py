"""The report's markdown sections, each built from the records DataFrame of `load_report_frame()`.

Each `*_section(frame)` returns one `## ...` section. Figures come only from the run log; a figure a run
did not record is "n/a", never 0, and every energy figure carries its provenance (measured or estimated)
with a footnote explaining the method.
"""

from __future__ import annotations

import pandas as pd

from greendistil.report.compare import TeacherStudent, teacher_student
from greendistil.report.costs import (CostTotals, cost_totals, general_route_users, model_points, pareto_optimal,
                                      student_training_records)
from greendistil.report.frame import (first_value, iter_runs, iter_tasks, iter_units, number, run_seeds,
                                      task_order, value)
from greendistil.report.markdown import (NOT_AVAILABLE, code, fmt_count, fmt_number, fmt_percent, fmt_ratio, fmt_si,
                                         is_missing, table)
from greendistil.report.provenance import footnote_ref, footnotes, kinds_suffix, mark, source_kind
from greendistil.data.tasks import get_task
from greendistil.report.reference import BERT_BASE_GLUE, DISTILBERT, DISTILBERT_GLUE
from greendistil.report.regions import DEFAULT_REGIONS, region_costs

COMPONENTS = ("cpu", "gpu", "ram")
PARETO_MARK = "★"


def run_heading(records: pd.DataFrame) -> str:
    """'### <run_id> (task `sst2`)' for one run's records; a suite's names its tasks."""
    tasks = task_order(records["task"])
    what = (f"task `{tasks[0]}`" if len(tasks) == 1 else "suite: " + ", ".join(f"`{t}`" for t in tasks) if tasks
            else "shared stages only")
    return f"### {first_value(records, 'run_id')} ({what})"


def unit_heading(records: pd.DataFrame) -> str:
    """'### <run_id>, task `sst2`' for the records of one (run, task)."""
    return f"### {first_value(records, 'run_id')}, task `{first_value(records, 'task')}`"


# --- 1. Cost of the result -------------------------------------------------------------------------------

# Two tables per run, so that each reads on an ordinary screen: the work each stage did, then its energy.
_WORK_HEADERS = ("task", "stage", "role", "status", "model", "parameters", "examples", "duration (s)", "FLOPs",
                 "dev scores")
_ENERGY_HEADERS = ("task", "stage", "CPU kWh", "GPU kWh", "RAM kWh", "total kWh", "kg CO2eq", "grid g/kWh", "PUE")


def cost_section(frame: pd.DataFrame) -> str:
    """Every stage record of every run with its full cost, a total per run, and footnotes per method."""
    parts = ["## Cost of the result",
             "Every stage of every run as its record holds it: first the work it did, then the energy it drew. "
             "CO2eq = kWh × PUE × grid intensity. Each energy figure is marked measured (meas.) or estimated "
             "(est.), with a footnote on the method; a figure that was not measured is n/a and is left out "
             "of the sums, never counted as 0. Failed and interrupted stages stay in the table and in the "
             "totals: their energy was spent. The cost of producing the student includes the teacher's "
             "training. Dev scores are the task's GLUE score on the dev set. A suite's shared stages (task "
             "`shared`) ran once for all its tasks; a multi-seed run's rows name their seed (none: a stage every "
             "seed shares). FLOPs count operations whatever precision they ran in (fp32 or bf16: `hardware: "
             "precision` in the Environment section); time and energy depend on it."]
    for records in iter_runs(frame):
        # A suite's and a multi-seed run's rows say whose they are: the task, and the seed.
        suite = len(task_order(records["task"])) > 1 or records["task"].isna().any() or bool(run_seeds(records))
        totals = [(f"**run total** ({len(records)} stages)", records)]
        if not suite:
            training = student_training_records(records)
            stages = " + ".join(str(s) for s in training["stage"])
            totals.insert(0, (f"**to produce the student** ({stages})", training))
        work = [_work_row(row) for _, row in records.iterrows()] + [_work_total(label, r) for label, r in totals]
        energy = [_energy_row(row) for _, row in records.iterrows()] + [_energy_total(label, r) for label, r in totals]
        keep = slice(0 if suite else 1, None)  # a single-task run needs no task column
        parts += [run_heading(records), table(_WORK_HEADERS[keep], [r[keep] for r in work], right_align_from=5),
                  table(_ENERGY_HEADERS[keep], [r[keep] for r in energy], right_align_from=2)]
    parts += ["Where the figures come from:", footnotes(cost_footnote_sources(frame))]
    return "\n\n".join(parts)


def cost_footnote_sources(frame: pd.DataFrame) -> list[str | None]:
    """The sources whose footnotes the cost section defines: later sections refer to them, never redefine them."""
    columns = [frame[f"{c}_energy_source"] for c in COMPONENTS] + [frame["flops_source"], frame["intensity_source"]]
    return [source for column in columns for source in column]


def _task_cell(row: pd.Series) -> str:
    task, seed = value(row, "task"), value(row, "seed")
    return ("shared" if task is None else str(task)) + (f", seed {int(seed)}" if seed is not None else "")


def _work_row(row: pd.Series) -> list[str]:
    return [_task_cell(row), str(row["stage"]), str(value(row, "role") or ""), _status(row), code(value(row, "model")),
            _params(row), fmt_count(number(row, "num_examples")), fmt_number(number(row, "duration_s")),
            mark(fmt_number(number(row, "flops")), value(row, "flops_source")), _scores(row)]


def _energy_row(row: pd.Series) -> list[str]:
    energies = [mark(fmt_number(number(row, f"{c}_energy_kwh")), value(row, f"{c}_energy_source"))
                for c in COMPONENTS]
    total_sources = [value(row, f"{c}_energy_source") for c in COMPONENTS
                     if number(row, f"{c}_energy_kwh") is not None]
    return [_task_cell(row), str(row["stage"]), *energies, _kinds_cell(number(row, "energy_kwh"), total_sources, 0),
            fmt_number(number(row, "co2_kg")),
            fmt_number(number(row, "intensity_g_per_kwh")) + footnote_ref(value(row, "intensity_source")),
            fmt_number(number(row, "pue"))]


def _work_total(label: str, records: pd.DataFrame) -> list[str]:
    totals = cost_totals(records)
    not_ok = f"⚠ {totals.num_not_ok} not ok" if totals.num_not_ok else "ok"
    return ["", label, "", not_ok, "", "", "", fmt_number(totals.duration_s), flops_cell(records), ""]


def flops_cell(records: pd.DataFrame) -> str:
    """The FLOPs of `records` summed, with the kinds of figures in the sum and how many stages lacked one."""
    flops_known = pd.to_numeric(records["flops"], errors="coerce").notna()
    return _kinds_cell(cost_totals(records).flops, list(records.loc[flops_known, "flops_source"]),
                       int((~flops_known).sum()))


def _energy_total(label: str, records: pd.DataFrame) -> list[str]:
    totals = cost_totals(records)
    return ["", label, *component_cells(records), fmt_number(totals.co2_kg), "", ""]


def component_cells(records: pd.DataFrame) -> list[str]:
    """CPU, GPU, RAM and total kWh of `records`, each with the kinds of figures summed (meas./est.) and how
    many stages lacked one."""
    totals = cost_totals(records)
    cells = []
    for component in COMPONENTS:
        known = records[pd.to_numeric(records[f"{component}_energy_kwh"], errors="coerce").notna()]
        cells.append(_kinds_cell(getattr(totals, f"{component}_energy_kwh"),
                                 list(known[f"{component}_energy_source"]), len(records) - len(known)))
    all_sources = [s for c in COMPONENTS for s in records[f"{c}_energy_source"] if source_kind(s) != "unavailable"]
    return cells + [_kinds_cell(totals.energy_kwh, all_sources, 0)]


def _kinds_cell(total: float | None, sources: list[str | None], num_missing: int) -> str:
    """A sum with the kinds of figures in it: '2.4e-06 (meas.+est.)', plus how many stages lacked one."""
    if total is None:
        return NOT_AVAILABLE
    text = fmt_number(total) + kinds_suffix(sources)
    return text + (f", n/a in {num_missing} stage(s)" if num_missing else "")


def _params(row: pd.Series) -> str:
    """The stage's model size; for an evaluation of several models, each one's."""
    if number(row, "num_params") is not None:
        return fmt_si(number(row, "num_params"))
    roles = [r for r in str(value(row, "role") or "").split("+") if number(row, f"details.{r}.num_params") is not None]
    return " / ".join(f"{r} {fmt_si(number(row, f'details.{r}.num_params'))}" for r in roles) or NOT_AVAILABLE


def _status(row: pd.Series) -> str:
    status = str(value(row, "status") or "unknown")
    text = "ok" if status == "ok" else f"⚠ {status}: {value(row, 'error_type') or 'no error type recorded'}"
    segments = number(row, "num_segments")
    if segments is not None and segments > 1:  # a resumed stage: its figures are the sums of its segments
        text += f" (resumed; {int(segments)} segments summed: {value(row, 'segment_statuses')})"
    incomplete = value(row, "segments_incomplete")
    if isinstance(incomplete, list) and incomplete:
        text += f" ⚠ sums lack a segment's {', '.join(incomplete)}"
    return text


def _scores(row: pd.Series) -> str:
    found = [f"{role} {fmt_number(number(row, f'metric.{role}.score'))}"
             for role in ("teacher", "student", "general_student") if number(row, f"metric.{role}.score") is not None]
    retention = number(row, "metric.retention.score")
    if retention is not None:
        found.append(f"retention {fmt_percent(retention)}")
    return " · ".join(found) or "—"


# --- 2. Teacher vs student -------------------------------------------------------------------------------

def teacher_student_section(frame: pd.DataFrame) -> str:
    """Per run: parameters, FLOPs per example, score retention and energy to train, beside DistilBERT's paper."""
    parts = ["## Teacher vs student",
             "Ratios are student / teacher. Distillation runs the teacher's forward pass on every training "
             "batch, so the student's training FLOPs and energy include that teacher inference; the "
             "student-only FLOPs are shown separately where counted. Evaluation measures both models in one "
             "window, so its energy is not split per model: inference FLOPs per example stand in for it. "
             "FLOPs are counted on the padded tokens the models computed on, so per-example figures depend on "
             "batch size and padding: compare teacher with student within a row rather than rows with each other. "
             f"The last column holds {DISTILBERT.student_name} / {DISTILBERT.teacher_name} as published by "
             "Sanh et al. (2019), figures from the paper and not measured here."]
    for records in iter_units(frame):
        parts += [unit_heading(records), _comparison_table(teacher_student(records))]
    parts += [_reference_table()]
    return "\n\n".join(parts)


def _comparison_table(c: TeacherStudent) -> str:
    t, s, paper = c.teacher, c.student, DISTILBERT
    own = None if c.student_own_train_flops is None or not s.train_num_examples \
        else c.student_own_train_flops / s.train_num_examples
    rows = [
        ["parameters", fmt_si(t.num_params), fmt_si(s.num_params), fmt_ratio(c.param_ratio),
         f"{fmt_ratio(paper.param_ratio)} (parameters)"],
        ["training stage(s)", ", ".join(t.train_stages) or NOT_AVAILABLE, ", ".join(s.train_stages) or NOT_AVAILABLE,
         "", ""],
        ["training FLOPs / example", fmt_number(t.train_flops_per_example),
         _incl_teacher(fmt_number(s.train_flops_per_example)),
         fmt_ratio(c.train_flops_per_example_ratio), ""],
        ["… student-only training FLOPs / example", "", fmt_number(own),
         fmt_ratio(None if own is None or not t.train_flops_per_example else own / t.train_flops_per_example), ""],
        ["inference FLOPs / example (evaluate)", fmt_number(t.inference_flops_per_example),
         fmt_number(s.inference_flops_per_example), fmt_ratio(c.inference_flops_ratio),
         f"{fmt_ratio(1 / paper.inference_speedup)} (CPU inference time)"],
        ["dev score", fmt_number(t.score), fmt_number(s.score), _retained(c.score_retention), _paper_score(c.task)],
        ["energy to train (kWh)", fmt_number(t.train_energy_kwh),
         _incl_teacher(fmt_number(s.train_energy_kwh)), fmt_ratio(c.train_energy_ratio), ""],
    ]
    headers = ("", "teacher", "student", "student / teacher",
               f"{paper.student_name} / {paper.teacher_name} (paper)")
    return table(headers, rows)


def _paper_score(task: str) -> str:
    """DistilBERT against BERT-base on this task (Table 1 of the paper), then on the GLUE score."""
    paper = DISTILBERT
    overall = f"{fmt_percent(paper.score_retention)} retained ({paper.score_name})"
    if task not in DISTILBERT_GLUE.task_scores:
        return overall
    student, teacher = DISTILBERT_GLUE.task_scores[task], BERT_BASE_GLUE.task_scores[task]
    return (f"{student:.1f} / {teacher:.1f} on {get_task(task).dir_name}: {fmt_percent(student / teacher)} retained; "
            f"{overall}")


def _retained(retention: float | None) -> str:
    return NOT_AVAILABLE if retention is None else f"{fmt_percent(retention)} retained"


def _incl_teacher(text: str) -> str:
    return text if text == NOT_AVAILABLE else f"{text} (incl. teacher forward)"


def _reference_table() -> str:
    p = DISTILBERT
    rows = [
        ["parameters", fmt_si(p.teacher_num_params), fmt_si(p.student_num_params), fmt_ratio(p.param_ratio)],
        [p.score_name, f"{p.teacher_score:.1f}", f"{p.student_score:.1f}",
         f"{fmt_percent(p.score_retention)} retained"],
        [f"inference time (s), {p.inference_setup}", fmt_number(p.teacher_inference_s),
         fmt_number(p.student_inference_s),
         f"{p.inference_speedup:.2f}× faster (the paper: \"{p.speedup_claim}\")"],
    ]
    return "\n\n".join([
        f"### Published reference: {p.student_name} vs {p.teacher_name}",
        f"Figures from the paper, not measured by greendistil: {p.citation} (Table 1: scores; Table 3: "
        "parameters and inference time).",
        table(("", p.teacher_name, p.student_name, f"{p.student_name} / {p.teacher_name}"), rows),
    ])


# --- 3. What-if by region --------------------------------------------------------------------------------

def regions_section(frame: pd.DataFrame, codes: tuple[str, ...] = DEFAULT_REGIONS) -> str:
    """Per run: its total energy × PUE on other countries' grids, lowest intensity first."""
    parts = ["## What if the run had used another grid",
             "CO2eq = the run's total energy (all stages) × PUE × the grid's intensity. Intensities are "
             "codecarbon's offline energy-mix data: yearly country averages, not real-time figures."]
    for records in iter_runs(frame):
        parts += [run_heading(records), _regions_table(records, codes)]
    return "\n\n".join(parts)


def _regions_table(records: pd.DataFrame, codes: tuple[str, ...]) -> str:
    totals = cost_totals(records)
    if totals.facility_energy_kwh is None:
        return "No energy was measured in this run: nothing to convert."
    country = first_value(records, "country_iso_code")
    costs = region_costs(totals.facility_energy_kwh, codes + ((str(country),) if country else ()))
    own_co2_g = None if totals.co2_kg is None else totals.co2_kg * 1000.0
    rows = [[f"{c.country_name} ({c.country_iso_code})" + (" — this run" if c.country_iso_code == country else ""),
             fmt_number(c.intensity_g_per_kwh), fmt_number(c.co2_g), fmt_number(c.co2_kg),
             fmt_ratio(None if not own_co2_g else c.co2_g / own_co2_g)] for c in costs]
    summary = (f"{fmt_number(totals.energy_kwh)} kWh drawn, {fmt_number(totals.facility_energy_kwh)} kWh with "
               f"PUE {fmt_number(first_value(records, 'pue'))}. This run used "
               f"{fmt_number(first_value(records, 'intensity_g_per_kwh'))} g/kWh "
               f"(`{first_value(records, 'intensity_source')}`): {fmt_number(totals.co2_kg)} kg CO2eq.")
    return summary + "\n\n" + table(("grid", "g CO2eq/kWh", "g CO2eq", "kg CO2eq", "vs this run"), rows)


# --- 4. Across runs --------------------------------------------------------------------------------------

def across_runs_section(frame: pd.DataFrame) -> str:
    """Score vs cost per task with the Pareto front marked, and the total cost of every run."""
    parts = ["## Across runs"]
    if frame["run_dir"].nunique() < 2:
        return "\n\n".join(parts + ["One run only: pass several run directories, or a runs root, to compare runs."])
    parts.append(f"Each run gives two models: its teacher and its student; a suite with a general route gives a "
                 f"third, its general_student. Cost = what producing the model took (the teacher: its training "
                 f"stages; the student: the teacher's training plus distillation; the general student: its task "
                 f"training plus the suite's shared stages divided by the tasks that used them). "
                 f"{PARETO_MARK} marks the Pareto front of each cost: no other model of the same task scores "
                 f"higher at lower or equal cost. Scores of different tasks are never compared.")
    users = general_route_users(frame)
    for task, records in iter_tasks(frame):
        num_runs = records["run_dir"].nunique()
        parts += [f"### Task `{task}` ({num_runs} run{'s' if num_runs > 1 else ''})", _pareto_table(records, users)]
    parts += ["### Total cost of all runs",
              "Every stage of every run, failed and interrupted ones included: the cost of the whole study, "
              "not only of the best model.", _all_runs_table(frame)]
    return "\n\n".join(parts)


def _pareto_table(records: pd.DataFrame, shared_users: dict[str, int]) -> str:
    points = sorted(model_points(records, shared_users=shared_users),
                    key=lambda p: -(p.score if p.score is not None else float("-inf")))
    scores = [p.score for p in points]
    on_flops = pareto_optimal([p.flops for p in points], scores)
    on_kwh = pareto_optimal([p.energy_kwh for p in points], scores)
    on_inference = pareto_optimal([p.inference_flops_per_example for p in points], scores)
    rows = [[p.run_id, p.role, fmt_number(p.score), fmt_number(p.flops), fmt_number(p.energy_kwh),
             fmt_number(p.co2_kg), fmt_number(p.inference_flops_per_example),
             *(PARETO_MARK if flag else "" for flag in (on_flops[i], on_kwh[i], on_inference[i])),
             "ok" if p.all_stages_ok else "⚠ run has failed/interrupted stages"]
            for i, p in enumerate(points)]
    headers = ("run", "model", "dev score", "FLOPs to produce", "kWh to produce", "kg CO2eq to produce",
               "inference FLOPs / example", "Pareto: FLOPs", "Pareto: kWh", "Pareto: inference", "status")
    return table(headers, rows, right_align_from=2)


def _all_runs_table(frame: pd.DataFrame) -> str:
    rows = [_totals_row(f"`{task}`", frame[frame["task"] == task]) for task in task_order(frame["task"])]
    if frame["task"].isna().any():
        rows.append(_totals_row("shared stages (suites)", frame[frame["task"].isna()]))
    rows.append(_totals_row("**all tasks**", frame))
    headers = ("task", "runs", "stages", "not ok", "duration (s)", "FLOPs", "kWh", "kWh × PUE", "kg CO2eq")
    return table(headers, rows)


def _totals_row(label: str, records: pd.DataFrame) -> list[str]:
    t: CostTotals = cost_totals(records)
    return [label, str(records["run_dir"].nunique()), str(t.num_stages), str(t.num_not_ok),
            fmt_number(t.duration_s), fmt_number(t.flops), fmt_number(t.energy_kwh),
            fmt_number(t.facility_energy_kwh), fmt_number(t.co2_kg)]


# --- 5. Environment --------------------------------------------------------------------------------------

def environment_section(frame: pd.DataFrame) -> str:
    """Per run: the exact command, code and config identity, hardware and library versions."""
    parts = ["## Environment", "What is needed to reproduce each run, as its records hold it."]
    for records in iter_runs(frame):
        parts += [run_heading(records), table(("", "value"), _environment_rows(records), right_align_from=2)]
    return "\n\n".join(parts)


def _environment_rows(records: pd.DataFrame) -> list[list[str]]:
    def text(column: str) -> str:
        return _distinct(records, column) or NOT_AVAILABLE

    command = _distinct(records, "command")
    rows = [["command", code(command.replace("`", "'")) if command else NOT_AVAILABLE],
            ["run directory", code(_distinct(records, "run_dir"))], ["git sha", code(_distinct(records, "git_sha"))],
            ["config hash", code(_distinct(records, "config_hash"))],
            ["grid", f"{text('country_iso_code')}, {text('intensity_g_per_kwh')} g/kWh "
                     f"({text('intensity_source')}), PUE {text('pue')}"],
            ["CPU/RAM attribution", _attribution(_distinct(records, "tracking_mode"))]]
    columns = sorted(records.columns)
    rows += [[f"hardware: {c.split('.', 1)[1]}", text(c)] for c in columns if c.startswith("hardware.")]
    versions = [f"{c.split('.', 1)[1]} {_distinct(records, c)}" for c in columns
                if c.startswith("versions.") and _distinct(records, c)]
    rows.append(["versions", " · ".join(versions) or NOT_AVAILABLE])
    return rows


def _attribution(mode: str | None) -> str:
    """What codecarbon's tracking mode means for the CPU and RAM figures."""
    meaning = {"machine": "the whole machine's CPU and RAM draw (other work on it included)",
               "process": "this process's share: CPU by its share of the load, RAM by its own memory"}
    if mode is None:
        return "not recorded (runs before greendistil recorded it measured the whole machine)"
    return "; ".join(f"{code(m)}: {meaning.get(m, m)}" for m in mode.split(" / "))


def _distinct(records: pd.DataFrame, column: str) -> str | None:
    """The column's distinct values joined with ' / ' (one value when the stages agree), or None."""
    if column not in records:
        return None
    values = dict.fromkeys(fmt_number(v, 4) if isinstance(v, float) else str(v)
                           for v in records[column] if not is_missing(v))
    return " / ".join(values) or None
