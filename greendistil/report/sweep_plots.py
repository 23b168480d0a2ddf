"""A sweep's figures: expected best score against trials and against energy (one curve per sweep, with its
± std band), and every trial's score against its energy with the Pareto front."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from greendistil.report.costs import pareto_optimal
from greendistil.report.plots import DPI, FIGSIZE_IN, energy_unit, save_figure
from greendistil.report.sweep import SweepFigures, budget_curve

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


def draw_budget_curves(sweeps: list[SweepFigures]) -> Figure:
    """Two panels: E[max score] ± std against the number of trials, and against the kWh they cost."""
    fig = Figure(figsize=(FIGSIZE_IN[0] * 1.25, FIGSIZE_IN[1]), dpi=DPI, layout="constrained")
    by_trials, by_energy = fig.subplots(1, 2, sharey=True)
    curves = [(s, budget_curve(s)) for s in sweeps]
    max_kwh = max((float(c[1].max()) for _, c in curves if c is not None), default=0.0)
    factor, unit = energy_unit(max_kwh)
    est = any(s.energy_kinds for s in sweeps)
    for index, (sweep, curve) in enumerate(c for c in curves if c[1] is not None):
        assert curve is not None
        ns, kwh, mean, std = curve
        color = COLORS[index % len(COLORS)]
        for ax, x in ((by_trials, ns), (by_energy, kwh * factor)):
            ax.plot(x, mean, color=color, marker="o", markersize=3, label=sweep.sweep_id)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
    by_trials.set_xlabel("trials n")
    by_trials.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_trials.set_ylabel("expected best dev score (± std)")
    by_energy.set_xlabel(f"energy of n trials ({unit}{', estimated' if est else ''})")
    by_trials.set_title("against trials", fontsize=10)
    by_energy.set_title("against energy", fontsize=10)
    for ax in (by_trials, by_energy):
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    low, high = by_trials.get_ylim()
    if high - low < 0.01:  # every trial scored the same: a readable band around it, not rounding noise
        middle = (low + high) / 2
        by_trials.set_ylim(middle - 0.01, middle + 0.01)
    by_trials.legend(loc="lower right", fontsize=8)
    fig.suptitle("Expected validation performance against budget (Dodge et al. 2019)", fontsize=11)
    return fig


def plot_budget_curves(sweeps: list[SweepFigures], path: Path) -> Path:
    return save_figure(draw_budget_curves(sweeps), path)


def draw_trials_pareto(sweep: SweepFigures) -> Figure:
    """Each scored trial's score against its energy; the Pareto-optimal ones joined and named."""
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    trials = [t for t in sweep.scored() if t.energy_kwh is not None]
    factor, unit = energy_unit(max((t.energy_kwh or 0.0 for t in trials), default=0.0))
    front = pareto_optimal([t.energy_kwh for t in trials], [t.score for t in trials])
    xs, ys = [(t.energy_kwh or 0.0) * factor for t in trials], [t.score or 0.0 for t in trials]
    ax.scatter(xs, ys, color="#8C8C8C", s=28, label="trial", zorder=2)
    best = [(x, y, t) for x, y, t, on in zip(xs, ys, trials, front) if on]
    best.sort(key=lambda item: item[0])
    if best:
        ax.plot([b[0] for b in best], [b[1] for b in best], color="#DD8452", marker="o", markersize=7,
                label="Pareto front", zorder=3)
        for rank, (x, y, trial) in enumerate(best):  # above its point (alternating heights), clear of the markers
            ax.annotate(trial.trial_id, (x, y), xytext=(0, 16 if rank % 2 else 8), textcoords="offset points",
                        ha="center", fontsize=8, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                                       "alpha": 0.8})
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + 0.08 * (high - low))  # room for the labels of the top points
    ax.set_xlabel(f"energy per trial ({unit}{', estimated' if sweep.energy_kinds else ''})")
    ax.set_ylabel("dev score")
    ax.set_title(f"Sweep {sweep.sweep_id}: score against energy per trial", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_trials_pareto(sweep: SweepFigures, path: Path) -> Path:
    return save_figure(draw_trials_pareto(sweep), path)
