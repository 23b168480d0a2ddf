"""What stages share within one run: the config, the task's data, the device, and the models so far.

Models pass between stages as `save_pretrained` folders (`artifacts`), never as live objects, so a later
stage (or a resumed run) loads exactly what an earlier stage wrote. `artifacts["teacher"]` and
`artifacts["student"]` are each role's latest encoder (a classifier loads from it, with a new head where it
has none); `artifacts["teacher_mlm"]` and `artifacts["student_mlm"]` are their latest masked-LM models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from greendistil.checkpoint import StateFile, discard_state, signals_deferred
from greendistil.config import Config
from greendistil.data.batching import EncodedSplit, encode
from greendistil.data.corpus import CorpusText, EncodedCorpus, encode_corpus
from greendistil.data.glue import GlueExamples, GlueTask
from greendistil.distributed import SINGLE, Dist, agree, wrap
from greendistil.measure.window import Window
from greendistil.mlm import HEAD_NOTE_KEY, head_note, load_mlm, load_teacher_mlm
from greendistil.models import LoadedModel, build_student, load_classifier, load_teacher, load_tokenizer, save_model


@dataclass
class StageContext:
    config: Config
    task: GlueTask
    run_dir: Path
    device: torch.device
    splits: dict[str, GlueExamples]  # "train", "dev" (or "dev_matched", "dev_mismatched")
    artifacts: dict[str, Path] = field(default_factory=dict)  # role (or role_mlm) -> latest save_pretrained folder
    corpus: CorpusText | None = None  # the MLM stages' corpus, read and split before the run started
    resuming: bool = False  # `--resume`: a stage's saved training state is continued
    dist: Dist = SINGLE  # this process's place in a torchrun job
    _encoded: dict[str, EncodedSplit] = field(default_factory=dict)
    _encoded_corpus: EncodedCorpus | None = None

    def checkpoint_dir(self, stage_name: str) -> Path:
        return self.run_dir / "checkpoints" / stage_name

    def train_state(self, stage_name: str) -> StateFile:
        """Where the stage's training state is checkpointed while it runs (removed once it has finished)."""
        return StateFile(path=self.run_dir / "checkpoints" / f"{stage_name}.state.pt", resume=self.resuming)

    def publish(self, roles: str | tuple[str, ...], model, tokenizer, stage_name: str, window: Window) -> Path:
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
            window.counters.artifacts[role] = str(folder.relative_to(self.run_dir))
        if self.dist.is_main:
            discard_state(self.train_state(stage_name).path)
        return folder

    def parallel(self, model: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
        """`model` as the step function should call it: in DistributedDataParallel under torchrun."""
        return wrap(self.dist, model, find_unused_parameters=find_unused_parameters)

    @property
    def shard(self) -> dict[str, int]:
        """make_loader's rank and world_size for a training loader."""
        return {"rank": self.dist.rank, "world_size": self.dist.world_size}

    def load(self, role: str) -> LoadedModel:
        """The latest version of `role`'s model. A student not yet made is built from the current teacher."""
        if role in self.artifacts:
            path = str(self.artifacts[role])
            return LoadedModel(model=load_classifier(path, self.task), tokenizer=load_tokenizer(path),
                               source=f"checkpoint:{self.artifacts[role].relative_to(self.run_dir)}")
        teacher = self.load("teacher") if "teacher" in self.artifacts else load_teacher(self.config.teacher, self.task)
        if role == "teacher":
            return teacher
        student, layers = build_student(teacher.model, self.config.student)
        return LoadedModel(model=student, tokenizer=teacher.tokenizer,
                           source=f"student(layers {list(layers)} of {teacher.source}, init={self.config.student.init})")

    def encoded(self, split: str, tokenizer) -> EncodedSplit:
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
        teacher = load_teacher_mlm(self.config.teacher) if role == "teacher" else self.load_mlm("teacher")
        if role == "teacher":
            return teacher
        student, layers = build_student(teacher.model, self.config.student)
        copied = f"copied from the teacher, whose head was {head_note(teacher.model)}"
        student.config.update({HEAD_NOTE_KEY: copied if self.config.student.init == "teacher"
                               else "initialised randomly (student.init = 'random')"})
        return LoadedModel(model=student, tokenizer=teacher.tokenizer,
                           source=f"student(layers {list(layers)} of {teacher.source}, init={self.config.student.init})")

    def encoded_corpus(self, tokenizer) -> EncodedCorpus:
        """The corpus tokenized (once: teacher and student share the teacher's tokenizer)."""
        if self.corpus is None:
            raise ValueError("this run has no corpus: only MLM stages use one (a bug in the preflight)")
        if self._encoded_corpus is None:
            self._encoded_corpus = encode_corpus(self.corpus, tokenizer, self.config.corpus)
        return self._encoded_corpus
