"""Forecasts and budgets: what the plan forecast for each window before the run, what each training
segment forecast for itself while it ran, each against what was then spent, and which stages a budget
stopped.

An in-run forecast is made at fixed fractions of a stage's steps (`measure.forecast`), for the segment it
belongs to: it is compared with that segment's own record. The plan's forecast (`greendistil plan`, kept in
every record of the window as `forecast.plan.*`) covers the whole window: it is compared with the sum over
the window's segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from greendistil.config.types import BUDGET_UNITS
from greendistil.report.frame import first_value, iter_runs
from greendistil.report.markdown import fmt_number, fmt_percent, table
from greendistil.report.provenance import energy_kinds
from greendistil.runlog.store import read_records

_HEADERS = ("run", "stage", "segment", "forecast at", "forecast s", "actual s", "s error", "forecast kWh",
            "actual kWh", "kWh error")
_PLAN_HEADERS = ("run", "window", "planned s", "actual s", "s error", "planned kWh", "actual kWh", "kWh error",
                 "planned FLOPs", "counted FLOPs", "FLOPs error")


def forecasts_section(frame: pd.DataFrame) -> str:
    """'## Forecasts and budgets' ("" when no record has a forecast or a budget)."""
    records = [(str(first_value(run, "run_id")), r) for run in iter_runs(frame)
               for r in read_records(Path(str(first_value(run, "run_dir"))))]
    rows = [row for run_id, record in records for row in _forecast_rows(run_id, record)]
    plan_rows = _plan_rows(records)
    stops = [_stop_line(run_id, r) for run_id, r in records if r.get("status") == "stopped-budget"]
    budgeted = [r for _, r in records if r.get("budget")]
    if not rows and not plan_rows and not budgeted:
        return ""
    parts = ["## Forecasts and budgets"]
    if plan_rows:
        methods = sorted({str(r["forecast"][key]) for _, r in records for key in ("plan.duration_method",
                                                                                   "plan.energy_method")
                          if (r.get("forecast") or {}).get(key)})
        parts += ["Before the run, `greendistil plan` calibrated each stage on a few steps on the same kind of "
                  f"meters and forecast every window ({', '.join(f'`{m}`' for m in methods)}). Each window's plan "
                  "is shown beside what the window then spent over all its segments (error = plan / actual - 1; "
                  "the counted FLOPs are the record's `flops`).",
                  table(_PLAN_HEADERS, plan_rows, right_align_from=2)]
    if rows:
        method = next(r["forecast"]["method"] for _, r in records if (r.get("forecast") or {}).get("method"))
        parts += ["While a training stage runs, it forecasts its segment's duration and energy from the rate "
                  f"measured since its warm-up (`{method}`), at fixed fractions of its steps. Each forecast is "
                  "shown beside what the segment then spent (error = forecast / actual - 1; none for a segment "
                  "that stopped before its end). The forecast extrapolates the training steps; the actual figures "
                  "also hold the segment's model loading and saving, so errors lean negative on short stages. "
                  "' (est.)' marks an actual kWh that is an estimate (the cost table says of what).",
                  table(_HEADERS, rows, right_align_from=3)]
    if budgeted:
        limits = sorted({key.removeprefix("limit.") for r in budgeted for key in r["budget"] if key.startswith("limit.")})
        parts.append("Budgets in force: " + ", ".join(f"`{key}`" for key in limits) + ". " + (
            " ".join(stops) if stops else "No stage's record says it was stopped by one (a run stopped before a "
            "stage began has no record of that stage: the cost table lacks it)."))
    return "\n\n".join(parts)


def _forecast_rows(run_id: str, record: dict[str, Any]) -> list[list[str]]:
    forecast = record.get("forecast") or {}
    fractions = sorted(float(key.removeprefix("at_").removesuffix(".step"))
                       for key in forecast if key.startswith("at_") and key.endswith(".step"))
    stage = _stage_label(record)
    # A segment that stopped early (a budget, a signal, a failure) never did the steps its forecasts cover.
    ended = record.get("status") == "ok"
    segment = str(record.get("segment")) + ("" if ended else f" ({record.get('status')})")
    rows = []
    for fraction in fractions:
        prefix = f"at_{fraction:g}"
        duration, energy = forecast.get(f"{prefix}.duration_s"), forecast.get(f"{prefix}.energy_kwh")
        rows.append([run_id, f"`{stage}`", segment, f"{fraction:.0%} (step {forecast.get(f'{prefix}.step')})",
                     fmt_number(duration), fmt_number(record.get("duration_s")),
                     _error(duration, record.get("duration_s"), ended),
                     fmt_number(energy), fmt_number(record.get("energy_kwh")) + energy_kinds(pd.DataFrame([record])),
                     _error(energy, record.get("energy_kwh"), ended)])
    return rows


def _plan_rows(records: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    """One row per (run, task, window) whose records hold the plan's forecast: the plan against the sum
    over the window's segments (no error for a window that has not ended)."""
    windows: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
    for run_id, record in records:
        if (record.get("forecast") or {}).get("plan.duration_s") is not None:
            windows.setdefault((run_id, record.get("task"), record["stage"]), []).append(record)
    rows = []
    for (run_id, _, _), segments in windows.items():
        plan, last = segments[0]["forecast"], segments[-1]
        ended = last.get("status") == "ok"
        cells = [run_id, f"`{_stage_label(last)}`" + ("" if ended else f" ({last.get('status')})")]
        kinds = energy_kinds(pd.DataFrame(segments))  # ' (est.)' on an estimated actual
        for key in ("duration_s", "energy_kwh", "flops"):
            values = [s.get(key) for s in segments]
            actual = sum(values) if None not in values else None
            shown = fmt_number(actual) + (kinds if key == "energy_kwh" and actual is not None else "")
            cells += [fmt_number(plan.get(f"plan.{key}")), shown, _error(plan.get(f"plan.{key}"), actual, ended)]
        rows.append(cells)
    return rows


def _stage_label(record: dict[str, Any]) -> str:
    return record["stage"] if not record.get("task") else f"{record['stage']} ({record['task']})"


def _error(forecast: float | None, actual: float | None, ended: bool) -> str:
    if not ended:
        return "n/a (stopped)"
    if forecast is None or actual is None or actual == 0:
        return "n/a"
    return ("+" if forecast >= actual else "") + fmt_percent(forecast / actual - 1.0)


def _stop_line(run_id: str, record: dict[str, Any]) -> str:
    budget = record.get("budget") or {}
    key = str(budget.get("stopped_by"))
    unit = BUDGET_UNITS.get(key.rsplit(".", 1)[-1], "")
    stage = _stage_label(record)
    at_step = (record.get("resumed_from_step") or 0) + (record.get("num_steps") or 0)
    return (f"`{stage}` of {run_id} (segment {record.get('segment')}) stopped at `{key}` = "
            f"{fmt_number(budget.get(f'limit.{key}'))} {unit} at step {at_step}, with "
            f"{fmt_number(budget.get('spent_at_stop'))} {unit} spent (energy {budget.get('checked_against')}).")
