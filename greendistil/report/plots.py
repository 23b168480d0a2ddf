"""The report's figures: small PNGs (800 × 500 px) drawn with matplotlib from the records.

Each `plot_*` function draws one figure, writes it to `path` and returns `path`. Estimated figures are drawn
hatched or labelled as estimates; figures that were not measured are left out, never drawn as 0. Figures are
built with `matplotlib.figure.Figure`, not pyplot: PNGs render through Agg without touching the caller's
backend or pyplot's global figure list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from greendistil.report.compare import TeacherStudent
from greendistil.report.costs import ModelPoint, pareto_optimal
from greendistil.report.frame import first_value, number, value
from greendistil.report.provenance import source_kind

logger = logging.getLogger(__name__)

FIGSIZE_IN = (8.0, 5.0)
DPI = 100
COMPONENT_COLORS = {"cpu": "#4C72B0", "gpu": "#DD8452", "ram": "#55A868"}
ROLE_MARKERS = {"teacher": "o", "student": "^"}
ROLE_COLORS = {"teacher": "#4C72B0", "student": "#DD8452"}
POWER_FILE = "power.csv"
_KWH_TO_J = 3.6e6


def energy_unit(max_kwh: float) -> tuple[float, str]:
    """(factor, unit) that shows `max_kwh` as a readable number: kWh, Wh or mWh."""
    for factor, unit in ((1.0, "kWh"), (1e3, "Wh")):
        if max_kwh * factor >= 1.0:
            return factor, unit
    return 1e6, "mWh"


def plot_energy_by_stage(records: pd.DataFrame, path: Path) -> Path:
    """One run: a bar per stage, stacked CPU / GPU / RAM energy; estimated parts hatched."""
    fig, ax = _figure()
    rows = [row for _, row in records.iterrows()]
    totals = [number(row, "energy_kwh") or 0.0 for row in rows]
    factor, unit = energy_unit(max(totals, default=0.0))
    labels = [_stage_label(row) for row in rows]
    bottoms = [0.0] * len(rows)
    for component, color in COMPONENT_COLORS.items():
        for i, row in enumerate(rows):
            kwh = number(row, f"{component}_energy_kwh")
            if kwh is None:
                continue  # not measured: drawn as nothing, listed in the table as n/a
            estimated = source_kind(value(row, f"{component}_energy_source")) != "measured"
            ax.bar(i, kwh * factor, bottom=bottoms[i], color=color, edgecolor="white",
                   hatch="///" if estimated else None, width=0.6)
            bottoms[i] += kwh * factor
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel(f"energy ({unit})")
    ax.set_title(f"Energy per stage — {first_value(records, 'run_id')}")
    handles = [Patch(color=c, label=k.upper()) for k, c in COMPONENT_COLORS.items()]
    handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///", label="estimated (hatched)"))
    ax.legend(handles=handles, loc="upper left", fontsize=9)
    ax.margins(y=0.15)
    return _save(fig, path)


def plot_score_vs_cost(points: Sequence[ModelPoint], path: Path, *, task: str) -> Path:
    """One task: dev score against FLOPs and against kWh to produce each model, Pareto fronts drawn."""
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    axes = fig.subplots(1, 2, sharey=True)
    runs = list(dict.fromkeys(p.run_id for p in points))
    colors = {run: matplotlib.colormaps["tab10"](i % 10) for i, run in enumerate(runs)}
    for ax, attribute, label in ((axes[0], "flops", "FLOPs to produce the model"),
                                 (axes[1], "energy_kwh", "energy to produce the model (kWh)")):
        _scatter_with_front(ax, points, attribute, colors)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dev score (task's GLUE score)")
    handles = [Line2D([], [], marker=m, ls="", color="grey", label=r) for r, m in ROLE_MARKERS.items()]
    handles.append(Line2D([], [], ls="--", color="black", label="Pareto front"))
    if len(runs) <= 8:
        handles += [Patch(color=colors[r], label=_short(r)) for r in runs]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle(f"Score vs cost — task {task}")
    return _save(fig, path)


def _scatter_with_front(ax: Axes, points: Sequence[ModelPoint], attribute: str, colors: dict) -> None:
    known = [p for p in points if getattr(p, attribute) is not None and p.score is not None]
    for p in known:
        ax.scatter(getattr(p, attribute), p.score, marker=ROLE_MARKERS.get(p.role, "s"), color=colors[p.run_id],
                   s=60, edgecolor="black", linewidth=0.5, zorder=3)
    costs = [getattr(p, attribute) for p in known]
    flags = pareto_optimal(costs, [p.score for p in known])
    front = sorted((c, p.score) for c, p, f in zip(costs, known, flags) if f)
    if front:
        ax.step([c for c, _ in front], [s for _, s in front], where="post", ls="--", color="black", zorder=2)
    if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    if not known:
        ax.text(0.5, 0.5, "no scored model with this cost", transform=ax.transAxes, ha="center")


def plot_teacher_student(comparison: TeacherStudent, path: Path) -> Path:
    """One run: parameters, FLOPs per example (training and inference) and dev score, teacher beside student."""
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    axes = fig.subplots(1, 3)
    roles = (comparison.teacher, comparison.student)
    _role_bars(axes[0], ["parameters"], [[(r.num_params or 0) / 1e6] for r in roles], "parameters (millions)")
    flops = [[r.train_flops_per_example or 0.0, r.inference_flops_per_example or 0.0] for r in roles]
    _role_bars(axes[1], ["training*", "inference"], flops, "FLOPs per example")
    axes[1].text(0.02, -0.16, "* student: incl. teacher forward", transform=axes[1].transAxes, fontsize=7)
    _role_bars(axes[2], ["dev score"], [[r.score or 0.0] for r in roles], "dev score")
    axes[2].set_ylim(0, 1.05 * max(1.0, *(r.score or 0.0 for r in roles)))
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Teacher vs student — {comparison.run_id}")
    return _save(fig, path)


def _role_bars(ax: Axes, groups: list[str], heights: list[list[float]], ylabel: str) -> None:
    """Grouped bars: one group per entry of `groups`, a teacher and a student bar in each (0 = not recorded)."""
    width = 0.38
    for offset, role, role_heights in ((-width / 2, "teacher", heights[0]), (width / 2, "student", heights[1])):
        xs = [i + offset for i in range(len(groups))]
        ax.bar(xs, role_heights, width=width, color=ROLE_COLORS[role], label=role)
        for x, h in zip(xs, role_heights):
            ax.text(x, h, f"{h:.3g}" if h else "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.12)


def plot_power(records: pd.DataFrame, run_dir: Path, path: Path) -> Path:
    """Power over the run: NVML samples from power.csv when present, else each stage's mean power as flat lines."""
    fig, ax = _figure()
    starts = _stage_starts_s(records)
    for (_, row), start in zip(records.iterrows(), starts):
        end = start + (number(row, "duration_s") or 0.0)
        ax.axvspan(start, end, color="grey", alpha=0.08)
        ax.text((start + end) / 2, 1.0, str(row["stage"]), transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8)
    samples = _power_samples(run_dir)
    if samples is not None:
        _draw_samples(ax, samples, records, starts)
    _draw_mean_power(ax, records, starts, with_gpu=samples is None)
    ax.set_xlabel("time since the run's first stage started (s)")
    ax.set_ylabel("power (W)")
    ax.set_title(f"Power per stage — {first_value(records, 'run_id')}", pad=18)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def _draw_mean_power(ax: Axes, records: pd.DataFrame, starts: list[float], *, with_gpu: bool) -> None:
    """Mean power per stage = its energy ÷ its duration, one flat line per component."""
    components = ["cpu", "ram"] + (["gpu"] if with_gpu else [])
    labelled: set[str] = set()
    for (_, row), start in zip(records.iterrows(), starts):
        duration_s = number(row, "duration_s")
        for component in components:
            kwh = number(row, f"{component}_energy_kwh")
            if kwh is None or not duration_s:
                continue
            kind = source_kind(value(row, f"{component}_energy_source"))
            label = f"{component.upper()} mean ({'codecarbon estimate' if kind == 'estimated' else kind})"
            ax.hlines(kwh * _KWH_TO_J / duration_s, start, start + duration_s, color=COMPONENT_COLORS[component],
                      linestyles="--" if kind == "estimated" else "-", linewidth=2,
                      label=None if label in labelled else label)
            labelled.add(label)


def _draw_samples(ax: Axes, samples: pd.DataFrame, records: pd.DataFrame, starts: list[float]) -> None:
    offsets = dict(zip(records["stage"].astype(str), starts))
    samples = samples.assign(t_s=samples["elapsed_s"] + samples["stage"].astype(str).map(offsets))
    for device, group in samples.dropna(subset=["t_s"]).groupby("device"):
        ax.plot(group["t_s"], group["power_w"], lw=1, label=f"GPU {device} (NVML samples, measured)")


def _power_samples(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / POWER_FILE
    if not path.is_file():
        return None
    try:
        samples = pd.read_csv(path)
        return samples if {"stage", "elapsed_s", "device", "power_w"} <= set(samples.columns) else None
    except (OSError, ValueError, pd.errors.ParserError) as err:
        logger.warning("cannot read %s (%s): drawing mean power instead", path, err)
        return None


def _stage_starts_s(records: pd.DataFrame) -> list[float]:
    """Each stage's start in seconds after the run's first start; stages placed end to end without timestamps."""
    started = pd.to_datetime(records["started_at"], utc=True, errors="coerce")
    if started.notna().all() and len(started):
        return [float(s) for s in (started - started.min()).dt.total_seconds()]
    durations = [number(row, "duration_s") or 0.0 for _, row in records.iterrows()]
    return [sum(durations[:i]) for i in range(len(durations))]


def _stage_label(row: pd.Series) -> str:
    status = str(value(row, "status") or "")
    return f"{row['stage']}\n({value(row, 'role') or ''})" + ("" if status == "ok" else f"\n⚠ {status}")


def _short(run_id: str) -> str:
    return run_id if len(run_id) <= 28 else run_id[:12] + "…" + run_id[-12:]


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path
