"""Runs the configured stages in order, each inside one measurement window.

Everything that can be checked before training is checked before the run directory is created (task,
country, teacher source, student layers, GLUE files), so bad input leaves nothing half-written.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import platform
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import AutoConfig

from greendistil import runlog
from greendistil.config import (BenchmarkStage, Config, DistillStage, EvaluateStage, FinetuneStage, PretrainStage,
                                StageConfig)
from greendistil.data.corpus import CorpusText
from greendistil.data.glue import GlueExamples, GlueTask, get_task, load_glue
from greendistil.errors import ConfigError, GreendistilError, ModelSourceError, StageError
from greendistil.measure.carbon import CarbonMeter, grid_intensity
from greendistil.measure.nvml import NvmlMeter
from greendistil.measure.window import Meters, RunInfo, Window, measure
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
    """Run every configured stage; returns the run directory. Stage errors propagate after their record."""
    prepared = prepare(config)
    data_sources = {split: examples.source for split, examples in prepared.splits.items()}
    if prepared.corpus is not None:
        data_sources["corpus"] = prepared.corpus.source
    run, meters, device = _start_run(config, prepared.intensity_g_per_kwh, prepared.intensity_source,
                                     run_id=run_id, force=force, command=command, data_sources=data_sources)
    ctx = StageContext(config=config, task=prepared.task, run_dir=run.run_dir, device=device, splits=prepared.splits,
                       corpus=prepared.corpus)
    try:
        for stage in config.stages:
            if isinstance(stage, BenchmarkStage):  # one window per (role, batch size): each record is one model's
                run_benchmark(ctx, stage, functools.partial(measure, kind=stage.kind, meters=meters, run=run))
                continue
            with measure(stage=stage.name, kind=stage.kind, role=stage_role(stage), meters=meters, run=run) as window:
                try:
                    STAGE_RUNNERS[stage.kind](ctx, stage, window)
                except GreendistilError as err:  # found mid-run: the run dir exists, so not exit 2's "nothing written"
                    raise StageError(f"stage {stage.name!r}: {err}") from err
    finally:
        meters.gpu.close()
    return run.run_dir


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

    run, meters, device = _start_run(config, intensity, intensity_source, run_id=run_id, force=force, command=command,
                                     data_sources={"benchmark": examples.source})
    ctx = StageContext(config=config, task=task, run_dir=run.run_dir, device=device, splits={})
    try:
        records = run_benchmark(ctx, stage, functools.partial(measure, kind=stage.kind, meters=meters, run=run),
                                load=load)
    finally:
        meters.gpu.close()
    return run.run_dir, records


def _start_run(config: Config, intensity_g_per_kwh: float, intensity_source: str, *, run_id: str | None,
               force: bool, command: str | None, data_sources: dict[str, str]) -> tuple[RunInfo, Meters, torch.device]:
    """Create the run directory (with the resolved config), seed, and set up the run's meters."""
    run_id = run_id or runlog.new_run_id(config.run.name)
    run_dir = runlog.create_run_dir(Path(config.run.output_dir), run_id, force=force)
    (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    _seed_everything(config.run.seed, config.run.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = RunInfo(
        run_id=run_id, run_dir=run_dir, config_hash=config.config_hash(), git_sha=_git_sha(),
        versions=_versions(), hardware=_hardware(device), country_iso_code=config.carbon.country_iso_code,
        pue=config.carbon.pue, intensity_g_per_kwh=intensity_g_per_kwh, intensity_source=intensity_source,
        command=command, task=config.task.name, data_sources=data_sources,
    )
    meters = Meters(
        carbon=CarbonMeter(output_dir=run_dir, run_id=run_id, country_iso_code=config.carbon.country_iso_code,
                           measure_power_s=config.carbon.measure_power_s,
                           intensity_g_per_kwh=config.carbon.intensity_g_per_kwh),
        # Only the GPU this process computes on: other cards' draw is not this run's energy (DDP: one per rank).
        gpu=NvmlMeter(sample_interval_s=config.carbon.gpu_sample_interval_s,
                      device_indices=[torch.cuda.current_device()] if device.type == "cuda" else None),
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
