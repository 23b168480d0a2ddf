"""The report's figures: small PNGs (800 × 500 px) drawn with matplotlib from the records.

Each `plot_*` function draws one figure, writes it to `path` and returns `path`. Estimated figures are drawn
hatched or labelled as estimates; figures that were not measured are left out, never drawn as 0. Figures are
built with `matplotlib.figure.Figure`, not pyplot: PNGs render through Agg without touching the caller's
backend or pyplot's global figure list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from greendistil.report.compare import RoleFigures, TeacherStudent
from greendistil.runtime.units import J_PER_KWH
from greendistil.report.costs import ModelPoint, pareto_optimal
from greendistil.report.frame import first_value, number, task_order, value
from greendistil.report.markdown import fmt_number
from greendistil.report.provenance import source_kind

logger = logging.getLogger(__name__)

FIGSIZE_IN = (8.0, 5.0)
DPI = 100
COMPONENT_COLORS = {"cpu": "#4C72B0", "gpu": "#DD8452", "ram": "#55A868"}
ROLE_MARKERS = {"teacher": "o", "student": "^", "general_student": "D"}
ROLE_COLORS = {"teacher": "#4C72B0", "student": "#DD8452", "general_student": "#55A868"}
POWER_FILE = "power.csv"
SPAN_ROW = 0.06  # height of a row of stage names above the power plot, in axes fractions



def energy_unit(max_kwh: float) -> tuple[float, str]:
    """(factor, unit) that shows `max_kwh` as a readable number: kWh, Wh or mWh."""
    for factor, unit in ((1.0, "kWh"), (1e3, "Wh")):
        if max_kwh * factor >= 1.0:
            return factor, unit
    return 1e6, "mWh"


def draw_energy_by_stage(records: pd.DataFrame) -> Figure:
    """One run: a horizontal bar per stage, stacked CPU / GPU / RAM energy; estimated parts hatched. The figure
    grows with the number of stages, so the stage names never overlap (a suite has dozens)."""
    rows = [row for _, row in records.iterrows()]
    fig = Figure(figsize=(FIGSIZE_IN[0], max(FIGSIZE_IN[1], 1.6 + 0.32 * len(rows))), dpi=DPI)
    ax = fig.subplots()
    totals = [number(row, "energy_kwh") or 0.0 for row in rows]
    factor, unit = energy_unit(max(totals, default=0.0))
    lefts = [0.0] * len(rows)
    for component, color in COMPONENT_COLORS.items():
        for i, row in enumerate(rows):
            kwh = number(row, f"{component}_energy_kwh")
            if kwh is None:
                continue  # not measured: drawn as nothing, listed in the table as n/a
            estimated = source_kind(value(row, f"{component}_energy_source")) != "measured"
            ax.barh(i, kwh * factor, left=lefts[i], color=color, edgecolor="white",
                    hatch="///" if estimated else None, height=0.6)
            lefts[i] += kwh * factor
    for i, row in enumerate(rows):
        total = number(row, "energy_kwh")
        ax.text(lefts[i], i, " not measured" if total is None else " " + fmt_number(total * factor), ha="left",
                va="center", fontsize=8)
    suite = len(task_order(records["task"])) > 1 or records["task"].isna().any()
    ax.set_yticks(range(len(rows)), [_stage_label(row, with_task=suite) for row in rows], fontsize=8)
    ax.invert_yaxis()  # the first stage on top: the run reads top to bottom
    ax.set_xlabel(f"energy ({unit})")
    ax.set_xlim(0, 1.25 * max(lefts, default=0.0) or 1.0)  # room for the totals right of the bars
    ax.set_title(f"Energy per stage — {first_value(records, 'run_id')}")
    handles = [Patch(color=c, label=k.upper()) for k, c in COMPONENT_COLORS.items()]
    handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///", label="estimated (hatched)"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def plot_energy_by_stage(records: pd.DataFrame, path: Path) -> Path:
    return save_figure(draw_energy_by_stage(records), path)


def plot_score_vs_cost(points: Sequence[ModelPoint], path: Path, *, task: str) -> Path:
    return save_figure(draw_score_vs_cost(points, task=task), path)


def draw_score_vs_cost(points: Sequence[ModelPoint], *, task: str) -> Figure:
    """One task: dev score against FLOPs and against kWh to produce each model, Pareto fronts drawn."""
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    axes = fig.subplots(1, 2, sharey=True)
    runs = list(dict.fromkeys(p.run_id for p in points))
    colors = {run: matplotlib.colormaps["tab10"](i % 10) for i, run in enumerate(runs)}
    factor, unit = energy_unit(max((p.energy_kwh or 0.0 for p in points), default=0.0))
    for ax, attribute, scale, label in ((axes[0], "flops", 1.0, "FLOPs to produce the model"),
                                        (axes[1], "energy_kwh", factor, f"energy to produce the model ({unit})")):
        _scatter_with_front(ax, points, attribute, scale, colors)
        ax.set_xlabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dev score (task's GLUE score)")
    drawn = {p.role for p in points}
    handles = [Line2D([], [], marker=m, ls="", color="grey", label=r) for r, m in ROLE_MARKERS.items() if r in drawn]
    handles.append(Line2D([], [], ls="--", marker="o", markerfacecolor="none", markersize=10, color="black",
                          label="Pareto front"))
    scored = [r for r in runs if any(p.run_id == r and p.score is not None for p in points)]
    if len(scored) <= 6:  # beyond that the legend crowds the figure; the table names every point
        handles += [Patch(color=colors[r], label=_short(r)) for r in scored]
    # Below the axes: inside, it would hide the costly, lower-scoring students in the lower right.
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=min(len(handles), 5))
    fig.suptitle(f"Score vs cost — task {task}")
    fig.tight_layout(rect=(0, 0.1 if len(handles) <= 5 else 0.14, 1, 1))
    return fig


def _scatter_with_front(ax: Axes, points: Sequence[ModelPoint], attribute: str, scale: float,
                        colors: dict) -> None:
    """The scored points with a known cost (× `scale`), the Pareto-optimal ones ringed and joined."""
    known = [p for p in points if getattr(p, attribute) is not None and p.score is not None]
    for p in known:
        ax.scatter(getattr(p, attribute) * scale, p.score, marker=ROLE_MARKERS.get(p.role, "s"), color=colors[p.run_id],
                   s=60, edgecolor="black", linewidth=0.5, zorder=3)
    costs = [getattr(p, attribute) * scale for p in known]
    flags = pareto_optimal(costs, [p.score for p in known])
    front = sorted((c, p.score) for c, p, f in zip(costs, known, flags) if f)
    if front:
        ax.step([c for c, _ in front], [s for _, s in front], where="post", ls="--", color="black", zorder=2)
        ax.scatter([c for c, _ in front], [s for _, s in front], s=180, facecolors="none", edgecolors="black",
                   zorder=4)
    ax.margins(0.1)
    if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    if not known:
        ax.text(0.5, 0.5, "no scored model with this cost", transform=ax.transAxes, ha="center")


def plot_teacher_student(comparison: TeacherStudent, path: Path, *, title: str | None = None,
                         general_student: RoleFigures | None = None) -> Path:
    return save_figure(draw_teacher_student(comparison, title=title, general_student=general_student), path)


def draw_teacher_student(comparison: TeacherStudent, *, title: str | None = None,
                         general_student: RoleFigures | None = None) -> Figure:
    """One run (one task of a suite): parameters, FLOPs per example (training and inference) and dev score,
    teacher beside student, and beside the suite's general student when it has one."""
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    axes = fig.subplots(1, 3)
    student = comparison.student
    trained = student.score is not None or bool(student.train_stages)  # no student: an ablation's run
    roles = [comparison.teacher] + ([student] if trained or general_student is None else []) + (
        [general_student] if general_student is not None else [])
    names = [r.role for r in roles]
    _role_bars(axes[0], ["parameters"], [[(r.num_params or 0) / 1e6] for r in roles], names,
               "parameters (millions)")
    flops = [[r.train_flops_per_example or 0.0, r.inference_flops_per_example or 0.0] for r in roles]
    _role_bars(axes[1], ["training*", "inference"], flops, names, "FLOPs per example", digits=2)
    known = [f for pair in flops for f in pair if f > 0]
    if known and max(known) / min(known) > 20:  # inference is often ~1/3 of training per example, or far less
        axes[1].set_yscale("log")
        axes[1].set_ylabel("FLOPs per example (log scale)")
    axes[1].set_xlabel("* student: incl. teacher forward" + ("; general: incl. shared stages" if general_student
                                                             else ""), fontsize=7)
    _role_bars(axes[2], ["dev score"], [[r.score or 0.0] for r in roles], names, "dev score (task's GLUE score)")
    scores = [r.score or 0.0 for r in roles]
    axes[2].set_ylim(min(0.0, *scores) * 1.1, 1.1 * max(1.0, *scores))  # MCC may be negative
    handles = [Patch(color=ROLE_COLORS[role], label=role) for role in names]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(f"Teacher vs student — {title or comparison.run_id}")
    fig.tight_layout(w_pad=1.5, rect=(0, 0, 1, 0.9 if len(roles) > 2 else 1))  # room for the legend
    return fig


def _role_bars(ax: Axes, groups: list[str], heights: list[list[float]], roles: list[str], ylabel: str,
               digits: int = 3) -> None:
    """Grouped bars: one group per entry of `groups`, a bar per role in each (`heights[role][group]`; 0 = not
    recorded)."""
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if not any(any(role_heights) for role_heights in heights):
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_yticks([])
        ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="grey")
        return
    width = 0.76 / len(roles)
    upright = len(roles) > 2  # three labels side by side outgrow their bars: stand them up
    for index, (role, role_heights) in enumerate(zip(roles, heights, strict=True)):
        xs = [i + (index - (len(roles) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, role_heights, width=width, color=ROLE_COLORS[role], label=role)
        for x, h in zip(xs, role_heights):
            ax.text(x, h, fmt_number(h, digits) if h else "n/a", ha="center", va="bottom", fontsize=7,
                    rotation=90 if upright else 0)
    ax.margins(y=0.25 if upright else 0.12)


def plot_power(records: pd.DataFrame, run_dir: Path, path: Path) -> Path:
    return save_figure(draw_power(records, run_dir), path)


def draw_power(records: pd.DataFrame, run_dir: Path) -> Figure:
    """Power over the run: GPU samples from power.csv when present, and each stage's mean CPU/RAM power
    (plus the mean GPU power when there are no samples) as flat lines. Stages are shaded spans named above
    the axes (a suite's by task); a name that finds no room beside the others is left out and counted."""
    fig, ax = _figure()
    starts = _stage_starts_s(records)
    spans = []
    for (_, row), start in zip(records.iterrows(), starts):
        end = start + (number(row, "duration_s") or 0.0)
        ax.axvspan(start, end, color="grey", alpha=0.08)
        status = "" if value(row, "status") == "ok" else f" ⚠ {value(row, 'status')}"
        spans.append((start, end, f"{row['stage']}{status}", value(row, "task")))
    samples = _power_samples(run_dir)
    highest = _draw_samples(ax, samples, records, starts) if samples is not None else 0.0
    highest = max(highest, _draw_mean_power(ax, records, starts, with_gpu=samples is None))
    ax.set_xlabel("time since the run's first stage started (s)")
    ax.set_ylabel("power (W)")
    ax.set_ylim(0, 1.4 * highest if highest > 0 else 1.0)  # headroom: the legend sits above the lines
    ax.legend(fontsize=8, loc="upper right")
    many_tasks = len({task for *_, task in spans if task is not None}) > 1
    labels = _task_spans(spans) if many_tasks else [(a, b, text) for a, b, text, _ in spans]
    ax.set_title(f"Power per stage — {first_value(records, 'run_id')}", pad=8)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    left_out = _place_span_labels(fig, ax, labels)
    if left_out:
        ax.set_xlabel(f"time since the run's first stage started (s); {left_out} short stage(s) not named above "
                      "(see the cost table)")
    return fig


def _task_spans(spans: list[tuple[float, float, str, Any]]) -> list[tuple[float, float, str]]:
    """Consecutive stages of one task merged into one span named by the task (shared stages: 'shared')."""
    merged: list[tuple[float, float, str]] = []
    for start, end, _, task in spans:
        name = "shared" if task is None else str(task)
        if merged and merged[-1][2] == name:
            merged[-1] = (merged[-1][0], end, name)
        else:
            merged.append((start, end, name))
    return merged


def _place_span_labels(fig: Figure, ax: Axes, labels: list[tuple[float, float, str]], rows: int = 3) -> int:
    """Name each span above the axes in the lowest of `rows` rows where it overlaps no other name (kept within
    the axes' width); the title goes above the rows used. Returns how many names found no room (left out)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    axes_box = ax.get_window_extent(renderer)
    row_ends_px = [float("-inf")] * rows
    left_out = used = 0
    for start, end, text in labels:
        label = ax.text((start + end) / 2, 1.0, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=8)
        box = label.get_window_extent(renderer)
        if box.x1 > axes_box.x1:  # at the right edge: end the name where the span ends
            label.set_x(end)
            label.set_horizontalalignment("right")
        elif box.x0 < axes_box.x0:
            label.set_x(start)
            label.set_horizontalalignment("left")
        box = label.get_window_extent(renderer)
        row = next((r for r in range(rows) if box.x0 > row_ends_px[r] + 4), None)
        if row is None:
            label.remove()
            left_out += 1
            continue
        label.set_y(1.0 + SPAN_ROW * row)
        row_ends_px[row] = box.x1
        used = max(used, row + 1)
    ax.set_title(ax.get_title(), y=1.0 + SPAN_ROW * used, pad=6)
    return left_out


def _draw_mean_power(ax: Axes, records: pd.DataFrame, starts: list[float], *, with_gpu: bool) -> float:
    """Each stage's mean power per component as a flat line; returns the highest value drawn.

    CPU and RAM: codecarbon's average over its power readings (`cpu_power_w`, `ram_power_w`); GPU: the mean
    of the NVML samples (`gpu_power_mean_w`). Where a record lacks the field: the stage's energy ÷ duration.
    """
    fields = {"cpu": "cpu_power_w", "ram": "ram_power_w"} | ({"gpu": "gpu_power_mean_w"} if with_gpu else {})
    labelled: set[str] = set()
    highest = 0.0
    for (_, row), start in zip(records.iterrows(), starts):
        duration_s = number(row, "duration_s") or 0.0
        for component, field in fields.items():
            power_w, how = _mean_power_w(row, component, field, duration_s)
            if power_w is None:
                continue
            label = f"{component.upper()}: {how}"
            estimated = source_kind(value(row, f"{component}_energy_source")) != "measured"
            ax.hlines(power_w, start, start + duration_s, color=COMPONENT_COLORS[component], linewidth=2,
                      linestyles="--" if estimated else "-", label=None if label in labelled else label)
            labelled.add(label)
            highest = max(highest, power_w)
    return highest


def _mean_power_w(row: pd.Series, component: str, field: str, duration_s: float) -> tuple[float | None, str]:
    kind = source_kind(value(row, f"{component}_energy_source"))
    if kind == "unavailable":
        return None, ""
    recorded = number(row, field)
    if recorded is not None:
        return recorded, f"{'NVML sample mean' if component == 'gpu' else 'codecarbon average'}, {kind}"
    kwh = number(row, f"{component}_energy_kwh")
    if kwh is None or not duration_s:
        return None, ""
    return kwh * J_PER_KWH / duration_s, f"energy ÷ duration, {kind}"


def _draw_samples(ax: Axes, samples: pd.DataFrame, records: pd.DataFrame, starts: list[float]) -> float:
    """GPU power samples, one line per device, placed at their stage's start; returns the highest sample."""
    offsets = dict(zip(records["stage"].astype(str), starts))
    samples = samples.assign(t_s=samples["elapsed_s"] + samples["stage"].astype(str).map(offsets))
    samples = samples.dropna(subset=["t_s", "power_w"])
    colors = matplotlib.colormaps["Dark2"]
    for index, (device, by_device) in enumerate(samples.groupby("device")):
        for number_in_device, (_, group) in enumerate(by_device.groupby("stage", sort=False)):
            # One line per stage: no line bridges the gap between two stages.
            ax.plot(group["t_s"], group["power_w"], lw=1, color=colors(index % 8),
                    label=f"GPU {device}: NVML samples, measured" if number_in_device == 0 else None)
    return float(samples["power_w"].max()) if len(samples) else 0.0


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
    """Each stage's start in seconds after the run's first start; end to end when timestamps are absent or overlap."""
    durations = [number(row, "duration_s") or 0.0 for _, row in records.iterrows()]
    started = pd.to_datetime(records["started_at"], utc=True, errors="coerce")
    if started.notna().all() and len(started):
        starts = [float(s) for s in (started - started.min()).dt.total_seconds()]
        # Stages run one after another; overlapping windows mean the timestamps cannot be trusted.
        if all(starts[i] >= starts[i - 1] + 0.99 * durations[i - 1] for i in range(1, len(starts))):
            return starts
    return [sum(durations[:i]) for i in range(len(durations))]


def _stage_label(row: pd.Series, *, with_task: bool = False) -> str:
    status = str(value(row, "status") or "")
    task = f"{value(row, 'task') or 'shared'} · " if with_task else ""
    return f"{task}{row['stage']}\n({value(row, 'role') or ''})" + ("" if status == "ok" else f"\n⚠ {status}")


def _short(run_id: str) -> str:
    return run_id if len(run_id) <= 28 else run_id[:12] + "…" + run_id[-12:]


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    return fig, fig.subplots()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig`, laid out by its `draw_*` function, as a PNG at `path`; returns `path`."""
    fig.savefig(path, dpi=DPI)
    return path
