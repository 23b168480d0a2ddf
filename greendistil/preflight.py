"""Everything that can fail on bad input, checked before anything is written; the result is handed on.

`preflight(config)` resolves the teacher once (its config and tokenizer, not its weights), checks the
student's layers against it, reads the data the stages need (GLUE splits, the benchmark's sentences, the
MLM corpus), checks the MLM stages (mask token, a trained head to distil from), the grid intensity, the
device and the shares of a batch under torchrun; `check_disk_space` (called by the pipeline just before
it creates the run directory) the free disk. Every failure is a `GreendistilError` naming the key,
the value and what would be valid: the CLI prints it as one line and exits 2, with no run directory made.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from greendistil.config import (BenchmarkStage, Config, DistillStage, EvaluateStage, FinetuneStage, PretrainStage,
                                TrainingStage, for_task, is_shared, run_tasks, suite_steps)
from greendistil.data.corpus import CorpusText, load_corpus_text
from greendistil.data.glue import GlueExamples, load_glue
from greendistil.data.tasks import GlueTask, get_task
from greendistil.data.grid import grid_intensity
from greendistil.data.masking import build_masker
from greendistil.distributed import SINGLE, Dist, device
from greendistil.errors import ConfigError, ModelSourceError, RunDirError
from greendistil.models.mlm import checkpoint_has_mlm_head
from greendistil.models.sources import ResolvedTeacher, load_tokenizer, model_source, resolve_teacher
from greendistil.models.student import STUDENT_MODEL_TYPES, copied_layers, scratch_config, student_layers
from greendistil.runlog.tensorboard import tensorboard_missing
from greendistil.runtime.precision import resolve_precision
from greendistil.train.matching import Shape, resolve_match

logger = logging.getLogger(__name__)

DISK_MARGIN_BYTES = 256 << 20


@dataclass(frozen=True, kw_only=True)
class TaskData:
    """One task of the run: the config it sees (its overrides applied) and its data, read."""

    config: Config  # `for_task(config, name)`: [task] named and overridden, no suite
    task: GlueTask
    splits: dict[str, GlueExamples]  # "train" and the dev split(s), as far as the stages need them
    benchmark_examples: GlueExamples | None = None  # the benchmark stage's sentences, in file order

    def data_sources(self) -> dict[str, str]:
        """Split -> where its examples were read from, for the records."""
        found = {split: examples.source for split, examples in self.splits.items()}
        if self.benchmark_examples is not None:
            found["benchmark"] = self.benchmark_examples.source
        return found


@dataclass(frozen=True, kw_only=True)
class Preflight:
    """What the preflight checked and loaded: the run starts from this and loads none of it again."""

    tasks: dict[str, TaskData]  # the run's tasks, in the order they run
    intensity_g_per_kwh: float
    intensity_source: str
    teacher: ResolvedTeacher | None  # None when every model comes from `sources` (`greendistil bench`)
    corpus: CorpusText | None = None  # the MLM stages' corpus, read and split
    sources: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # role -> (path/id, label)

    @property
    def first(self) -> TaskData:
        return next(iter(self.tasks.values()))

    @property
    def task(self) -> GlueTask:
        """The (first) task: a single-task run's only one."""
        return self.first.task

    @property
    def splits(self) -> dict[str, GlueExamples]:
        return self.first.splits

    @property
    def benchmark_examples(self) -> GlueExamples | None:
        return self.first.benchmark_examples

    def data_sources(self, task: str | None = None) -> dict[str, str]:
        """Split -> where its examples were read from: the task's (None: a shared stage's, the corpus)."""
        found = self.tasks[task].data_sources() if task is not None else {}
        if self.corpus is not None:
            found["corpus"] = self.corpus.source
        return found


def preflight(config: Config, *, dist: Dist = SINGLE, sources: dict[str, str] | None = None) -> Preflight:
    """Check everything that can fail on bad input and load what the stages need. Writes nothing.

    `sources` (role -> a folder, packaged model or hub id) replaces the configured teacher and student.
    Every task's data is read here: a suite whose last task has no data fails before its first one runs.
    """
    intensity, intensity_source = grid_intensity(config.carbon.country_iso_code, config.carbon.intensity_g_per_kwh)
    computes_on = device(dist, config.run.device)  # run.device = "cuda" without a GPU fails here, before the run dir
    try:
        resolve_precision(config.run.precision, computes_on)
    except ValueError as err:
        raise ConfigError(f"run.precision: {err}") from None
    if config.run.tensorboard and (missing := tensorboard_missing()) is not None:
        raise ConfigError(f"run.tensorboard: true needs TensorBoard, but {missing}; or set run.tensorboard = false")
    check_shards(config, dist)
    if sources:
        _check_sources(config, sources)
    resolved_sources = {role: model_source(text) for role, text in (sources or {}).items()}
    for path_or_id, _ in resolved_sources.values():  # bad folders and ids fail here
        load_tokenizer(path_or_id)
    teacher = None if sources else resolve_teacher(config.teacher)
    if teacher is not None:
        for name in run_tasks(config):
            _check_teacher(for_task(config, name), teacher)
    corpus = _prepare_corpus(config, teacher)
    return Preflight(tasks={name: _task_data(for_task(config, name)) for name in run_tasks(config)},
                     intensity_g_per_kwh=intensity, intensity_source=intensity_source, teacher=teacher,
                     corpus=corpus, sources=resolved_sources)


def _task_data(config: Config) -> TaskData:
    task = get_task(config.task.name)
    return TaskData(config=config, task=task, splits=_load_splits(config, task),
                    benchmark_examples=_benchmark_examples(config, task))


def _check_sources(config: Config, sources: dict[str, str]) -> None:
    """Models given by source (`bench`) replace the teacher and student: only benchmark stages of those
    roles can run on them."""
    for index, stage in enumerate(config.stages):
        if not isinstance(stage, BenchmarkStage) or not set(stage.roles) <= set(sources):
            raise ConfigError(f"stages.{index}: models given by source ({', '.join(sources)}) run only benchmark "
                              f"stages of those roles, not a {stage.kind} stage of {getattr(stage, 'roles', '')}")


def check_shards(config: Config, dist: Dist) -> None:
    """Under torchrun, each training batch is shared among the ranks: every rank needs at least one row."""
    for stage in config.stages:
        if isinstance(stage, TrainingStage) and stage.batch_size < dist.world_size:
            raise ConfigError(f"stages.{stage.name}.batch_size: {stage.batch_size} is smaller than the {dist.world_size} "
                              f"DDP processes it is shared among; use a batch_size of at least {dist.world_size} "
                              "(a multiple of it keeps every rank's share equal)")


def check_disk_space(folder: Path, config: Config, teacher: ResolvedTeacher | None) -> None:
    """Refuse to start when the disk under `folder` cannot hold the run's checkpoints (a full disk found
    mid-run would cost the work done so far). Estimate: per training stage (per task in a suite), the teacher-sized model saved
    once plus a training state of weights and two AdamW moments, all float32, plus a 256 MiB margin."""
    num_training = sum(1 for step in suite_steps(config) if isinstance(step.stage, TrainingStage))
    need_bytes = num_training * 4 * 4 * _teacher_param_estimate(teacher) + DISK_MARGIN_BYTES
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    free_bytes = shutil.disk_usage(existing).free
    if free_bytes < need_bytes:
        raise RunDirError(f"run.output_dir: only {free_bytes / 2**30:.2f} GiB free under {str(existing)!r}; this run's "
                          f"checkpoints need about {need_bytes / 2**30:.2f} GiB; free space or choose another "
                          "folder with --set run.output_dir=...")


def _teacher_param_estimate(teacher: ResolvedTeacher | None) -> int:
    """The teacher's parameter count from its config (BERT layout), without loading weights."""
    if teacher is None:
        return 0  # `bench`: nothing is trained or checkpointed
    c = teacher.model_config
    try:
        hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    except AttributeError:  # not a BERT-like config: a generous default (BERT-base)
        return 110_000_000
    ffn = getattr(c, "intermediate_size", 4 * hidden)
    return (vocab + 512 + 2) * hidden + layers * (4 * hidden * hidden + 2 * hidden * ffn + 9 * hidden + ffn)


def _check_teacher(config: Config, teacher: ResolvedTeacher) -> None:
    """The teacher fits the task and the student: trained for this task if at all, a copyable encoder when
    the student is built from its layers, a padding token, and enough layers for `student.layers`."""
    model_config = teacher.model_config
    trained_for = getattr(model_config, "greendistil_task", None)
    if trained_for not in (None, config.task.name):
        raise ModelSourceError(f"teacher.name: {config.teacher.name!r} was trained for GLUE task {trained_for!r}, not "
                               f"{config.task.name!r}; use a model for {config.task.name!r} or an untrained source")
    builds_student = config.student.init == "teacher" and any(s.kind == "distill" for s in config.stages)
    if teacher.path_or_id is not None and builds_student and model_config.model_type not in STUDENT_MODEL_TYPES:
        raise ModelSourceError(f"teacher.name: a student cannot be built from a {model_config.model_type!r} "
                               f"model by copying layers; supported: {', '.join(sorted(STUDENT_MODEL_TYPES))}")
    if teacher.tokenizer.pad_token_id is None:
        raise ModelSourceError(f"teacher: the tokenizer of {config.teacher.name!r} has no padding token; dynamic "
                               "padding needs one")
    layers = config.student.layers
    if layers is not None and max(layers) >= teacher.num_layers:
        raise ConfigError(f"student.layers: {list(layers)} is out of range; the teacher has {teacher.num_layers} "
                          f"layers, valid indices 0..{teacher.num_layers - 1}")
    _check_matching(config, teacher)


def _check_matching(config: Config, teacher: ResolvedTeacher) -> None:
    """Each distill stage's layer maps and terms fit the two shapes (mlm stages have no intermediate term)."""
    student_config = scratch_config(teacher.model_config, config.student) if config.student.init == "scratch" else None
    teacher_shape = Shape.of(teacher.model_config)
    student_shape = Shape.of(student_config) if student_config is not None else dataclasses.replace(
        teacher_shape, num_layers=len(student_layers(config.student, teacher.num_layers)))
    copied = copied_layers(config.student, teacher_shape.num_layers, student_shape.num_layers)
    for index, stage in enumerate(config.stages):
        if isinstance(stage, DistillStage) and stage.objective != "mlm":
            resolve_match(stage, student_shape, teacher_shape, copied, f"stages.{index}")


def _load_splits(config: Config, task: GlueTask) -> dict[str, GlueExamples]:
    """The task's train split when a stage trains on it, and its dev split(s) when a stage evaluates."""
    glue_dir = Path(config.task.glue_dir) if config.task.glue_dir else None
    trains = any(isinstance(s, FinetuneStage) or (isinstance(s, DistillStage) and s.objective == "task")
                 for s in config.stages)
    evaluates = any(isinstance(s, EvaluateStage) for s in config.stages)
    wanted = (["train"] if trains else []) + (list(task.dev_splits) if evaluates else [])
    caps = {"train": config.task.max_train_examples}
    return {split: load_glue(task, split, glue_dir=glue_dir, seed=config.run.seed,
                             max_examples=caps.get(split, config.task.max_eval_examples)) for split in wanted}


def _benchmark_examples(config: Config, task: GlueTask) -> GlueExamples | None:
    """The first examples of the task's first dev split, in file order, as many as the largest benchmark
    stage asks for (all if fewer); each stage takes its own first `num_examples` of them."""
    stages = [s for s in config.stages if isinstance(s, BenchmarkStage)]
    if not stages:
        return None
    num_examples = max(s.num_examples for s in stages)
    split = task.dev_splits[0]
    examples = load_glue(task, split, glue_dir=Path(config.task.glue_dir) if config.task.glue_dir else None)
    if len(examples) < num_examples:
        logger.warning("%s/%s has only %d examples; benchmarking all of them, not %d", task.name, split,
                       len(examples), num_examples)
    return examples.head(num_examples)


# --- the MLM stages: corpus, mask token, a trained head to distil from --------------------------------

def _prepare_corpus(config: Config, teacher: ResolvedTeacher | None) -> CorpusText | None:
    """Check the MLM stages and read their corpus; None when no stage uses one."""
    if teacher is None or not any(is_shared(stage) for stage in config.stages):
        return None
    _check_stage_order(config, teacher)
    if any(isinstance(s, PretrainStage) or (isinstance(s, DistillStage) and s.objective == "mlm") for s in config.stages):
        build_masker(teacher.tokenizer, config.masking)  # no mask token, no word boundaries: fails here
    return load_corpus_text(config.corpus, default_glue_dir=config.task.glue_dir)


def _check_stage_order(config: Config, teacher: ResolvedTeacher) -> None:
    head_trained, encoder_trained = False, config.teacher.source != "scratch"
    for index, stage in enumerate(config.stages):
        key = f"stages.{index}"
        if isinstance(stage, PretrainStage):
            if stage.train == "head" and not encoder_trained:
                raise ConfigError(f"{key}.train: 'head' trains only the MLM head of the scratch teacher, whose "
                                  "encoder is random; use train = 'all' (pretraining from scratch) first")
            head_trained, encoder_trained = True, True
        elif isinstance(stage, DistillStage) and stage.objective == "mlm" and not head_trained:
            _check_teacher_head(key, config, teacher)
            head_trained = True  # checked once: the teacher it distils from does not change


def _check_teacher_head(key: str, config: Config, teacher: ResolvedTeacher) -> None:
    fix = (f"add a [[stages]] block with kind = 'pretrain' (train = 'head' for a pretrained encoder, 'all' from "
           f"scratch) before {key}")
    if teacher.path_or_id is None:
        raise ConfigError(f"{key}.objective: 'mlm' distils from a scratch teacher that was never trained; {fix}")
    has_head = checkpoint_has_mlm_head(teacher.path_or_id) if config.teacher.source != "hub" else None
    if has_head is False:
        raise ConfigError(f"{key}.objective: 'mlm' needs a teacher with a trained MLM head, and {teacher.label} has "
                          f"none (its head would be random); {fix}")
    if has_head is None:
        logger.warning("%s: cannot tell whether %s ships an MLM head; the distill record says which head was used",
                       key, teacher.label)
