"""What stages share within one run, and the contract every stage follows.

The contract: a stage is a `Runner`, `run(ctx, cfg, open_window)`. It measures its work in the windows its
config names (`cfg.windows()`), each opened through `open_window`, the pipeline's one window opener; it
puts what it did into the window's counters as it goes (examples, tokens, FLOPs, metrics, details), never
into a record: the window writes exactly one record when it closes, however it closes, so a stage that
fails or is interrupted keeps its partial counts. Most stages measure one window (`single_window`).

Models pass between stages as `save_pretrained` folders (`artifacts`), never as live objects, so a later
stage (or a resumed run) loads exactly what an earlier stage wrote. `artifacts["teacher"]` and
`artifacts["student"]` are each role's latest encoder (a classifier loads from it, with a new head where it
has none); `artifacts["teacher_mlm"]` and `artifacts["student_mlm"]` are their latest masked-LM models. In a
suite, a task's stages see that task's artifacts over the shared (corpus) stages' ones, and write their own.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, MutableMapping, Protocol, TypeVar

import torch

from greendistil.config import Config, StageConfig, WindowSpec
from greendistil.data.batching import EncodedSplit, encode
from greendistil.data.corpus import CorpusText, EncodedCorpus, encode_corpus
from greendistil.data.glue import GlueExamples
from greendistil.data.tasks import GlueTask
from greendistil.distributed import SINGLE, Dist, agree, wrap
from greendistil.measure.counters import StageCounters
from greendistil.measure.window import Clock, Window
from greendistil.runtime.precision import FP32_CPU, Precision
from greendistil.models.mlm import HEAD_NOTE_KEY, head_note, load_mlm, load_teacher_mlm
from greendistil.models.sources import (LoadedModel, ResolvedTeacher, load_classifier, load_teacher, load_tokenizer,
                                        save_model)
from greendistil.models.student import build_student, describe_shape
from greendistil.runlog.tensorboard import ScalarLog
from greendistil.runtime.signals import signals_deferred
from greendistil.train.checkpoint import StateFile, discard_state

S = TypeVar("S", bound=StageConfig)


class OpenWindow(Protocol):
    """The pipeline's window opener: `with open_window(spec) as window:` measures one window of a stage."""

    def __call__(self, spec: WindowSpec) -> AbstractContextManager[Window]: ...

    def is_done(self, spec: WindowSpec) -> bool:
        """Measured ok in an earlier segment of this run (`--resume`): not to be measured again."""
        ...


Runner = Callable[["StageContext", Any, OpenWindow], None]


def single_window(body: Callable[[StageContext, S, Window], None]) -> Callable[[StageContext, S, OpenWindow], None]:
    """A `Runner` for a stage measured in one window: opens it, then runs `body(ctx, cfg, window)` in it."""
    def run(ctx: StageContext, cfg: S, open_window: OpenWindow) -> None:
        (spec,) = cfg.windows()
        with open_window(spec) as window:
            body(ctx, cfg, window)
    run.__name__ = run.__qualname__ = body.__name__
    run.__doc__ = body.__doc__
    return run


@dataclass
class StageContext:
    config: Config
    task: GlueTask
    run_dir: Path
    device: torch.device
    splits: dict[str, GlueExamples]  # "train", "dev" (or "dev_matched", "dev_mismatched"), as far as needed
    teacher: ResolvedTeacher | None = None  # resolved by the preflight; None when `sources` name every model
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (path or id, label): `bench`
    benchmark_examples: GlueExamples | None = None
    # role (or role_mlm) -> latest save_pretrained folder; in a suite a ChainMap of the task's over the shared ones
    artifacts: MutableMapping[str, Path] = field(default_factory=dict)
    task_folder: str | None = None  # a suite's per-task stages keep checkpoints under checkpoints/<task>/
    corpus: CorpusText | None = None  # the MLM stages' corpus, read and split before the run started
    resuming: bool = False  # `--resume`: a stage's saved training state is continued
    dist: Dist = SINGLE  # this process's place in a torchrun job
    job_world_size: int = 1  # processes in the job, also where a stage runs on rank 0 alone (dist = SINGLE)
    show_progress: bool | None = None  # progress bars: None = only on a terminal
    clock: Clock = time.perf_counter  # the benchmark's timer
    scalar_log: ScalarLog | None = None  # live scalars for TensorBoard (`run.tensorboard`), rank 0 only
    max_train_steps: int | None = None  # a plan's calibration: each training stage stops after this many steps
    precision: Precision = FP32_CPU  # what the forwards compute in (run.precision, resolved for the device)
    count_flops: bool = True  # False only on benchmarks/overhead.py's measurement-off side: no step is FLOP-counted
    _encoded: dict[str, EncodedSplit] = field(default_factory=dict)
    _encoded_corpus: EncodedCorpus | None = None

    def checkpoint_dir(self, stage_name: str) -> Path:
        return self._checkpoints() / stage_name

    def train_state(self, stage_name: str) -> StateFile:
        """Where the stage's training state is checkpointed while it runs (removed once it has finished)."""
        return StateFile(path=self._checkpoints() / f"{stage_name}.state.pt", resume=self.resuming)

    def _checkpoints(self) -> Path:
        folder = self.run_dir / "checkpoints"
        return folder / self.task_folder if self.task_folder else folder

    def publish(self, roles: str | tuple[str, ...], model: Any, tokenizer: Any, stage_name: str,
                counters: StageCounters) -> Path:
        """Save the stage's finished model as the latest of each of `roles`, for later stages and for
        `--resume`; the training state is discarded only after the model is safely written."""
        folder = self.checkpoint_dir(stage_name)

        def write() -> None:
            with signals_deferred():  # an interrupted write would surface as the writer's error, not as a signal
                save_model(model, tokenizer, folder)
        # DDP: rank 0 writes; the other ranks go on once the folder is complete (or stop if writing failed).
        agree(self.dist, write, what=f"saving the model of stage {stage_name!r}")
        for role in (roles,) if isinstance(roles, str) else roles:
            self.artifacts[role] = folder
            counters.artifacts[role] = str(folder.relative_to(self.run_dir))
        if self.dist.is_main:
            discard_state(self.train_state(stage_name).path)
        return folder

    def parallel(self, model: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
        """`model` as the step function should call it: in DistributedDataParallel under torchrun."""
        return wrap(self.dist, model, find_unused_parameters=find_unused_parameters)

    @property
    def shard(self) -> dict[str, Any]:
        """make_loader's rank, world_size and pinning for a training loader."""
        return {"rank": self.dist.rank, "world_size": self.dist.world_size, "pin_memory": self.device.type == "cuda"}

    def load(self, role: str) -> LoadedModel:
        """The latest version of `role`'s model. A student not yet made is built from the current teacher."""
        if role in self.sources:
            return self._classifier(*self.sources[role])
        if role in self.artifacts:
            return self._classifier(str(self.artifacts[role]),
                                    f"checkpoint:{self.artifacts[role].relative_to(self.run_dir)}")
        teacher = self.load("teacher") if "teacher" in self.artifacts else load_teacher(self._teacher(), self.task)
        if role == "teacher":
            return teacher
        student, layers = build_student(teacher.model, self.config.student)
        label = _student_label(student, layers, teacher, self.config.student.init)
        return LoadedModel(model=student, tokenizer=teacher.tokenizer, source=label)

    def encoded(self, split: str, tokenizer: Any) -> EncodedSplit:
        """Tokenized `split`; cached, since teacher and student share the teacher's tokenizer."""
        if split not in self._encoded:
            self._encoded[split] = encode(self.splits[split], tokenizer, self.config.task.max_seq_length)
        return self._encoded[split]

    def load_mlm(self, role: str) -> LoadedModel:
        """The latest masked-LM version of `role`: what an MLM stage wrote, else the configured teacher as a
        masked-LM, else (the student) a student built from that teacher, head included."""
        key = f"{role}_mlm"
        if key in self.artifacts:
            return load_mlm(str(self.artifacts[key]), f"checkpoint:{self.artifacts[key].relative_to(self.run_dir)}")
        teacher = load_teacher_mlm(self._teacher()) if role == "teacher" else self.load_mlm("teacher")
        if role == "teacher":
            return teacher
        student, layers = build_student(teacher.model, self.config.student)
        copied = f"copied from the teacher, whose head was {head_note(teacher.model)}"
        init = self.config.student.init
        student.config.update({HEAD_NOTE_KEY: copied if init == "teacher"
                               else f"initialised randomly (student.init = {init!r})"})
        label = _student_label(student, layers, teacher, self.config.student.init)
        return LoadedModel(model=student, tokenizer=teacher.tokenizer, source=label)

    def encoded_corpus(self, tokenizer: Any) -> EncodedCorpus:
        """The corpus tokenized (once: teacher and student share the teacher's tokenizer)."""
        if self.corpus is None:
            raise ValueError("this run has no corpus: only MLM stages use one (a bug in the preflight)")
        if self._encoded_corpus is None:
            self._encoded_corpus = encode_corpus(self.corpus, tokenizer, self.config.corpus)
        return self._encoded_corpus

    def _classifier(self, path_or_id: str, label: str) -> LoadedModel:
        return LoadedModel(model=load_classifier(path_or_id, self.task), tokenizer=load_tokenizer(path_or_id),
                           source=label)

    def _teacher(self) -> ResolvedTeacher:
        if self.teacher is None:
            raise ValueError("this run resolved no teacher (a bug: the preflight skips it only when sources "
                             "name every model)")
        return self.teacher


def _student_label(student: Any, layers: tuple[int, ...], teacher: LoadedModel, init: str) -> str:
    """Where a student built in this run came from, for the record: its teacher layers, or its own shape."""
    if not layers:
        return f"student(scratch: {describe_shape(student.config)}; vocabulary of {teacher.source})"
    return f"student(layers {list(layers)} of {teacher.source}, init={init})"
