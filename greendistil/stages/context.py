"""What stages share within one run: the config, the task's data, the device, and the models so far.

Models pass between stages as `save_pretrained` folders (`artifacts`), never as live objects, so a later
stage (or a resumed run) loads exactly what an earlier stage wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from greendistil.config import Config
from greendistil.data.batching import EncodedSplit, encode
from greendistil.data.glue import GlueExamples, GlueTask
from greendistil.models import LoadedModel, build_student, load_classifier, load_teacher, load_tokenizer


@dataclass
class StageContext:
    config: Config
    task: GlueTask
    run_dir: Path
    device: torch.device
    splits: dict[str, GlueExamples]  # "train", "dev" (or "dev_matched", "dev_mismatched")
    artifacts: dict[str, Path] = field(default_factory=dict)  # role -> latest save_pretrained folder
    _encoded: dict[str, EncodedSplit] = field(default_factory=dict)

    def checkpoint_dir(self, stage_name: str) -> Path:
        return self.run_dir / "checkpoints" / stage_name

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
