"""Plan files (`greendistil plan`): where they are kept, and reading one back for a run of the same config.

A plan is a JSON object (`PLAN_VERSION`): its config's hash, the machine it was calibrated on, and one
entry per (task, seed, window) with the work and the forecast figures. It is kept at
`<run.output_dir>/plans/<run.name>-<config hash>.json` (not a run directory: no records.jsonl), where a
later `greendistil run` of the same config (budgets aside: they are not in the hash) finds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from greendistil.errors import ConfigError
from greendistil.runlog.store import write_text_atomically

PLAN_VERSION = 1
PLANS_FOLDER = "plans"


def default_plan_path(output_dir: str | Path, run_name: str, config_hash: str) -> Path:
    return Path(output_dir) / PLANS_FOLDER / f"{run_name}-{config_hash[:12]}.json"


def write_plan(path: Path, plan: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(plan, indent=2, sort_keys=False) + "\n")


def read_plan(path: Path, *, config_hash: str) -> dict[str, Any]:
    """The plan at `path`, made for the config whose hash is `config_hash`; ConfigError otherwise."""
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--plan: {str(path)!r} cannot be read as a plan ({type(err).__name__}: {err}); "
                          "write one with: greendistil plan CONFIG --out PATH") from err
    if not isinstance(plan, dict) or plan.get("plan_version") != PLAN_VERSION:
        raise ConfigError(f"--plan: {str(path)!r} is not a greendistil plan (plan_version "
                          f"{plan.get('plan_version') if isinstance(plan, dict) else None!r}, expected {PLAN_VERSION})")
    if plan.get("config_hash") != config_hash:
        raise ConfigError(f"--plan: {str(path)!r} was made for another config (hash {plan.get('config_hash')!r}, "
                          f"this run's is {config_hash!r}); plan this config again: greendistil plan CONFIG")
    return plan


def _is(entry: dict[str, Any], task: str | None, window: str, seed: int | None) -> bool:
    return entry.get("task") == task and entry.get("window") == window and entry.get("seed") == seed


def plan_entry(plan: dict[str, Any] | None, task: str | None, window: str,
               seed: int | None = None) -> dict[str, Any] | None:
    """The plan's forecast of one window of a run (None without a plan or an entry): what a record keeps."""
    if plan is None:
        return None
    for entry in plan.get("stages", []):
        if _is(entry, task, window, seed):
            keep = ("duration_s", "energy_kwh", "co2_kg", "flops", "num_steps", "num_padded_tokens",
                    "duration_method", "energy_method", "s_per_step", "s_per_million_padded_tokens",
                    "teacher_forward_s_per_step", "teacher_forward_s_per_million_padded_tokens")
            return {"created_at": plan.get("created_at"), **{k: entry.get(k) for k in keep}}
    return None


def plan_after(plan: dict[str, Any] | None, task: str | None, window: str,
               seed: int | None = None) -> dict[str, float] | None:
    """The plan's duration, kWh and CO2 summed over the windows it runs after (task, window, seed), in its
    order; None without a plan or an entry for that window, or where a later figure is missing."""
    entries = (plan or {}).get("stages", [])
    at = next((i for i, e in enumerate(entries) if _is(e, task, window, seed)), None)
    if at is None:
        return None
    later = entries[at + 1:]
    sums = {}
    for key in ("duration_s", "energy_kwh", "co2_kg"):
        values = [e.get(key) for e in later]
        if None in values:
            return None
        sums[key] = float(sum(values))
    return sums
