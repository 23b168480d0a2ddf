"""A sweep's report (`greendistil sweep`): every trial's score and cost, the best configuration and what it
cost, the sweep's total cost and the share of it that produced the final model, and expected validation
performance against budget (`report.expected_max`), per sweep and, for several sweeps, side by side.

A trial's score is its student's dev score (the task's GLUE score from the last `evaluate` record; the
teacher's in a sweep without a student). Its cost is everything its run directory recorded; a shared
teacher's run is counted once, in the sweep's total and in the cost of the final model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from greendistil.config.sweep import format_value
from greendistil.report.expected_max import MIN_TRIALS, curves_cross, expected_max
from greendistil.report.frame import column_sum, number
from greendistil.report.markdown import fmt_number, fmt_percent, table
from greendistil.report.provenance import energy_kinds
from greendistil.runlog.sweeps import TEACHER_RUN, read_sweep

EVALUATE_KIND = "evaluate"


@dataclass(frozen=True, kw_only=True)
class TrialFigures:
    trial_id: str
    label: str
    status: str  # ok, or the first record status that is not (failed, interrupted, stopped-budget, missing)
    score: float | None
    energy_kwh: float | None
    co2_kg: float | None
    flops: float | None
    duration_s: float | None


@dataclass(frozen=True, kw_only=True)
class SweepFigures:
    sweep_id: str
    definition: dict[str, Any]
    trials: tuple[TrialFigures, ...]
    teacher: TrialFigures | None  # the shared teacher's run
    energy_kinds: str  # " (est.)" when any energy in the sweep is an estimate

    def scored(self) -> list[TrialFigures]:
        return [t for t in self.trials if t.status == "ok" and t.score is not None]

    def best(self) -> TrialFigures | None:
        scored = self.scored()
        return max(scored, key=lambda t: t.score or 0.0) if scored else None

    def total(self, key: str) -> float | None:
        runs = [*self.trials, *([self.teacher] if self.teacher else [])]
        values = [getattr(t, key) for t in runs if getattr(t, key) is not None]
        return sum(values) if values else None

    def shared(self, key: str) -> float:
        return (getattr(self.teacher, key) or 0.0) if self.teacher is not None else 0.0


def sweep_folders(frame: pd.DataFrame) -> list[Path]:
    """The sweep folders the frame's runs belong to, in order of appearance."""
    parents = dict.fromkeys(Path(str(d)).parent for d in frame["run_dir"].dropna())
    return [p for p in parents if read_sweep(p) is not None]


def sweep_figures(folder: Path, frame: pd.DataFrame) -> SweepFigures:
    definition = read_sweep(folder) or {}
    in_folder = frame[frame["run_dir"].map(lambda d: Path(str(d)).parent == folder)]
    by_run = {str(Path(str(d)).name): records for d, records in in_folder.groupby("run_dir", sort=False)}
    trials = tuple(_trial(t["trial_id"], _label(t["values"]), by_run.get(t["trial_id"]))
                   for t in definition.get("trials", []))
    teacher = _trial(TEACHER_RUN, "the shared teacher", by_run.get(TEACHER_RUN)) if definition.get("share_teacher") \
        else None
    return SweepFigures(sweep_id=folder.name, definition=definition, trials=trials, teacher=teacher,
                        energy_kinds=energy_kinds(in_folder) if not in_folder.empty else "")


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in values.items())


def _trial(trial_id: str, label: str, records: pd.DataFrame | None) -> TrialFigures:
    if records is None or records.empty:
        return TrialFigures(trial_id=trial_id, label=label, status="not run", score=None, energy_kwh=None,
                            co2_kg=None, flops=None, duration_s=None)
    statuses = [str(s) for s in records["status"]]
    status = next((s for s in statuses if s != "ok"), "ok")
    evaluate = records[records["kind"] == EVALUATE_KIND]
    score = None
    if not evaluate.empty:
        last = evaluate.iloc[-1]
        score = number(last, "metric.student.score")
        score = number(last, "metric.teacher.score") if score is None else score
    return TrialFigures(trial_id=trial_id, label=label, status=status, score=score,
                        energy_kwh=column_sum(records, "energy_kwh"), co2_kg=column_sum(records, "co2_kg"),
                        flops=column_sum(records, "flops"), duration_s=column_sum(records, "duration_s"))


def budget_curve(sweep: SweepFigures, key: str = "energy_kwh") -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray] | None:
    """(n, cost of n trials, E[max], std) for n = 1..N: the cost axis is the shared teacher plus n times the
    mean cost of a scored trial. None below `MIN_TRIALS` scored trials."""
    scored = sweep.scored()
    if len(scored) < MIN_TRIALS:
        return None
    curve = expected_max([t.score for t in scored if t.score is not None])
    costs = [getattr(t, key) for t in scored if getattr(t, key) is not None]
    mean_cost = float(np.mean(costs)) if len(costs) == len(scored) else float("nan")
    return curve.n_trials, sweep.shared(key) + curve.n_trials * mean_cost, curve.mean, curve.std


def sweep_section(sweeps: list[SweepFigures]) -> str:
    """'## Sweeps': per sweep its trials, best configuration, total cost and budget curve; then whether the
    sweeps' curves cross. "" without a sweep."""
    if not sweeps:
        return ""
    parts = ["## Sweeps", "Each trial is a run of its own; its score is the student's dev score (the task's GLUE "
             "score), its cost everything its run recorded. Expected best score of n trials: Dodge et al. "
             "(2019), E[max of n] over the trials' scores drawn with replacement, ± one standard deviation; "
             f"against kWh, n times the mean trial's energy (plus a shared teacher). Not estimated below "
             f"{MIN_TRIALS} scored trials."]
    for sweep in sweeps:
        parts += _one_sweep(sweep)
    if len(sweeps) > 1:
        parts.append(_crossing(sweeps))
    return "\n\n".join(parts)


def _one_sweep(sweep: SweepFigures) -> list[str]:
    est = sweep.energy_kinds
    axes = "; ".join(f"`{a['key']}` ∈ {a['values']}" for a in sweep.definition.get("axes", []))
    drawn = sweep.definition.get("random_trials")
    how = f"{drawn} points drawn at random (seed {sweep.definition.get('seed')})" if drawn else "every grid point"
    seeds = any(a["key"] == "run.seed" for a in sweep.definition.get("axes", []))
    teacher = (f"one teacher (run `{TEACHER_RUN}`: {fmt_number(sweep.teacher.energy_kwh)} kWh{est}) serves every "
               "trial" + (", trained once with the config's own seed: the seeds vary the students' stages only"
                          if seeds else "") if sweep.teacher is not None else "each trial trains its own teacher")
    rows = [[t.trial_id, t.label, t.status, fmt_number(t.score, 4), fmt_number(t.energy_kwh) + est,
             fmt_number(t.co2_kg * 1000 if t.co2_kg is not None else None), fmt_number(t.flops),
             fmt_number(t.duration_s)] for t in sweep.trials]
    flops = {t.flops for t in sweep.scored() if t.flops is not None}
    same_work = (" Every scored trial did the same FLOPs: their energies differ by the machine's pace, not by "
                 "their configuration." if len(flops) == 1 and len(sweep.scored()) > 1 else "")
    parts = [f"### Sweep `{sweep.sweep_id}`", f"{len(sweep.trials)} trials over {axes} ({how}); {teacher}.{same_work}",
             table(("trial", "values", "status", "score", "kWh", "g CO2eq", "FLOPs", "s"), rows, right_align_from=3)]
    best, total_kwh = sweep.best(), sweep.total("energy_kwh")
    if best is not None:
        final_kwh = (best.energy_kwh or 0.0) + sweep.shared("energy_kwh")
        share = fmt_percent(final_kwh / total_kwh) if total_kwh else "n/a"
        parts.append(f"Best: `{best.trial_id}` ({best.label}), score {fmt_number(best.score, 4)}, at "
                     f"{fmt_number(final_kwh)} kWh{est} with its teacher. The whole sweep cost "
                     f"{fmt_number(total_kwh)} kWh{est}, {fmt_number((sweep.total('co2_kg') or 0.0) * 1000)} g CO2eq "
                     f"and {fmt_number(sweep.total('flops'))} FLOPs; the final model's share of it: {share}.")
    parts += _over_seeds(sweep)
    curve = budget_curve(sweep)
    if curve is None:
        parts.append(f"No budget curve: {len(sweep.scored())} scored trial(s), fewer than {MIN_TRIALS}.")
    else:
        ns, kwh, mean, std = curve
        shown = sorted({int(n) for n in (1, 2, 3, 5, 10, 20, 50) if n <= len(ns)} | {len(ns)})
        parts.append(table(("trials n", f"kWh{est}", "E[max score]", "± std"),
                           [[str(n), fmt_number(kwh[n - 1]), fmt_number(mean[n - 1], 4), fmt_number(std[n - 1], 2)]
                            for n in shown], right_align_from=1))
    return parts


def _crossing(sweeps: list[SweepFigures]) -> str:
    """Whether each pair of sweeps' expected-max curves change order, over the trials both have."""
    lines = []
    curves = {s.sweep_id: budget_curve(s) for s in sweeps}
    ids = [sid for sid, c in curves.items() if c is not None]
    for i, first in enumerate(ids):
        for second in ids[i + 1:]:
            a, b = curves[first], curves[second]
            assert a is not None and b is not None
            n = min(len(a[0]), len(b[0]))
            crossed = curves_cross(a[2][:n], b[2][:n])
            lead = first if a[2][n - 1] >= b[2][n - 1] else second
            on_energy = _cross_on_energy(a, b)
            energy = ("; no common energy range to compare on" if on_energy is None else
                      f"; against energy they {'cross' if on_energy else 'do not cross'} where both are drawn")
            lines.append(f"`{first}` and `{second}`: the curves {'cross' if crossed else 'do not cross'} over "
                         f"1 to {n} trials{energy}; at {n} trials `{lead}` leads."
                         + (" Which is better depends on the budget." if crossed or on_energy else ""))
    return " ".join(lines) if lines else "Fewer than two sweeps have a budget curve: no comparison."


def _over_seeds(sweep: SweepFigures) -> list[str]:
    """With a `run.seed` axis: each configuration's score over its seeds (median first, as DistilBERT reports
    its Table 1) and the cost of one seed; nothing without one."""
    axes = [a["key"] for a in sweep.definition.get("axes", [])]
    if "run.seed" not in axes:
        return []
    values = {t["trial_id"]: t["values"] for t in sweep.definition.get("trials", [])}
    groups: dict[str, list[TrialFigures]] = {}
    for trial in sweep.scored():
        rest = {k: v for k, v in values.get(trial.trial_id, {}).items() if k != "run.seed"}
        groups.setdefault(_label(rest) or "the config", []).append(trial)
    rows = []
    for label, members in groups.items():
        scores = np.array([t.score for t in members], dtype=float)
        kwh = [t.energy_kwh for t in members if t.energy_kwh is not None]
        std = float(scores.std(ddof=1)) if len(scores) > 1 else None
        rows.append([label, str(len(members)), fmt_number(float(np.median(scores)), 4),
                     f"{fmt_number(float(scores.mean()), 4)} ± {fmt_number(std, 2)}",
                     fmt_number(float(scores.min()), 4), fmt_number(float(scores.max()), 4),
                     fmt_number(float(np.mean(kwh)) if kwh else None) + sweep.energy_kinds])
    return ["Over seeds (sample standard deviation; the cost of one seed is its trial's mean kWh):",
            table(("configuration", "seeds", "median", "mean ± std", "min", "max", "kWh per seed"), rows,
                  right_align_from=1)]


def _cross_on_energy(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool | None:
    """Whether two budget curves change order against energy, on the range both cover (None: no overlap)."""
    low, high = max(a[1][0], b[1][0]), min(a[1][-1], b[1][-1])
    if not low < high:
        return None
    grid = np.linspace(low, high, 64)
    return curves_cross(np.interp(grid, a[1], a[2]), np.interp(grid, b[1], b[2]))
