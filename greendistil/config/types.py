"""Checks raw TOML values against dataclass field types and builds the frozen dataclass.

Handles the types the config uses: bool, int, float (an int is accepted), str, `X | None`, `Literal[...]`,
and `tuple[X, ...]`. Every error names the dotted key, the value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from difflib import get_close_matches
from typing import Any, Literal, TypeVar

from greendistil.errors import ConfigError

T = TypeVar("T")


def require(ok: bool, key: str, value: Any, valid: str) -> None:
    """Raise `ConfigError` naming `key`, `value` and what is `valid` unless `ok` (for `__post_init__` checks)."""
    if not ok:
        raise ConfigError(f"{key}: {value!r} is out of range; valid: {valid}")


def build_dataclass(cls: type[T], raw: Any, prefix: str) -> T:
    """Build `cls` from the raw table `raw`; `prefix` is the dotted path used in error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            near = get_close_matches(key, sorted(fields), n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{prefix}.{key}: unknown key; {hint}valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = check_value(hints[key], value, f"{prefix}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ raises with the bare field name; give it its full dotted path.
        message = str(err)
        raise ConfigError(message if message.startswith(f"{prefix}.") else f"{prefix}.{message}") from None


def check_value(hint: Any, value: Any, key: str) -> Any:
    """Return `value` converted to `hint` (int -> float, list -> tuple) or raise `ConfigError`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(option, value, key)
            except ConfigError as err:
                errors.append(err)
        if all(typing.get_origin(o) is Literal or o is bool for o in options):  # e.g. Literal["auto"] | bool
            choices = [repr(a) for o in options if o is not bool for a in typing.get_args(o)]
            choices += ["true", "false"] if bool in options else []
            raise ConfigError(f"{key}: {value!r} is not valid; valid: {', '.join(choices[:-1])} or {choices[-1]}")
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        near = get_close_matches(str(value), [str(a) for a in args], n=1)
        hint_text = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"{key}: {value!r} is not valid; {hint_text}valid: {', '.join(repr(a) for a in args)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item_hint = args[0]
        return tuple(check_value(item_hint, item, f"{key}[{i}]") for i, item in enumerate(value))
    return _check_scalar(hint, value, key)


def _check_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")  # a bug in the dataclass, not input


def parse_override_value(text: str) -> Any:
    """Parse the value of a `--set key=value` as a TOML value; a bare word is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


BUDGET_KEYS = ("max_energy_kwh", "max_co2_kg", "max_duration_s")  # in [run] and in each training stage
BUDGET_UNITS = {"max_energy_kwh": "kWh", "max_co2_kg": "kg CO2eq", "max_duration_s": "s"}


def check_budgets(table: object) -> None:
    """`max_energy_kwh`, `max_co2_kg`, `max_duration_s` (of [run] or a training stage): unset or > 0."""
    for key in BUDGET_KEYS:
        limit = getattr(table, key)
        if limit is not None:
            require(limit > 0, key, limit, "> 0, or leave it out for no limit")
