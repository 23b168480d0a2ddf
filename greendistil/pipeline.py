"""Runs the configured stages in order, each inside one measurement window.

Everything that can be checked before training is checked before the run directory is created (task,
country, teacher source, student layers, GLUE files), so bad input leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import os
import platform
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import AutoConfig

from greendistil import distributed, faults, runlog
from greendistil.config import (BenchmarkStage, Config, DistillStage, EvaluateStage, FinetuneStage, PretrainStage,
                                StageConfig, load_config)
from greendistil.data.corpus import CorpusText
from greendistil.data.glue import GlueExamples, GlueTask, get_task, load_glue
from greendistil.distributed import SINGLE, Dist
from greendistil.errors import ConfigError, GreendistilError, ModelSourceError, RunDirError, StageError
from greendistil.measure.carbon import CarbonMeter, grid_intensity
from greendistil.measure.nvml import NvmlMeter
from greendistil.measure.window import Meters, RunInfo, Window, measure
from greendistil.resume import RunProgress
from greendistil.mlmcheck import prepare_corpus
from greendistil.models import (STUDENT_MODEL_TYPES, LoadedModel, load_classifier, load_tokenizer, model_source, resolve_source,
                                tokenizer_source)
from greendistil.stages.benchmark import benchmark_examples, run_benchmark
from greendistil.stages.context import StageContext
from greendistil.stages.distill import run_distill
from greendistil.stages.evaluate import run_evaluate
from greendistil.stages.finetune import run_finetune
from greendistil.stages.pretrain import run_pretrain

logger = logging.getLogger(__name__)

STAGE_RUNNERS: dict[str, Callable[[StageContext, Any, Window], None]] = {
    "pretrain": run_pretrain, "finetune": run_finetune, "distill": run_distill, "evaluate": run_evaluate,
}
PACKAGES = ("greendistil", "torch", "transformers", "tokenizers", "datasets", "codecarbon", "nvidia-ml-py",
            "numpy", "pandas", "scikit-learn", "scipy")


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """What `prepare` checked and loaded before anything is written."""

    task: GlueTask
    splits: dict[str, GlueExamples]
    intensity_g_per_kwh: float
    intensity_source: str
    corpus: CorpusText | None = None  # read and split when an MLM stage needs it


def prepare(config: Config) -> Prepared:
    """Validate everything that can fail on bad input, and load the GLUE splits. Writes nothing."""
    task = get_task(config.task.name)
    intensity, intensity_source = grid_intensity(config.carbon.country_iso_code, config.carbon.intensity_g_per_kwh)
    _check_teacher(config)
    corpus = prepare_corpus(config)  # MLM stages: corpus, mask token, teacher head
    glue_dir = Path(config.task.glue_dir) if config.task.glue_dir else None
    splits = {"train": load_glue(task, "train", glue_dir=glue_dir, max_examples=config.task.max_train_examples,
                                 seed=config.run.seed)}
    for split in task.dev_splits:
        splits[split] = load_glue(task, split, glue_dir=glue_dir, max_examples=config.task.max_eval_examples,
                                  seed=config.run.seed)
    return Prepared(task=task, splits=splits, intensity_g_per_kwh=intensity, intensity_source=intensity_source,
                    corpus=corpus)


def run_pipeline(config: Config, *, run_id: str | None = None, force: bool = False,
                 command: str | None = None) -> Path:
    """Run every configured stage; returns the run directory. Stage errors propagate after their record.

    Under torchrun every rank calls this: rank 0 creates the run directory and writes the log, and each
    stage trains with DistributedDataParallel over all ranks (see `greendistil.distributed`).
    """
    with distributed.joined(config.run.ddp_backend) as dist:
        prepared = prepare(config)
        check_shards(config, dist)
        data_sources = _data_sources(prepared)

        def create() -> tuple[Path, runlog.RunLock]:
            check_disk_space(Path(config.run.output_dir), config)
            run_dir, lock = runlog.create_run_dir(Path(config.run.output_dir),
                                                  run_id or runlog.new_run_id(config.run.name), force=force)
            (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
            return run_dir, lock

        run_dir, lock = _on_main(dist, create)
        try:
            run, meters, device = _start_run(config, prepared, run_dir, command=command, data_sources=data_sources,
                                             dist=dist)
            ctx = StageContext(config=config, task=prepared.task, run_dir=run_dir, device=device,
                               splits=prepared.splits, corpus=prepared.corpus, dist=dist)
            _run_stages(ctx, run, meters, RunProgress())
        finally:
            if lock is not None:
                lock.release()
    return run_dir


def resume_pipeline(run_dir: Path, *, command: str | None = None) -> Path:
    """Continue an interrupted or failed run in place: done stages are skipped (their models reused), the
    stage that stopped continues from its last checkpoint as a new segment, and the rest run as usual.

    Raises RunAlreadyComplete when every stage is done, and GreendistilError when `run_dir` is no run.
    """
    config = load_config(run_dir / "config.toml")
    with distributed.joined(config.run.ddp_backend) as dist:
        def open_run() -> tuple[Path, runlog.RunLock]:
            lock = runlog.open_run_dir(run_dir)
            check_disk_space(run_dir, config)
            return run_dir, lock

        _, lock = _on_main(dist, open_run)
        try:
            progress = RunProgress.from_records(run_dir, runlog.read_records(run_dir))
            progress.check_not_complete(config, run_dir)
            prepared = prepare(config)
            check_shards(config, dist)
            run, meters, device = _start_run(config, prepared, run_dir, command=command,
                                             data_sources=_data_sources(prepared), dist=dist)
            ctx = StageContext(config=config, task=prepared.task, run_dir=run_dir, device=device,
                               splits=prepared.splits, corpus=prepared.corpus, artifacts=dict(progress.artifacts),
                               resuming=True, dist=dist)
            _run_stages(ctx, run, meters, progress)
        finally:
            if lock is not None:
                lock.release()
    return run_dir


def _on_main(dist: Dist, create: Callable[[], tuple[Path, runlog.RunLock]]) -> tuple[Path, runlog.RunLock | None]:
    """Rank 0 creates (or opens) the run directory and holds its lock; the other ranks learn its path, or
    raise rank 0's error, so that every rank stops the same way."""
    made = distributed.agree(dist, create, what="the run directory", error_type=RunDirError)
    run_dir = distributed.broadcast(dist, str(made[0]) if made is not None else "")
    return Path(run_dir), made[1] if made is not None else None


def _data_sources(prepared: Prepared) -> dict[str, str]:
    sources = {split: examples.source for split, examples in prepared.splits.items()}
    if prepared.corpus is not None:
        sources["corpus"] = prepared.corpus.source
    return sources


def _run_stages(ctx: StageContext, run: RunInfo, meters: Meters, progress: RunProgress) -> None:
    """Each stage not yet done, in order, in its own window(s); each stage starts from a seed of its own, so
    a stage gives the same result whether or not the stages before it ran in this process."""
    config = ctx.config
    try:
        for index, stage in enumerate(config.stages):
            if progress.is_done(stage):
                logger.info("%s: done in an earlier segment; skipped", stage.name)
                continue
            _seed_everything(config.run.seed + index, config.run.num_threads)
            if isinstance(stage, BenchmarkStage):
                _run_benchmark_stage(ctx, stage, run, meters, progress)
            else:
                with measure(stage=stage.name, kind=stage.kind, role=stage_role(stage), meters=meters, run=run,
                             segment=progress.next_segment(stage.name)) as window:
                    faults.point(f"stage-start:{stage.name}")
                    try:
                        STAGE_RUNNERS[stage.kind](ctx, stage, window)
                    except GreendistilError as err:  # found mid-run: the run dir exists, so not exit 2's "nothing written"
                        raise StageError(f"stage {stage.name!r}: {err}") from err
            faults.point(f"between-stages:{stage.name}")
    finally:
        meters.gpu.close()


def check_shards(config: Config, dist: Dist) -> None:
    """Under torchrun, each training batch is shared among the ranks: every rank needs at least one row."""
    for stage in config.stages:
        if isinstance(stage, (PretrainStage, FinetuneStage, DistillStage)) and stage.batch_size < dist.world_size:
            raise ConfigError(f"stages.{stage.name}.batch_size: {stage.batch_size} is smaller than the {dist.world_size} "
                              f"DDP processes it is shared among; use a batch_size of at least {dist.world_size} "
                              "(a multiple of it keeps every rank's share equal)")


def _run_benchmark_stage(ctx: StageContext, stage: BenchmarkStage, run: RunInfo, meters: Meters,
                         progress: RunProgress) -> None:
    """One window per (role, batch size): each record is one model's. Latency is a one-device figure, so
    under torchrun rank 0 benchmarks alone (its records say world_size 1) while the other ranks wait."""
    alone = dataclasses.replace(meters, dist=SINGLE)
    if ctx.dist.enabled and ctx.device.type == "cpu" and stage.num_threads == 0:
        # torchrun gives each process 1 thread (OMP_NUM_THREADS); rank 0 benchmarks while the others wait,
        # so it gets the cores a single process would have, and its figures compare with one.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        stage = dataclasses.replace(stage, num_threads=cores)

    def open_window(*, stage: str, role: str, kind: str = stage.kind) -> Any:  # `stage`: the window's name
        return measure(stage=stage, kind=kind, role=role, meters=alone, run=run, segment=progress.next_segment(stage))
    skip = [w for w in progress.windows(stage) if progress.window_done(w)]
    # The other ranks wait on the CPU (gloo), unmeasured: no record covers their idle draw meanwhile.
    distributed.agree(ctx.dist, lambda: run_benchmark(dataclasses.replace(ctx, dist=SINGLE), stage, open_window,
                                                      skip=skip), what=f"benchmark stage {stage.name!r}")


def check_disk_space(folder: Path, config: Config) -> None:
    """Refuse to start when the disk under `folder` cannot hold the run's checkpoints (a full disk found
    mid-run would cost the work done so far). Estimate: per training stage, the teacher-sized model saved
    once plus a training state of weights and two AdamW moments, all float32, plus a 256 MiB margin."""
    num_training = sum(1 for s in config.stages if isinstance(s, (PretrainStage, FinetuneStage, DistillStage)))
    need_bytes = num_training * 4 * 4 * _teacher_param_estimate(config) + (256 << 20)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    free_bytes = shutil.disk_usage(existing).free
    if free_bytes < need_bytes:
        raise RunDirError(f"run.output_dir: only {free_bytes / 2**30:.2f} GiB free under {str(existing)!r}; this run's "
                          f"checkpoints need about {need_bytes / 2**30:.2f} GiB; free space or choose another "
                          "folder with --set run.output_dir=...")


def _teacher_param_estimate(config: Config) -> int:
    """The teacher's parameter count from its config (BERT layout), without loading weights."""
    cfg = config.teacher
    if cfg.source == "scratch":
        hidden, layers, ffn, vocab = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, 30522
    else:
        try:
            model_config = AutoConfig.from_pretrained(resolve_source(cfg.source, cfg.name)[0])
            hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
            ffn, vocab = getattr(model_config, "intermediate_size", 4 * hidden), model_config.vocab_size
        except (OSError, ValueError, AttributeError):  # the preflight already vetted the source
            return 110_000_000  # BERT-base: a generous default
    return (vocab + 512 + 2) * hidden + layers * (4 * hidden * hidden + 2 * hidden * ffn + 9 * hidden + ffn)


def run_bench(config: Config, sources: dict[str, str], *, run_id: str | None = None, force: bool = False,
              command: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """`greendistil bench`: the config's benchmark stage on models named by `sources` (role -> folder,
    packaged model or hub id). Returns the run directory and the records written."""
    stages = [s for s in config.stages if isinstance(s, BenchmarkStage)]
    if len(stages) != 1:
        raise ConfigError(f"stages: `bench` runs exactly one benchmark stage, got {len(stages)}")
    stage = stages[0]
    if set(stage.roles) != set(sources):
        raise ConfigError(f"stages.{stage.name}.roles: {list(stage.roles)} do not match the models given for "
                          f"{list(sources)}")
    task = get_task(config.task.name)
    intensity, intensity_source = grid_intensity(config.carbon.country_iso_code, config.carbon.intensity_g_per_kwh)
    resolved = {role: model_source(text) for role, text in sources.items()}
    for path_or_id, _ in resolved.values():  # bad folders and ids fail here, before anything is written
        load_tokenizer(path_or_id)
    examples = benchmark_examples(task, config.task.glue_dir, stage.num_examples)  # missing GLUE data fails here

    def load(role: str) -> LoadedModel:
        path_or_id, label = resolved[role]
        return LoadedModel(model=load_classifier(path_or_id, task), tokenizer=load_tokenizer(path_or_id), source=label)

    prepared = Prepared(task=task, splits={}, intensity_g_per_kwh=intensity, intensity_source=intensity_source)
    run_dir, lock = runlog.create_run_dir(Path(config.run.output_dir), run_id or runlog.new_run_id(config.run.name),
                                          force=force)
    try:
        (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        _seed_everything(config.run.seed, config.run.num_threads)
        run, meters, device = _start_run(config, prepared, run_dir, command=command,
                                         data_sources={"benchmark": examples.source})
        ctx = StageContext(config=config, task=task, run_dir=run_dir, device=device, splits={})
        try:
            records = run_benchmark(ctx, stage, functools.partial(measure, kind=stage.kind, meters=meters, run=run),
                                    load=load)
        finally:
            meters.gpu.close()
    finally:
        lock.release()
    return run_dir, records


def _start_run(config: Config, prepared: Prepared, run_dir: Path, *, command: str | None,
               data_sources: dict[str, str], dist: Dist = SINGLE) -> tuple[RunInfo, Meters, torch.device]:
    """Describe the run (what every record shares) and set up this process's meters."""
    if config.run.num_threads > 0:
        torch.set_num_threads(config.run.num_threads)
    device = distributed.device(dist)
    run = RunInfo(
        run_id=run_dir.name, run_dir=run_dir, config_hash=config.config_hash(), git_sha=_git_sha(),
        versions=_versions(), hardware=_hardware(device), country_iso_code=config.carbon.country_iso_code,
        pue=config.carbon.pue, intensity_g_per_kwh=prepared.intensity_g_per_kwh,
        intensity_source=prepared.intensity_source, command=command, task=config.task.name,
        data_sources=data_sources,
    )
    meters = Meters(
        # One codecarbon tracker per machine (it measures the whole machine's CPU and RAM): local rank 0's.
        carbon=CarbonMeter(output_dir=run_dir, run_id=run.run_id, country_iso_code=config.carbon.country_iso_code,
                           measure_power_s=config.carbon.measure_power_s,
                           intensity_g_per_kwh=config.carbon.intensity_g_per_kwh,
                           output_file=runlog.node_emissions_file(dist.node_rank)) if dist.is_node_leader else None,
        # Only the GPU this process computes on: other cards' draw is not this run's energy (DDP: one per rank).
        gpu=NvmlMeter(sample_interval_s=config.carbon.gpu_sample_interval_s,
                      device_indices=[device.index if device.index is not None else torch.cuda.current_device()]
                      if device.type == "cuda" else None),
        dist=dist,
    )
    return run, meters, device


def stage_role(stage: StageConfig) -> str:
    if isinstance(stage, (FinetuneStage, PretrainStage)):
        return stage.role
    if isinstance(stage, DistillStage):
        return "student"
    assert isinstance(stage, (EvaluateStage, BenchmarkStage))
    return "+".join(stage.roles)


def _check_teacher(config: Config) -> None:
    """Resolve the teacher source and check the student's layers against its depth, before any work."""
    cfg = config.teacher
    if cfg.source == "scratch":
        num_layers = cfg.num_layers
        tokenizer = load_tokenizer(tokenizer_source(cfg.tokenizer)[0])  # fails here, not inside the first stage
    else:
        path_or_id, _ = resolve_source(cfg.source, cfg.name)
        try:
            model_config = AutoConfig.from_pretrained(path_or_id)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelSourceError(f"teacher.name: cannot load {cfg.name!r} ({cfg.source}): {first}") from None
        num_layers = model_config.num_hidden_layers
        trained_for = getattr(model_config, "greendistil_task", None)
        if trained_for not in (None, config.task.name):
            raise ModelSourceError(f"teacher.name: {cfg.name!r} was trained for GLUE task {trained_for!r}, not "
                                   f"{config.task.name!r}; use a model for {config.task.name!r} or an untrained source")
        builds_student = config.student.init == "teacher" and any(s.kind == "distill" for s in config.stages)
        if builds_student and model_config.model_type not in STUDENT_MODEL_TYPES:
            raise ModelSourceError(f"teacher.name: a student cannot be built from a {model_config.model_type!r} "
                                   f"model by copying layers; supported: {', '.join(sorted(STUDENT_MODEL_TYPES))}")
        tokenizer = load_tokenizer(path_or_id)  # a folder without tokenizer files fails here, before anything is written
    if tokenizer.pad_token_id is None:
        raise ModelSourceError(f"teacher: the tokenizer of {cfg.name!r} has no padding token; dynamic padding needs one")
    layers = config.student.layers
    if layers is not None and max(layers) >= num_layers:
        raise ConfigError(f"student.layers: {list(layers)} is out of range; the teacher has {num_layers} layers, "
                          f"valid indices 0..{num_layers - 1}")


def _seed_everything(seed: int, num_threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def _git_sha() -> str | None:
    """The commit of greendistil's own code (None when installed from a wheel); '-dirty' if modified."""
    package_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True,
                             cwd=package_dir)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5, cwd=package_dir).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device), "gpu_count": 0,
    }
    if device.type == "cuda":
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
