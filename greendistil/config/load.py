"""TOML config -> validated, frozen, typed dataclasses.

`tomllib` parses the file, `--set a.b=value` overrides edit the raw dict, then `build_config` turns each
table into a frozen dataclass, checking every key and type. Defaults live in the dataclasses and nowhere
else. Validation errors are `ConfigError`s naming the dotted key, the value and what would be valid.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from greendistil.config.corpus import CorpusSection, MaskingSection
from greendistil.config.stages import STAGE_KINDS, StageConfig
from greendistil.config.suite import SuiteSection, build_suite, check_suite
from greendistil.config.tables import CarbonSection, RunSection, StudentSection, TaskSection, TeacherSection
from greendistil.config.types import BUDGET_KEYS, build_dataclass, parse_override_value
from greendistil.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole resolved configuration of one run."""

    run: RunSection = field(default_factory=RunSection)
    carbon: CarbonSection = field(default_factory=CarbonSection)
    task: TaskSection = field(default_factory=TaskSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    corpus: CorpusSection = field(default_factory=CorpusSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    suite: SuiteSection = field(default_factory=SuiteSection)
    stages: tuple[StageConfig, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data. A single-task config has no `suite` entry; a suite's `[task]` has no
        `name` (the suite names the tasks)."""
        data = asdict(self)
        if not self.suite.tasks:
            del data["suite"]
        else:
            del data["task"]["name"]
        return data

    def to_toml(self) -> str:
        """The resolved config as TOML (unset optional keys are left out)."""
        return tomli_w.dumps(_drop_none(self.to_dict()))

    def config_hash(self) -> str:
        """A short, stable hash of everything that shapes the result: not the run's name or folder, nor its
        budgets (a budget decides where a run stops, not what it computes; `--resume` may raise one)."""
        data = self.to_dict()
        data["run"] = {k: v for k, v in data["run"].items()
                       if k not in ("name", "output_dir", "report", *BUDGET_KEYS)}
        # seed_offset left unset seeds as before the key existed: the hashes of earlier configs (their plans,
        # sweeps) stay valid
        data["stages"] = [{k: v for k, v in stage.items() if k not in BUDGET_KEYS
                           and not (k == "seed_offset" and v is None)} for stage in data["stages"]]
        canonical = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def with_budgets_of(self, other: Config) -> Config:
        """This config with `other`'s budget keys ([run] and per stage, matched by position)."""
        budgets = {key: getattr(other.run, key) for key in BUDGET_KEYS}
        stages = tuple(replace(mine, **{key: getattr(theirs, key) for key in BUDGET_KEYS})
                       if hasattr(mine, BUDGET_KEYS[0]) else mine for mine, theirs in zip(self.stages, other.stages))
        return replace(self, run=replace(self.run, **budgets), stages=stages)


SECTIONS: dict[str, type] = {
    "run": RunSection, "carbon": CarbonSection, "task": TaskSection,
    "teacher": TeacherSection, "student": StudentSection, "corpus": CorpusSection, "masking": MaskingSection,
}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config, apply `a.b=value` overrides, validate, and return the frozen `Config`."""
    return build_config(load_raw(path, overrides))


def load_raw(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The TOML config at `path` as a raw dict, with the `a.b=value` overrides applied (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a TOML file such as configs/base.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: TOML syntax error: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason})") from None
    for override in overrides:
        apply_override(raw, override)
    return raw


def build_config(raw: dict[str, Any]) -> Config:
    """Validate a raw (parsed TOML) dict into a `Config`."""
    from difflib import get_close_matches

    valid = [*SECTIONS, "suite", "stages"]
    if "sweep" in raw:
        raise ConfigError("sweep: a [sweep] table makes the config a sweep of many runs; run it with `greendistil "
                          "sweep CONFIG` (`run` and `plan` take one configuration: remove [sweep] for them)")
    for key in raw:
        if key not in valid:
            near = get_close_matches(key, valid, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{key}: unknown config table; {hint}valid: {', '.join(valid)}")
    sections = {name: build_dataclass(cls, raw.get(name, {}), name) for name, cls in SECTIONS.items()}
    suite = build_suite(raw.get("suite", {}))
    if suite.tasks and isinstance(raw.get("task"), dict) and "name" in raw["task"]:
        raise ConfigError(f"task.name: {raw['task']['name']!r} is set beside suite.tasks {list(suite.tasks)}; a suite "
                          "names its tasks in suite.tasks only: remove task.name")
    config = Config(**sections, suite=suite, stages=_build_stages(raw.get("stages", [])))
    check_suite(config)
    return config


def _build_stages(raw_stages: Any) -> tuple[StageConfig, ...]:
    if not isinstance(raw_stages, list) or not all(isinstance(s, dict) for s in raw_stages):
        raise ConfigError("stages: must be an array of tables ([[stages]] blocks), each with a 'kind'")
    if not raw_stages:
        raise ConfigError("stages: no stages configured; add [[stages]] blocks with kind = "
                          f"{' | '.join(repr(k) for k in STAGE_KINDS)}")
    stages: list[StageConfig] = []
    for index, raw in enumerate(raw_stages):
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in STAGE_KINDS:
            raise ConfigError(f"stages.{index}.kind: {kind!r} is not a stage kind; valid: {', '.join(STAGE_KINDS)}")
        raw = dict(raw)
        raw.setdefault("name", kind)
        stages.append(build_dataclass(STAGE_KINDS[kind], raw, f"stages.{index}"))
    names = [s.name for s in stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"stages: stage name {duplicates[0]!r} is used twice; give each [[stages]] a distinct 'name'")
    return tuple(stages)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b=value` override to the raw dict. Stages are addressed by name or index:
    `stages.distill.temperature=4` or `stages.1.temperature=4`. The value is parsed as a TOML value
    (`3`, `0.5`, `true`, `[0, 2]`, `"text"`); a bare word is taken as a string."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set task.max_train_examples=500")
    value = parse_override_value(text.strip())
    parts = key.split(".")
    if parts[0] == "stages":
        if len(parts) != 3:
            raise ConfigError(f"--set {key}: stage keys look like stages.<name or index>.<key>")
        stages = raw.get("stages", [])
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise ConfigError(f"--set {key}: stages must be an array of tables ([[stages]] blocks), each with a 'kind'")
        target = _find_stage(stages, parts[1], key)
    else:
        if len(parts) != 2:
            raise ConfigError(f"--set {key}: keys look like <table>.<key>, e.g. task.name")
        target = raw.setdefault(parts[0], {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {key}: {parts[0]!r} is not a table")
    target[parts[-1]] = value


def _find_stage(stages: list[dict[str, Any]], selector: str, key: str) -> dict[str, Any]:
    if selector.isdigit() and int(selector) < len(stages):
        return stages[int(selector)]
    for stage in stages:
        if stage.get("name", stage.get("kind")) == selector:
            return stage
    names = [str(s.get("name", s.get("kind"))) for s in stages]
    raise ConfigError(f"--set {key}: no stage named {selector!r}; stages: {', '.join(names) or 'none'}")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value
