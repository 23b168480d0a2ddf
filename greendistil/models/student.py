"""The DistilBERT-style student: the teacher with fewer layers.

Same embeddings, pooler and head, and a chosen subset of the teacher's transformer layers copied in
(DistilBERT took every other layer of BERT-base).
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

from greendistil.config import StudentSection
from greendistil.errors import ConfigError, ModelSourceError

# Encoders whose layers live at `<base>.encoder.layer.N`, so a student can take a subset of them.
STUDENT_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie"})


def build_student(teacher: PreTrainedModel, cfg: StudentSection) -> tuple[PreTrainedModel, tuple[int, ...]]:
    """A student with `cfg.layers` of the teacher's layers (default every other one), weights copied.

    Works for BERT-like encoders whose base model has `encoder.layer` (BERT, RoBERTa, ELECTRA, ...).
    Returns the student and the teacher layer indices it was built from.
    """
    num_teacher_layers = teacher.config.num_hidden_layers
    layers = cfg.layers if cfg.layers is not None else tuple(range(0, num_teacher_layers, 2))
    if max(layers) >= num_teacher_layers:
        raise ConfigError(f"student.layers: {list(layers)} is out of range; the teacher has {num_teacher_layers} "
                          f"layers, valid indices 0..{num_teacher_layers - 1}")
    student_config = copy.deepcopy(teacher.config)
    student_config.num_hidden_layers = len(layers)
    student = type(teacher)(student_config)
    if cfg.init == "teacher":
        student.load_state_dict(_student_state_dict(teacher, layers))
    return student, tuple(layers)


def _student_state_dict(teacher: PreTrainedModel, layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Teacher weights renamed for the student: student layer i <- teacher layer layers[i]."""
    teacher_state = teacher.state_dict()
    if not any(".encoder.layer." in key for key in teacher_state):
        raise ModelSourceError(f"cannot build a student from a {type(teacher).__name__}: the layer copy needs a "
                               "BERT-like encoder (encoder.layer.N: BERT, RoBERTa, ELECTRA, MiniLM)")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in teacher_state.items():
        if ".encoder.layer." not in key:
            state[key] = tensor.clone()
    for student_index, teacher_index in enumerate(layers):
        prefix = f".encoder.layer.{teacher_index}."
        for key, tensor in teacher_state.items():
            if prefix in key:
                state[key.replace(prefix, f".encoder.layer.{student_index}.")] = tensor.clone()
    return state
