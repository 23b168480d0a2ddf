"""The student: a DistilBERT-style copy of the teacher with fewer layers, or a shape of its own.

`init = "teacher"`: the same embeddings, pooler and head, and a chosen subset of the teacher's transformer
layers copied in (DistilBERT took every other layer of BERT-base); "random": that shape, initialised at
random; "scratch": its own sizes (narrower, fewer heads, ...), initialised at random, sharing the teacher's
vocabulary and tokenizer.
"""

from __future__ import annotations

import copy

import torch
from transformers import PretrainedConfig, PreTrainedModel

from greendistil.config import StudentSection
from greendistil.errors import ConfigError, ModelSourceError

# Encoders whose layers live at `<base>.encoder.layer.N`, so a student can take a subset of them.
STUDENT_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie"})


def build_student(teacher: PreTrainedModel, cfg: StudentSection) -> tuple[PreTrainedModel, tuple[int, ...]]:
    """A student with `cfg.layers` of the teacher's layers (default every other one), weights copied; or,
    with `init = "scratch"`, a randomly initialised model of the configured sizes.

    Works for BERT-like encoders whose base model has `encoder.layer` (BERT, RoBERTa, ELECTRA, ...).
    Returns the student and the teacher layer indices it was built from (none for a scratch student).
    """
    num_teacher_layers = teacher.config.num_hidden_layers
    if cfg.init == "scratch":
        return type(teacher)(scratch_config(teacher.config, cfg)), ()
    layers = student_layers(cfg, num_teacher_layers)
    if max(layers) >= num_teacher_layers:
        raise ConfigError(f"student.layers: {list(layers)} is out of range; the teacher has {num_teacher_layers} "
                          f"layers, valid indices 0..{num_teacher_layers - 1}")
    student_config = copy.deepcopy(teacher.config)
    student_config.num_hidden_layers = len(layers)
    student = type(teacher)(student_config)
    if cfg.init == "teacher":
        student.load_state_dict(_student_state_dict(teacher, layers))
    return student, tuple(layers)


def scratch_config(teacher_config: PretrainedConfig, cfg: StudentSection) -> PretrainedConfig:
    """The teacher's config with the scratch student's sizes (each unset one the teacher's; layers: half)."""
    config = copy.deepcopy(teacher_config)
    config.hidden_size = cfg.hidden_size or teacher_config.hidden_size
    config.num_hidden_layers = cfg.num_layers or max(1, teacher_config.num_hidden_layers // 2)
    config.num_attention_heads = cfg.num_heads or teacher_config.num_attention_heads
    config.intermediate_size = cfg.intermediate_size or teacher_config.intermediate_size
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(f"student.hidden_size: {config.hidden_size} is not a multiple of the "
                          f"{config.num_attention_heads} attention heads; set student.num_heads to a divisor of it")
    return config


def describe_shape(config: PretrainedConfig) -> str:
    """A model's shape in words, e.g. "3 layers, hidden 384, 12 heads, FFN 1536"."""
    return (f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
            f"FFN {config.intermediate_size}")


def copied_layers(section: StudentSection, num_teacher_layers: int, num_student_layers: int) -> tuple[int, ...]:
    """The teacher layers the student's layers were copied from (or shaped after), as the config says; none
    for a scratch student or one whose depth does not match (a student loaded from elsewhere)."""
    if section.init != "teacher":  # a random or scratch student copied nothing: TinyBERT's uniform map
        return ()
    layers = student_layers(section, num_teacher_layers)
    return layers if len(layers) == num_student_layers else ()


def student_layers(section: StudentSection, num_teacher_layers: int) -> tuple[int, ...]:
    """The teacher layers a copied (or same-shape random) student takes: `student.layers`, default every other."""
    return tuple(section.layers) if section.layers is not None else tuple(range(0, num_teacher_layers, 2))


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
