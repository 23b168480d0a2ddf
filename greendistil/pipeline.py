"""One execute path for `run`, `run --resume` and `bench`: preflight, the run directory, the meters, then each
stage in order, each window opened by the one window opener here.

Everything that can fail on bad input is checked by `preflight` before the run directory is created or
locked, so bad input leaves nothing half-written. Stage errors propagate after their record is written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import ChainMap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from greendistil import distributed
from greendistil.config import Config, StageConfig, TrainingStage, WindowSpec, is_suite, suite_steps
from greendistil.distributed import SINGLE, Dist
from greendistil.errors import BudgetExceeded, GreendistilError, RunDirError, StageError
from greendistil.measure.budget import BudgetGuard, Limits, Spent, exhausted
from greendistil.measure.forecast import RunTotals
from greendistil.measure.carbon import CarbonMeter
from greendistil.measure.live import live_energy
from greendistil.measure.nvml import NvmlMeter
from greendistil.measure.window import Clock, Meters, RunInfo, Window, measure
from greendistil.preflight import Preflight, check_disk_space, preflight
from greendistil.runlog.plans import plan_after, plan_entry
from greendistil.runlog.progress import RunAlreadyComplete, RunProgress
from greendistil.runlog.store import (RunLock, create_run_dir, new_run_id, node_emissions_file, open_run_dir,
                                      read_records, write_text_atomically)
from greendistil.runlog.tensorboard import ScalarLog
from greendistil.runtime.environment import git_sha, hardware, versions
from greendistil.runtime.precision import apply_matmul_precision, resolve_precision
from greendistil.runtime.rng import seed_everything
from greendistil.stages import RUNNERS, StageContext
from greendistil.testing import faults

logger = logging.getLogger(__name__)

__all__ = ["Contexts", "RunAlreadyComplete", "RunHandle", "RunRequest", "WindowOpener", "execute", "start_run"]


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What to execute: a new run of `config`, the run in `resume_dir` continued, or (`sources`) the
    config's benchmark stage on given models (`greendistil bench`)."""

    config: Config
    run_id: str | None = None  # the new run directory's name (default: <run.name>-<UTC time>-<random>)
    force: bool = False  # start an existing run directory over
    resume_dir: Path | None = None  # continue this run: done stages skipped, the stopped one from its checkpoint
    sources: dict[str, str] | None = None  # role -> folder, packaged model or hub id (replaces teacher/student)
    command: str | None = None  # the command line, for the records
    show_progress: bool | None = None  # progress bars: None = only on a terminal
    clock: Clock = time.perf_counter  # times every window (tests: a fake clock)
    plan: dict[str, Any] | None = None  # `greendistil plan`'s forecasts, kept in each window's record


@dataclass
class RunHandle:
    """Filled in as the run goes: the run directory once it exists (so an interrupted run can say how to
    continue it)."""

    run_dir: Path | None = None
    resumable: bool = True  # False for `bench`: its models are not in its config, so --resume cannot redo it


def execute(request: RunRequest, handle: RunHandle | None = None) -> Path:
    """Run the request's stages; returns the run directory. Under torchrun every rank calls this: rank 0
    creates the run directory and writes the log, and each stage trains with DDP over all ranks.

    Raises GreendistilError on bad input (nothing written), RunAlreadyComplete when `--resume` finds
    nothing to do, StageError when a stage fails, and KeyboardInterrupt / RunInterrupted on a signal.
    """
    config, handle = request.config, handle or RunHandle()
    handle.resumable = request.sources is None
    with distributed.joined(config.run.ddp_backend, config.run.device) as dist:
        if request.resume_dir is not None:  # before the preflight: a finished run needs no data
            RunProgress.from_records(request.resume_dir, read_records(request.resume_dir)).check_not_complete(
                config, request.resume_dir)
        checked = preflight(config, dist=dist, sources=request.sources)
        run_dir, lock = _claim_run_dir(request, checked, dist)
        handle.run_dir = run_dir
        try:
            progress = RunProgress.from_records(run_dir, read_records(run_dir)) if request.resume_dir else RunProgress()
            run, meters, device = start_run(config, checked, run_dir, command=request.command, dist=dist)
            scalar_log = ScalarLog(run_dir) if config.run.tensorboard and dist.is_main else None
            contexts = Contexts(request, checked, run_dir, device, progress, dist, scalar_log)
            try:
                _run_steps(config, contexts, run, meters, progress, request.clock)
            finally:
                if scalar_log is not None:
                    scalar_log.close()
        finally:
            if lock is not None:
                lock.release()
    return run_dir


class WindowOpener:
    """The one window opener: `with opener(spec) as window` measures one window of `stage` (of `task`) into
    one record, numbered as the next segment of that window; a library error found mid-stage becomes a
    StageError (the run directory exists by then, so it is no longer exit 2's "nothing written")."""

    def __init__(self, stage: StageConfig, run: RunInfo, meters: Meters, progress: RunProgress, clock: Clock,
                 run_limits: Limits | None = None, plan: dict[str, Any] | None = None) -> None:
        self.stage, self.run, self.meters, self.progress, self.clock = stage, run, meters, progress, clock
        self.run_limits = run_limits or Limits(scope="run")
        self.plan = plan

    def is_done(self, spec: WindowSpec) -> bool:
        return self.progress.window_done(self.run.task, spec.name, self.run.seed)

    def alone(self) -> WindowOpener:
        """The same opener for rank 0 measuring alone (its records say world_size 1)."""
        return WindowOpener(self.stage, self.run, dataclasses.replace(self.meters, dist=SINGLE), self.progress,
                            self.clock, self.run_limits, self.plan)

    def _scopes(self) -> list[Limits]:
        return [self.run_limits, Limits.of(f"stages.{self.stage.name}", self.stage)]

    def _run_log(self) -> list[dict[str, Any]]:
        """The run's records so far: rank 0 reads the run log and every rank gets them (another rank could
        read it torn or late)."""
        dist = self.meters.dist
        return distributed.broadcast(dist, read_records(self.run.run_dir) if dist.is_main else [])

    def _guard(self, spec: WindowSpec, records: list[dict[str, Any]] | None) -> BudgetGuard | None:
        """The run's and the stage's budgets, against what the run and this stage's earlier segments spent
        (`records`: the run log, read when there is a budget or a training window)."""
        scopes = self._scopes()
        if records is None or not any(scope.set_limits() for scope in scopes):
            return None
        # A suite's stage budget is per task (and seed): each task's segments of the stage count against it.
        earlier = [r for r in records if r.get("stage") == spec.name and r.get("task") in (self.run.task, None)
                   and r.get("seed") == self.run.seed]
        stop = exhausted(scopes[1], Spent.of_records(earlier))
        if stop is not None:  # its earlier segments spent the stage's budget: not even one more step
            raise stop
        meters = self.meters
        return BudgetGuard(limits=scopes, before={"run": Spent.of_records(records),
                                                  scopes[1].scope: Spent.of_records(earlier)},
                           kg_co2_per_kwh=self.run.kg_co2_per_kwh, energy_now=lambda: live_energy(meters),
                           clock=self.clock, step_estimate=Spent.per_step(earlier))

    def _run_totals(self, spec: WindowSpec, records: list[dict[str, Any]] | None) -> RunTotals | None:
        """For a training window: what the run spent before it, and the plan's windows after it."""
        if records is None or not isinstance(self.stage, TrainingStage):
            return None
        spent = Spent.of_records(records)
        later = plan_after(self.plan, self.run.task, spec.name, self.run.seed) or {}
        return RunTotals(spent_duration_s=spent.duration_s, spent_energy_kwh=spent.energy_kwh,
                         spent_co2_kg=spent.co2_kg, later_duration_s=later.get("duration_s"),
                         later_energy_kwh=later.get("energy_kwh"), later_co2_kg=later.get("co2_kg"))

    @contextmanager
    def __call__(self, spec: WindowSpec) -> Iterator[Window]:
        budgeted = any(scope.set_limits() for scope in self._scopes())
        records = self._run_log() if budgeted or isinstance(self.stage, TrainingStage) else None
        with measure(stage=spec.name, kind=self.stage.kind, role=spec.role, meters=self.meters, run=self.run,
                     segment=self.progress.next_segment(self.run.task, spec.name, self.run.seed), clock=self.clock,
                     guard=self._guard(spec, records),
                     plan_forecast=plan_entry(self.plan, self.run.task, spec.name, self.run.seed),
                     run_totals=self._run_totals(spec, records)) as window:
            faults.point(f"stage-start:{spec.name}")
            try:
                yield window
            except GreendistilError as err:
                raise StageError(f"stage {self.stage.name!r}{_of_task(self.run.task)}: {err}") from err


class Contexts:
    """The StageContext of each (task, seed) of the run (built when its first stage runs, so only one task's
    encoded data is held at a time), and of the suite's shared stages. Artifacts: a seed's stages see their
    own over those its task's seeds share (a shared teacher), over the suite's shared stages' ones."""

    def __init__(self, request: RunRequest, checked: Preflight, run_dir: Path, device: torch.device,
                 progress: RunProgress, dist: Dist, scalar_log: ScalarLog | None = None) -> None:
        self.request, self.checked, self.run_dir, self.device, self.dist = request, checked, run_dir, device, dist
        self.scalar_log = scalar_log
        self.progress = progress
        self.suite = is_suite(request.config)
        # (task, seed) -> role -> model folder: what each (task, seed)'s stages wrote, shared by its contexts.
        self.written: dict[tuple[str | None, int | None], dict[str, Path]] = {
            key: dict(folders) for key, folders in progress.artifacts.items()}
        self._current: tuple[tuple[str | None, int | None], StageContext] | None = None

    def get(self, task: str | None, seed: int | None = None) -> StageContext:
        if self._current is None or self._current[0] != (task, seed):
            self._current = ((task, seed), self._build(task, seed))
        return self._current[1]

    def _own(self, task: str | None, seed: int | None) -> dict[str, Path]:
        return self.written.setdefault((task, seed), {})

    def _build(self, task: str | None, seed: int | None) -> StageContext:
        data = self.checked.tasks[task] if task is not None else self.checked.first
        layers = [self._own(task, seed)]
        if seed is not None:  # the seeds' shared stages: a shared teacher, and the suite's for this seed
            layers += [self._own(task, None)] + ([self._own(None, seed)] if task is not None else [])
        if task is not None:
            layers.append(self._own(None, None))
        folder = "/".join([*([task] if self.suite and task is not None else []),
                           *([f"seed-{seed}"] if seed is not None else [])])
        # A seed's stages see run.seed = that seed (their loaders' shuffles, their masks); a shared teacher's, the first.
        run_seed = seed if seed is not None else (self.request.config.run.seeds or (data.config.run.seed,))[0]
        config = dataclasses.replace(data.config, run=dataclasses.replace(data.config.run, seed=run_seed))
        return StageContext(
            config=config, task=data.task, run_dir=self.run_dir, device=self.device,
            splits=data.splits if task is not None else {}, teacher=self.checked.teacher,
            sources=self.checked.sources, benchmark_examples=data.benchmark_examples, corpus=self.checked.corpus,
            artifacts=ChainMap(*layers), task_folder=folder or None,
            resuming=self.request.resume_dir is not None, dist=self.dist, job_world_size=self.dist.world_size,
            show_progress=self.request.show_progress, clock=self.request.clock, scalar_log=self.scalar_log,
            precision=resolve_precision(self.request.config.run.precision, self.device))


def _run_steps(config: Config, contexts: Contexts, run: RunInfo, meters: Meters, progress: RunProgress,
               clock: Clock) -> None:
    """Each (task, stage) not yet done, in `suite_steps` order; each starts from a seed of its own (the
    stage's position in [[stages]]), so a stage gives the same result whether or not the stages before it
    ran in this process."""
    run_limits = Limits.of("run", config.run)
    try:
        for step in suite_steps(config):
            stage = step.stage
            if progress.is_done(step):
                logger.info("%s%s: done in an earlier segment; skipped", stage.name, _of_task(step.task))
                continue
            if run_limits.set_limits():  # the same on every rank: every rank takes part in the broadcast or none
                # Rank 0 decides (it writes the run log; another rank could read it before the last record lands).
                stop = distributed.broadcast(meters.dist, exhausted(run_limits, Spent.of_records(read_records(
                    run.run_dir))) if meters.dist.is_main else None)
                if stop is not None:  # nothing left for this stage: stop before it starts (no record)
                    raise stop
            seed_everything(step.torch_seed)
            _set_threads(config.run.num_threads)
            ctx = contexts.get(step.task, step.seed)
            step_run = dataclasses.replace(run, task=step.task, seed=step.seed,
                                           data_sources=contexts.checked.data_sources(step.task))
            runner = RUNNERS[stage.kind]
            opener = WindowOpener(stage, step_run, meters, progress, clock, run_limits, contexts.request.plan)
            if stage.one_process and ctx.dist.enabled:
                # Rank 0 measures alone while the other ranks wait on the CPU (gloo), unmeasured: no record
                # covers their idle draw meanwhile.
                alone = dataclasses.replace(ctx, dist=SINGLE)
                distributed.agree(ctx.dist, lambda: runner(alone, stage, opener.alone()),
                                  what=f"{stage.kind} stage {stage.name!r}")
            else:
                runner(ctx, stage, opener)
            faults.point(f"between-stages:{stage.name}")
    except (Exception, BudgetExceeded):  # a failed or stopped stage: the models saved before it get their cards
        _write_model_cards(contexts)
        raise
    else:
        _write_model_cards(contexts)
    finally:
        meters.gpu.close()


def _write_model_cards(contexts: Contexts) -> None:
    """Write the model cards from the run log once its stages are over (rank 0), so a student's card has
    its scores. A card that cannot be written never stops the run: `greendistil card RUN_DIR` writes it."""
    if not contexts.dist.is_main:
        return
    run_dir = contexts.run_dir
    try:
        from greendistil.report.model_card import write_cards  # the report's libraries: inside the guard too

        write_cards(run_dir)
    except Exception as err:
        logger.warning("model cards not written (%s: %s); write them with: greendistil card %s",
                       type(err).__name__, err, run_dir)


def _of_task(task: str | None) -> str:
    return f" of task {task!r}" if task is not None else " (shared by the suite's tasks)"


def _claim_run_dir(request: RunRequest, checked: Preflight, dist: Dist) -> tuple[Path, RunLock | None]:
    """Rank 0 creates (or, resuming, opens) the run directory and holds its lock; the other ranks learn its
    path, or raise rank 0's error, so that every rank stops the same way."""
    config = request.config

    def claim() -> tuple[Path, RunLock]:
        if request.resume_dir is not None:
            lock = open_run_dir(request.resume_dir)
            check_disk_space(request.resume_dir, config, checked.teacher)
            saved = request.resume_dir / "config.toml"
            if saved.read_text(encoding="utf-8") != config.to_toml():  # a budget raised with --set: kept for later
                write_text_atomically(saved, config.to_toml())
            return request.resume_dir, lock
        check_disk_space(Path(config.run.output_dir), config, checked.teacher)
        run_dir, lock = create_run_dir(Path(config.run.output_dir), request.run_id or new_run_id(config.run.name),
                                       force=request.force)
        (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        return run_dir, lock

    made = distributed.agree(dist, claim, what="the run directory", error_type=RunDirError)
    run_dir = distributed.broadcast(dist, str(made[0]) if made is not None else "")
    return Path(run_dir), made[1] if made is not None else None


def start_run(config: Config, checked: Preflight, run_dir: Path, *, command: str | None,
               dist: Dist = SINGLE) -> tuple[RunInfo, Meters, torch.device]:
    """Describe the run (what every record shares) and set up this process's meters."""
    _set_threads(config.run.num_threads)
    device = distributed.device(dist, config.run.device)
    precision = resolve_precision(config.run.precision, device)
    apply_matmul_precision(precision)
    run = RunInfo(
        run_id=run_dir.name, run_dir=run_dir, config_hash=config.config_hash(), git_sha=git_sha(),
        versions=versions(), hardware=hardware(device) | precision.describe(), country_iso_code=config.carbon.country_iso_code,
        pue=config.carbon.pue, intensity_g_per_kwh=checked.intensity_g_per_kwh,
        intensity_source=checked.intensity_source, command=command, task=None,  # set per stage: the task it serves
        data_sources={},
    )
    meters = Meters(
        # One codecarbon tracker per machine (it measures the whole machine's CPU and RAM): local rank 0's.
        carbon=CarbonMeter(output_dir=run_dir, run_id=run.run_id, country_iso_code=config.carbon.country_iso_code,
                           measure_power_s=config.carbon.measure_power_s,
                           intensity_g_per_kwh=config.carbon.intensity_g_per_kwh,
                           tracking_mode=config.carbon.tracking_mode,
                           output_file=node_emissions_file(dist.node_rank)) if dist.is_node_leader else None,
        # Only the GPU this process computes on: other cards' draw is not this run's energy (DDP: one per rank).
        gpu=NvmlMeter(sample_interval_s=config.carbon.gpu_sample_interval_s,
                      device_indices=[device.index if device.index is not None else torch.cuda.current_device()]
                      if device.type == "cuda" else None),
        dist=dist,
    )
    return run, meters, device


def _set_threads(num_threads: int) -> None:
    if num_threads > 0:
        torch.set_num_threads(num_threads)
