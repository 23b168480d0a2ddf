"""`[sweep]` and `greendistil sweep --grid KEY=V1,V2`: the trials of a sweep, each a set of config values.

A sweep's axes are config keys, written as `--set` writes them (`stages.distill.temperature`,
`student.layers`, `run.seed`), each with the values it takes. The trials are every point of the grid, in
order (the last axis changing fastest), or `random_trials` distinct points drawn from it with `seed`.
Each trial is one run of the config with its values set: `trial_raw` builds it, and building all of them
before the first trial starts is what makes a bad value fail at once (exit 2, nothing written).

`share_teacher`: the teacher's training stages depend on none of the axes (e.g. a sweep over the
distillation's temperature): one teacher run serves every trial. `"auto"` shares it exactly then.
"""

from __future__ import annotations

import copy
import itertools
import random
import tomllib
from dataclasses import dataclass
from typing import Any

import tomli_w

from greendistil.config.load import apply_override
from greendistil.config.types import parse_override_value
from greendistil.errors import ConfigError

SWEEP_KEYS = ("grid", "random_trials", "seed", "share_teacher")
# Axes whose keys start so change what the teacher learns (or whom it is): they forbid a shared teacher.
TEACHER_PREFIXES = ("teacher.", "task.", "suite.", "run.seed", "corpus.", "masking.")


@dataclass(frozen=True)
class SweepAxis:
    key: str  # as `--set` writes it
    values: tuple[Any, ...]


@dataclass(frozen=True, kw_only=True)
class SweepSection:
    axes: tuple[SweepAxis, ...]
    random_trials: int | None = None  # None: every point of the grid
    seed: int = 0
    share_teacher: bool | str = "auto"  # "auto" | true | false


@dataclass(frozen=True)
class Trial:
    index: int
    values: tuple[tuple[str, Any], ...]  # (key, value) per axis, in axis order

    @property
    def trial_id(self) -> str:
        return f"t{self.index:03d}"

    def label(self) -> str:
        """`temperature=2, alpha_ce=5`: each axis by its last key part (the full keys are in sweep.json)."""
        return ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in self.values)


def format_value(value: Any) -> str:
    """A value as `--set` would take it (TOML: `4.0`, `[0, 2, 4]`, `"text"`)."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def parse_grid(option: str) -> SweepAxis:
    """`KEY=V1,V2,...` (`--grid`): values are TOML (`1,2.5`, `[0,2],[0,5]`, `"a","b"`); bare words are strings."""
    key, sep, text = option.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--grid {option!r}: expected KEY=V1,V2,..., e.g. --grid stages.distill.temperature=1,2,4")
    try:
        values = tomllib.loads(f"v = [{text}]")["v"]
    except tomllib.TOMLDecodeError:
        values = [parse_override_value(part.strip()) for part in text.split(",")]
    return make_axis(key, values, f"--grid {key}")


def make_axis(key: str, values: Any, where: str) -> SweepAxis:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {values!r} is not a list of values; give at least one, e.g. [1, 2, 4]")
    if any(values.count(v) > 1 for v in values):
        raise ConfigError(f"{where}: {values!r} repeats a value; give each value once")
    if key.split(".")[0] == "sweep":
        raise ConfigError(f"{where}: a sweep's axis cannot be a [sweep] key; give a run key, e.g. run.seed")
    return SweepAxis(key=key, values=tuple(values))


def build_sweep(raw: Any, grid_options: tuple[str, ...] = (), share_teacher: bool | str | None = None
                ) -> SweepSection:
    """The config's `[sweep]` table; `--grid` axes, when given, replace its grid (the command line wins, as
    `--set` does), and `--share-teacher` its share_teacher."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected a table, got {type(raw).__name__} {raw!r}")
    for key in raw:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"sweep.{key}: unknown key; valid keys: {', '.join(SWEEP_KEYS)}")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep.grid: expected a table of KEY = [values], got {grid!r}; e.g. "
                          '[sweep.grid] "stages.distill.temperature" = [1.0, 2.0, 4.0]')
    axes = [make_axis(key, values, f"sweep.grid.{key!r}") for key, values in grid.items()]
    if grid_options:
        axes = [parse_grid(option) for option in grid_options]
        if len({a.key for a in axes}) != len(axes):
            raise ConfigError(f"--grid: an axis is given twice ({[a.key for a in axes]}); give each key once")
    if not axes:
        raise ConfigError("sweep: no axes; give --grid KEY=V1,V2 or a [sweep.grid] table")
    random_trials, seed = raw.get("random_trials"), raw.get("seed", 0)
    share = raw.get("share_teacher", "auto") if share_teacher is None else share_teacher
    size = grid_size(axes)
    if random_trials is not None and (isinstance(random_trials, bool) or not isinstance(random_trials, int)
                                      or not 1 <= random_trials <= size):
        raise ConfigError(f"sweep.random_trials: {random_trials!r} is out of range; valid: 1 to {size} (the grid's "
                          "points), or leave it out for every point")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"sweep.seed: expected an integer, got {seed!r}")
    if not (isinstance(share, bool) or share == "auto"):
        raise ConfigError(f"sweep.share_teacher: {share!r} is not valid; valid: 'auto', true, false")
    return SweepSection(axes=tuple(axes), random_trials=random_trials, seed=seed, share_teacher=share)


def grid_size(axes: list[SweepAxis] | tuple[SweepAxis, ...]) -> int:
    size = 1
    for axis in axes:
        size *= len(axis.values)
    return size


def trials(sweep: SweepSection) -> tuple[Trial, ...]:
    """The sweep's trials, numbered from 0: the grid in order, or the drawn points in grid order."""
    points = list(itertools.product(*(axis.values for axis in sweep.axes)))
    if sweep.random_trials is not None:
        chosen = sorted(random.Random(sweep.seed).sample(range(len(points)), sweep.random_trials))
        points = [points[i] for i in chosen]
    keys = [axis.key for axis in sweep.axes]
    return tuple(Trial(index=i, values=tuple(zip(keys, point))) for i, point in enumerate(points))


def trial_raw(base: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """The raw config of one trial: the base config (without [sweep]) with the trial's values set."""
    raw = copy.deepcopy({key: value for key, value in base.items() if key != "sweep"})
    for key, value in trial.values:
        apply_override(raw, f"{key}={format_value(value)}")
    return raw


def touches_teacher(sweep: SweepSection, teacher_stage_names: tuple[str, ...]) -> list[str]:
    """The axes that change the teacher: its tables, the data, the seed, or one of its training stages."""
    stage_prefixes = tuple(f"stages.{name}." for name in teacher_stage_names)
    return [axis.key for axis in sweep.axes if axis.key.startswith(TEACHER_PREFIXES + stage_prefixes)]
