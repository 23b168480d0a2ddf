"""Energy, CO2 and time budgets (`run.max_*` and each training stage's): may the window take one more step?

Checked before the first training step and after every step. What counts as spent: the earlier records of
the run (or of the stage's earlier segments), plus what this window has spent until now (`measure.live`:
codecarbon's CPU and RAM energy carried forward to now at the power it last read, the GPUs' from NVML, every
rank's under torchrun). The next step is assumed to cost what the window's steps have cost on average. A step
that would cross a limit is not taken: the loop checkpoints and raises `BudgetExceeded`, and the window
records "stopped-budget".

Where CPU energy is only estimated (no RAPL) and there is no GPU, the budget is checked against the estimate;
the record's `budget.checked_against` names the provenance of every component that was summed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from greendistil.config.types import BUDGET_KEYS, BUDGET_UNITS
from greendistil.errors import BudgetExceeded
from greendistil.measure.live import EnergyNow

@dataclass(frozen=True, kw_only=True)
class Limits:
    """The budgets of one scope: `run`, or a stage (`stages.<name>`). None: no limit."""

    scope: str
    max_energy_kwh: float | None = None
    max_co2_kg: float | None = None
    max_duration_s: float | None = None

    @classmethod
    def of(cls, scope: str, table: object) -> Limits:
        """The budget keys of a config table ([run] or a training stage; a stage without them has none)."""
        return cls(scope=scope, **{key: getattr(table, key, None) for key in BUDGET_KEYS})

    def set_limits(self) -> dict[str, float]:
        """The limits that are set, by dotted config key."""
        return {f"{self.scope}.{key}": value for key in BUDGET_KEYS if (value := getattr(self, key)) is not None}


@dataclass(frozen=True, kw_only=True)
class Spent:
    """Energy (kWh), CO2 (kg CO2eq) and measured time (s) spent."""

    energy_kwh: float = 0.0
    co2_kg: float = 0.0
    duration_s: float = 0.0
    num_unmeasured: int = 0  # records whose energy is unknown (null: counted as 0) or partly known (a meter failed)

    @classmethod
    def of_records(cls, records: Iterable[Mapping[str, Any]]) -> Spent:
        """Summed over records (any status: a failed stage's energy was spent too). A null figure adds 0; the
        records whose energy is null or lacks a component (`energy_incomplete`) are counted, so that a budget
        checked against the sum says so."""
        rows = list(records)
        return cls(energy_kwh=sum(r.get("energy_kwh") or 0.0 for r in rows),
                   co2_kg=sum(r.get("co2_kg") or 0.0 for r in rows),
                   duration_s=sum(r.get("duration_s") or 0.0 for r in rows),
                   num_unmeasured=sum(r.get("energy_kwh") is None or bool(r.get("energy_incomplete")) for r in rows))

    def unmeasured_note(self, limits: Limits) -> str:
        """'' or, where `limits` caps energy or CO2, why what was spent before is too low: records whose
        energy is missing or partial."""
        if not self.num_unmeasured or (limits.max_energy_kwh is None and limits.max_co2_kg is None):
            return ""
        return (f"; {self.num_unmeasured} earlier record(s) of {limits.scope} lack some or all of their energy "
                "(a meter failed: see their measurement_errors), counted as 0 kWh, so the energy and CO2 spent "
                "are undercounted")

    @classmethod
    def per_step(cls, records: Iterable[Mapping[str, Any]]) -> Spent | None:
        """The mean cost of a step over the records that took steps (a resumed stage's earlier segments), or
        None when none did."""
        stepped = [r for r in records if (r.get("num_steps") or 0) > 0]
        if not stepped:
            return None
        total, num_steps = cls.of_records(stepped), sum(r["num_steps"] for r in stepped)
        return cls(energy_kwh=total.energy_kwh / num_steps, co2_kg=total.co2_kg / num_steps,
                   duration_s=total.duration_s / num_steps)

    def value(self, key: str) -> float:
        return {"max_energy_kwh": self.energy_kwh, "max_co2_kg": self.co2_kg, "max_duration_s": self.duration_s}[key]


def exhausted(limits: Limits, spent: Spent) -> BudgetExceeded | None:
    """The first limit of `limits` that `spent` (from the run log) has reached, else None: checked before a
    stage starts, so that a run at its budget starts nothing new."""
    for key in BUDGET_KEYS:
        limit = getattr(limits, key)
        if limit is not None and spent.value(key) >= limit:
            return BudgetExceeded(key=f"{limits.scope}.{key}", limit=limit, spent=spent.value(key), unit=BUDGET_UNITS[key],
                                  checked_against="as recorded in the run log"
                                  + (spent.unmeasured_note(limits) if key != "max_duration_s" else ""))
    return None


class BudgetGuard:
    """Checks one window against its scopes' limits. `before[scope]` is what that scope spent before this
    window opened; `energy_now` reads the window's energy until now; `kg_co2_per_kwh` = PUE x intensity."""

    def __init__(self, *, limits: Iterable[Limits], before: Mapping[str, Spent], kg_co2_per_kwh: float,
                 energy_now: Callable[[], EnergyNow | None], clock: Callable[[], float],
                 step_estimate: Spent | None = None) -> None:
        """`step_estimate`: a step's cost before this window has taken one (a resumed stage: its earlier
        segment's mean), else the first step is not projected."""
        self.limits = [lim for lim in limits if lim.set_limits()]
        self._step_estimate = step_estimate
        self._before, self._kg_co2_per_kwh = dict(before), kg_co2_per_kwh
        self._energy_now, self._clock = energy_now, clock
        self._start_s: float | None = None
        self._first_step: tuple[float, float | None] | None = None  # (time, energy) when the steps began
        self._sources: dict[str, str] = {}
        self.stopped: BudgetExceeded | None = None

    @property
    def active(self) -> bool:
        return bool(self.limits)

    def open(self, start_s: float | None = None) -> None:
        """The window opened at `start_s` (default: now)."""
        self._start_s = self._clock() if start_s is None else start_s

    def check(self, steps_done: int, steps_ahead: int = 1) -> BudgetExceeded | None:
        """The limit that `steps_ahead` more steps would cross, else None. `steps_done`: the steps this window
        has taken; 0 before the first, which marks where the steps begin (what came before, loading models and
        data, is spent but not a step's cost). A step is assumed to cost the mean time and energy of the
        window's steps so far; before the first step only what is already spent is checked."""
        if not self.limits or self._start_s is None:
            return None
        now_s = self._clock()
        wants_energy = any(lim.max_energy_kwh is not None or lim.max_co2_kg is not None for lim in self.limits)
        reading = self._energy_now() if wants_energy else None
        energy_kwh = reading.energy_kwh if reading is not None else None
        if reading is not None:
            self._sources = reading.sources
        if self._first_step is None or steps_done == 0:
            self._first_step = (now_s, energy_kwh)
        began_s, began_kwh = self._first_step
        step_s = (now_s - began_s) / steps_done if steps_done > 0 else 0.0
        step_kwh = ((energy_kwh - began_kwh) / steps_done if steps_done > 0 and energy_kwh is not None
                    and began_kwh is not None else 0.0)
        if steps_done == 0 and self._step_estimate is not None:
            step_s, step_kwh = self._step_estimate.duration_s, self._step_estimate.energy_kwh
        elapsed_s = max(now_s - self._start_s, 0.0)
        ahead_s, ahead_kwh = step_s * steps_ahead, max(step_kwh, 0.0) * steps_ahead
        for lim in self.limits:
            before = self._before.get(lim.scope, Spent())
            spent = {"max_duration_s": (before.duration_s + elapsed_s, before.duration_s + elapsed_s + ahead_s)}
            if energy_kwh is not None:
                spent["max_energy_kwh"] = (before.energy_kwh + energy_kwh, before.energy_kwh + energy_kwh + ahead_kwh)
                spent["max_co2_kg"] = (before.co2_kg + energy_kwh * self._kg_co2_per_kwh,
                                       before.co2_kg + (energy_kwh + ahead_kwh) * self._kg_co2_per_kwh)
            for key in BUDGET_KEYS:
                limit = getattr(lim, key)
                if limit is None or key not in spent or spent[key][1] <= limit:
                    continue
                self.stopped = BudgetExceeded(key=f"{lim.scope}.{key}", limit=limit, spent=spent[key][0],
                                              unit=BUDGET_UNITS[key], checked_against=self.checked_against())
                return self.stopped
        return None

    def checked_against(self) -> str:
        """The provenance of the energy the budget was checked against, per component summed."""
        earlier = "".join(self._before.get(lim.scope, Spent()).unmeasured_note(lim) for lim in self.limits)
        if not self._sources:
            return "unavailable: no meter had a live figure (only max_duration_s can stop the stage)" + earlier
        kind = "estimated" if any(s.startswith("estimated") for s in self._sources.values()) else "measured"
        return f"{kind} ({', '.join(f'{name} {source}' for name, source in self._sources.items())})" + earlier

    def summary(self) -> dict[str, Any] | None:
        """The record's `budget` field (flat): each limit in force (`limit.<dotted key>`), what each scope had
        spent before this window (`spent_before.<scope>.<figure>`), what stopped the window and at what spend,
        and the provenance of the energy checked. None when no limit was set."""
        if not self.limits:
            return None
        stopped = self.stopped
        summary: dict[str, Any] = {f"limit.{k}": v for lim in self.limits for k, v in lim.set_limits().items()}
        for lim in self.limits:
            for name, value in asdict(self._before.get(lim.scope, Spent())).items():
                summary[f"spent_before.{lim.scope}.{name}"] = value
        return {**summary, "stopped_by": stopped.key if stopped is not None else None,
                "spent_at_stop": stopped.spent if stopped is not None else None,
                "checked_against": self.checked_against()}
