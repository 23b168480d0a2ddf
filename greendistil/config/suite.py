"""`[suite]`: several GLUE tasks in one run, and the steps the run takes through them.

A suite runs the `[[stages]]` list once per task, with that task's overrides (`[suite.overrides.<task>]`:
epochs, learning rate, batch size, warm-up, sequence length, caps) applied to its training stages. Stages
that train on the corpus (`pretrain`, `distill` with `objective = "mlm"`) do not depend on the task: they
run once, before the per-task stages, and every task starts from what they wrote. A config without
`[suite]` is a suite of one task, `[task] name`, and its stages run in the order written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from greendistil.config.stages import DistillStage, PretrainStage, StageConfig, TrainingStage
from greendistil.config.types import build_dataclass, check_value
from greendistil.config.types import require as _require
from greendistil.data.tasks import get_task
from greendistil.errors import ConfigError

if TYPE_CHECKING:
    from greendistil.config.load import Config

# The keys of [suite.overrides.<task>]: [task] keys, then the training-stage keys they set on every
# training stage of that task.
TASK_KEYS = ("max_seq_length", "max_train_examples", "max_eval_examples")
STAGE_KEYS = ("epochs", "learning_rate", "batch_size", "warmup_ratio", "weight_decay")


@dataclass(frozen=True, kw_only=True)
class TaskOverrides:
    """One task's departures from `[task]` and from its training stages' hyperparameters; unset keys keep
    the config's own value."""

    max_seq_length: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None

    def task_values(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in TASK_KEYS if getattr(self, key) is not None}

    def stage_values(self) -> dict[str, float | int]:
        return {key: getattr(self, key) for key in STAGE_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True, kw_only=True)
class SuiteSection:
    """The tasks of a suite run (GLUE order is kept as written) and each task's overrides."""

    tasks: tuple[str, ...] = ()  # empty: one task, [task] name
    overrides: dict[str, TaskOverrides] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for task in self.tasks:
            get_task(task)  # an unknown task name fails with the nearest one
        _require(len(set(self.tasks)) == len(self.tasks), "tasks", list(self.tasks), "distinct GLUE task names")
        for task in self.overrides:
            _require(task in self.tasks, f"overrides.{task}", task,
                     f"a task of suite.tasks ({', '.join(self.tasks) or 'none'})")


@dataclass(frozen=True, kw_only=True)
class SuiteStep:
    """One stage of the run, as its task sees it (that task's overrides applied): `task` None for a suite's
    shared (corpus) stage, which serves every task; `seed` None for a stage that is not repeated per seed
    (every stage of a single-seed run; a shared teacher's stages in a multi-seed run)."""

    task: str | None
    index: int  # the stage's position in [[stages]]: with `base_seed` it seeds the stage
    stage: StageConfig
    seed: int | None = None  # the replicate of `run.seeds` this step belongs to
    base_seed: int = 42  # the run seed the stage starts from: base_seed + index (or + the stage's seed_offset)

    @property
    def torch_seed(self) -> int:
        offset = self.stage.seed_offset if isinstance(self.stage, TrainingStage) else None
        return self.base_seed + (self.index if offset is None else offset)


def is_shared(stage: StageConfig) -> bool:
    """A stage that trains on the corpus, not on a task: it runs once and every task uses what it wrote."""
    return isinstance(stage, PretrainStage) or (isinstance(stage, DistillStage) and stage.on_corpus)


def run_tasks(config: Config) -> tuple[str, ...]:
    """The run's tasks: the suite's, or the one of [task]."""
    return config.suite.tasks or (config.task.name,)


def is_suite(config: Config) -> bool:
    """More than one task: checkpoints are kept per task."""
    return len(run_tasks(config)) > 1


def suite_steps(config: Config) -> tuple[SuiteStep, ...]:
    """The run's stages in the order they run: one task in the order written; several tasks: the shared
    stages first, then every per-task stage of the first task, then of the next, ...

    With `run.seeds`, each of those groups runs once per seed, seeds in the order given, except what is not
    repeated: a shared teacher's stages (`run.share_teacher`, from the first seed) and the benchmark (a
    model's speed does not depend on its seed: the first seed's models are timed)."""
    tasks = {task: for_task(config, task).stages for task in run_tasks(config)}  # each with its overrides
    if not is_suite(config):  # every stage serves the one task, and its records say so
        task = run_tasks(config)[0]
        return _per_seed(config, task, list(enumerate(tasks[task])))
    shared = _per_seed(config, None, [(i, s) for i, s in enumerate(config.stages) if is_shared(s)])
    per_task = [step for task, stages in tasks.items()
                for step in _per_seed(config, task, [(i, s) for i, s in enumerate(stages) if not is_shared(s)])]
    return tuple([*shared, *per_task])


def _per_seed(config: Config, task: str | None, stages: list[tuple[int, StageConfig]]) -> tuple[SuiteStep, ...]:
    """`stages` (with their [[stages]] positions) once, or once per seed of `run.seeds`."""
    seeds = config.run.seeds
    if not seeds:
        return tuple(SuiteStep(task=task, index=i, stage=s, base_seed=config.run.seed) for i, s in stages)
    steps = []
    for number, seed in enumerate(seeds):
        for i, stage in stages:
            shared = is_seed_shared(config, stage)
            if number > 0 and (shared or stage.kind == "benchmark"):
                continue  # a benchmark runs as the first seed's: it times that seed's student
            steps.append(SuiteStep(task=task, index=i, stage=stage, seed=None if shared else seed, base_seed=seed))
    return tuple(steps)


def is_seed_shared(config: Config, stage: StageConfig) -> bool:
    """A stage that serves every seed of a multi-seed run: the teacher's training when `run.share_teacher`."""
    return config.run.share_teacher and isinstance(stage, TrainingStage) and stage.trained_role == "teacher"


def check_suite(config: Config) -> None:
    """Every task's overrides are valid for its stages, and in a suite the shared stages come before the
    per-task ones (they run once, first)."""
    for task in run_tasks(config):
        for_task(config, task)
    if not is_suite(config):
        return
    seen_per_task = None
    for index, stage in enumerate(config.stages):
        if stage.name in config.suite.tasks:  # checkpoints/<name>/ would be the task's folder too
            raise ConfigError(f"stages.{index}.name: {stage.name!r} is also a task of the suite; give the stage "
                              "another name")
        if not is_shared(stage):
            seen_per_task = seen_per_task if seen_per_task is not None else index
        elif seen_per_task is not None:
            raise ConfigError(f"stages.{index}: the {stage.kind} stage {stage.name!r} trains on the corpus and runs "
                              f"once for the whole suite, before any task; move it before stages.{seen_per_task} "
                              f"({config.stages[seen_per_task].name!r})")


def for_task(config: Config, task: str) -> Config:
    """The config one task of the run sees: [task] named and overridden, its training stages overridden, no
    suite. Shared stages are left as written (they do not depend on the task)."""
    overrides = config.suite.overrides.get(task, TaskOverrides())
    prefix = f"suite.overrides.{task}"
    task_section = _replaced(config.task, {"name": task, **overrides.task_values()}, prefix)
    stage_values = overrides.stage_values()
    stages = tuple(_replaced(stage, stage_values, prefix) if isinstance(stage, TrainingStage) and not is_shared(stage)
                   else stage for stage in config.stages)
    return dataclasses.replace(config, task=task_section, stages=stages, suite=SuiteSection())


def _replaced(section: object, values: dict[str, object], prefix: str) -> object:
    try:
        return dataclasses.replace(section, **values)  # type: ignore[type-var]
    except ConfigError as err:  # __post_init__ names the bare key
        raise ConfigError(f"{prefix}.{err}") from None


def build_suite(raw: Any) -> SuiteSection:
    """`[suite]` from its raw table: `tasks` and one `[suite.overrides.<task>]` table per task."""
    if not isinstance(raw, dict):
        raise ConfigError(f"suite: expected a table, got {type(raw).__name__} {raw!r}")
    unknown = sorted(set(raw) - {"tasks", "overrides"})
    if unknown:
        raise ConfigError(f"suite.{unknown[0]}: unknown key; valid keys: overrides, tasks (per-task settings go in "
                          f"[suite.overrides.<task>] tables)")
    overrides_raw = raw.get("overrides", {})
    if not isinstance(overrides_raw, dict):
        raise ConfigError(f"suite.overrides: expected tables [suite.overrides.<task>], got {overrides_raw!r}")
    tasks = check_value(tuple[str, ...], raw.get("tasks", []), "suite.tasks")
    overrides = {str(task): build_dataclass(TaskOverrides, table, f"suite.overrides.{task}")
                 for task, table in overrides_raw.items()}
    try:
        return SuiteSection(tasks=tasks, overrides=overrides)
    except ConfigError as err:
        raise ConfigError(f"suite.{err}") from None
