"""`greendistil sweep`: many runs of one config, each trial a measured run of its own, under one folder.

    <run.output_dir>/sweeps/<sweep id>/
        sweep.json      what the sweep is (base config hash, axes, trials, the shared teacher), written once
        teacher/        the shared teacher's run, when one teacher serves every trial (`share_teacher`)
        t000/ t001/ ... one run directory per trial (run id = trial id)

Every trial is built and checked before anything runs (bad input: one line, exit 2, nothing written). A
sweep run again with the same definition continues: a finished trial is never rerun, a stopped one is
resumed from its checkpoint, a missing one starts. A trial that fails or is stopped by a budget is kept,
marked, and the sweep goes on with the next; a signal stops the sweep (the trial's record says so).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greendistil.config import Config, TrainingStage, build_config
from greendistil.config.load import load_raw
from greendistil.config.sweep import SweepSection, Trial, build_sweep, touches_teacher, trial_raw, trials
from greendistil.distributed import SINGLE
from greendistil.errors import BudgetExceeded, ConfigError, StageError
from greendistil.pipeline import RunRequest, execute
from greendistil.preflight import preflight
from greendistil.runlog.progress import RunAlreadyComplete
from greendistil.runlog.store import utc_now, write_text_atomically
from greendistil.runlog.sweeps import SWEEP_FILE, SWEEP_VERSION, SWEEPS_FOLDER, TEACHER_RUN



@dataclass(frozen=True, kw_only=True)
class SweepRequest:
    config_path: Path
    overrides: tuple[str, ...] = ()
    grid: tuple[str, ...] = ()  # `--grid KEY=V1,V2` axes; given, they replace the config's [sweep.grid]
    share_teacher: bool | str | None = None  # `--share-teacher`; None: the config's (default "auto")
    sweep_id: str | None = None  # default: the config's run.name
    force: bool = False  # start the sweep folder over
    show_progress: bool | None = None
    command: str | None = None


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    label: str
    status: str  # ok | skipped (finished before) | failed | stopped-budget
    run_dir: Path
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class PlannedSweep:
    """Everything a sweep will run, checked: the teacher run's config (None: not shared) and each trial's."""

    sweep_dir: Path
    definition: dict[str, Any]
    teacher: Config | None
    trials: tuple[tuple[Trial, Config], ...]


def prepare_sweep(request: SweepRequest) -> PlannedSweep:
    """Build and check every run of the sweep (ConfigError on bad input; nothing is written)."""
    raw = _read_raw(request.config_path, request.overrides)
    sweep = build_sweep(raw.get("sweep"), request.grid, request.share_teacher)
    base_raw = {key: value for key, value in raw.items() if key != "sweep"}
    base = build_config(base_raw)
    sweep_dir = Path(base.run.output_dir) / SWEEPS_FOLDER / (request.sweep_id or base.run.name)
    teacher_stages = _teacher_stages(base)
    share = _share_teacher(sweep, base, teacher_stages)
    teacher_raw = None
    if share:
        teacher_raw = _with_run(base_raw, sweep_dir, TEACHER_RUN)
        teacher_raw["stages"] = [s for s, c in zip(base_raw["stages"], base.stages) if c.name in teacher_stages]
    planned = []
    for trial in trials(sweep):
        trial_raw_config = _with_run(trial_raw(base_raw, trial), sweep_dir, trial.trial_id)
        config = build_config(trial_raw_config)
        preflight(config, dist=SINGLE)  # the data, the models' shapes: every trial, before any runs
        if share:
            config = _on_shared_teacher(trial_raw_config, config, teacher_stages, sweep_dir)
        planned.append((trial, config))
    teacher = build_config(teacher_raw) if teacher_raw is not None else None
    definition = {"sweep_version": SWEEP_VERSION, "base_config_hash": base.config_hash(),
                  "axes": [{"key": a.key, "values": list(a.values)} for a in sweep.axes],
                  "random_trials": sweep.random_trials, "seed": sweep.seed, "share_teacher": share,
                  "trials": [{"trial_id": t.trial_id, "values": dict(t.values), "config_hash": c.config_hash()}
                             for t, c in planned]}
    return PlannedSweep(sweep_dir=sweep_dir, definition=definition, teacher=teacher, trials=tuple(planned))


def run_sweep(request: SweepRequest, on_outcome: Callable[[TrialOutcome], None] = lambda outcome: None
              ) -> tuple[Path, list[TrialOutcome]]:
    """Run (or continue) the sweep; `on_outcome` hears of each run as it ends. Returns the sweep folder and
    every outcome, the shared teacher's first."""
    planned = prepare_sweep(request)
    _claim_sweep_dir(planned, request)
    outcomes = []
    runs = ([(TEACHER_RUN, "the shared teacher", planned.teacher)] if planned.teacher is not None else []) + \
        [(trial.trial_id, trial.label(), config) for trial, config in planned.trials]
    for run_id, label, config in runs:
        outcome = _run_one(run_id, label, config, planned.sweep_dir, request)
        outcomes.append(outcome)
        on_outcome(outcome)
        if run_id == TEACHER_RUN and outcome.status not in ("ok", "skipped"):
            break  # no trial can run without its teacher
    return planned.sweep_dir, outcomes


def _run_one(run_id: str, label: str, config: Config, sweep_dir: Path, request: SweepRequest) -> TrialOutcome:
    run_dir = sweep_dir / run_id
    exists = (run_dir / "config.toml").is_file()
    if exists and (run_dir / "config.toml").read_text(encoding="utf-8") != config.to_toml():
        raise ConfigError(f"sweep: {str(run_dir)!r} holds a run of another config; start the sweep over with "
                          "--force, or give it another --sweep-id")
    run_request = RunRequest(config=config, run_id=run_id, resume_dir=run_dir if exists else None,
                             show_progress=request.show_progress, command=request.command)
    try:
        execute(run_request)
    except RunAlreadyComplete:
        return TrialOutcome(run_id, label, "skipped", run_dir, "finished before; not rerun")
    except StageError as err:
        return TrialOutcome(run_id, label, "failed", run_dir, str(err))
    except BudgetExceeded as stop:
        return TrialOutcome(run_id, label, "stopped-budget", run_dir, str(stop))
    return TrialOutcome(run_id, label, "ok", run_dir)


def _read_raw(path: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    for override in overrides:
        if override.split("=", 1)[0].strip().startswith("sweep."):
            raise ConfigError(f"--set {override!r}: sweep keys are not set with --set; use --grid KEY=V1,V2")
    return load_raw(path, overrides)


def _with_run(raw: dict[str, Any], sweep_dir: Path, run_id: str) -> dict[str, Any]:
    """`raw` writing into the sweep's folder, named after the sweep and the run."""
    run = dict(raw.get("run", {}))
    run |= {"output_dir": str(sweep_dir), "name": f"{run.get('name', 'run')}-{run_id}"}
    return {**raw, "run": run}


def _teacher_stages(config: Config) -> tuple[str, ...]:
    """The leading training stages that train the teacher (what a shared teacher run holds)."""
    names = []
    for stage in config.stages:
        if not (isinstance(stage, TrainingStage) and stage.trained_role == "teacher"):
            break
        names.append(stage.name)
    return tuple(names)


def _share_teacher(sweep: SweepSection, base: Config, teacher_stages: tuple[str, ...]) -> bool:
    """Whether one teacher run serves every trial. `true` may share it across `run.seed` values: the teacher
    is then trained once, with the config's own seed, and the seeds vary the students' stages only."""
    indices = tuple(str(i) for i in range(len(teacher_stages)))
    blockers = touches_teacher(sweep, teacher_stages + indices)
    if sweep.share_teacher is True:
        blockers = [key for key in blockers if key != "run.seed"]
    why_not = ("no stage trains the teacher before the others" if not teacher_stages else
               "a suite keeps a teacher per task" if base.suite.tasks else
               "run.seeds trains a teacher per seed (run.share_teacher is false)" if base.run.seeds
               and not base.run.share_teacher else
               f"the axes {blockers} change the teacher" if blockers else None)
    if sweep.share_teacher is True and why_not:
        raise ConfigError(f"sweep.share_teacher: true, but {why_not}; set it to 'auto' or false")
    return sweep.share_teacher is not False and why_not is None


def _on_shared_teacher(raw: dict[str, Any], config: Config, teacher_stages: tuple[str, ...],
                       sweep_dir: Path) -> Config:
    """A trial's config that starts from the shared teacher run's model instead of training its own. Each
    kept training stage keeps the seed of its position in the full config (`seed_offset`), so a trial trains
    the student that a run of its own config would."""
    folder = sweep_dir / TEACHER_RUN / "checkpoints" / teacher_stages[-1]
    stages = [{"seed_offset": index, **s} if isinstance(c, TrainingStage) else s
              for index, (s, c) in enumerate(zip(raw["stages"], config.stages)) if c.name not in teacher_stages]
    teacher = {"source": "local", "name": str(folder.resolve())}
    return build_config({**raw, "teacher": teacher, "stages": stages})


def _claim_sweep_dir(planned: PlannedSweep, request: SweepRequest) -> None:
    path = planned.sweep_dir / SWEEP_FILE
    if path.is_file() and request.force:
        shutil.rmtree(planned.sweep_dir)
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if {k: v for k, v in saved.items() if k != "created_at"} != planned.definition:
            raise ConfigError(f"sweep: {str(planned.sweep_dir)!r} holds another sweep (other config, axes or "
                              "trials); continue it with its own config and --grid, start it over with --force, or "
                              "give this one another --sweep-id")
        return
    planned.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({**planned.definition, "created_at": utc_now()}, indent=2) + "\n")

