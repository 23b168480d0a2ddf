"""Preflight of the MLM stages (`pretrain`, `distill` with `objective = "mlm"`), before anything is written.

The corpus is read and split, the tokenizer must have a mask token (and word boundaries, for whole-word
masking), and MLM distillation needs a teacher whose MLM head was trained: an earlier `pretrain` stage, or a
checkpoint that ships a head. A scratch teacher's or the packaged MiniLM's head is random, and distilling
from it would teach the student nothing.
"""

from __future__ import annotations

import logging

from greendistil.config import Config, DistillStage, PretrainStage, StageConfig
from greendistil.data.corpus import CorpusText, load_corpus_text
from greendistil.data.masking import build_masker
from greendistil.errors import ConfigError
from greendistil.mlm import checkpoint_has_mlm_head
from greendistil.models import load_tokenizer, resolve_source, tokenizer_source

logger = logging.getLogger(__name__)


def is_mlm_stage(stage: StageConfig) -> bool:
    """True for the stages that train on the corpus."""
    return isinstance(stage, PretrainStage) or (isinstance(stage, DistillStage) and stage.objective == "mlm")


def prepare_corpus(config: Config) -> CorpusText | None:
    """Check the MLM stages and read their corpus; None when no stage uses one. Raises ConfigError,
    DataError or ModelSourceError on bad input."""
    if not any(is_mlm_stage(stage) for stage in config.stages):
        return None
    _check_stage_order(config)
    cfg = config.teacher
    path = tokenizer_source(cfg.tokenizer)[0] if cfg.source == "scratch" else resolve_source(cfg.source, cfg.name)[0]
    build_masker(load_tokenizer(path), config.masking)  # no mask token, no word boundaries: fails here
    return load_corpus_text(config.corpus, default_glue_dir=config.task.glue_dir)


def _check_stage_order(config: Config) -> None:
    teacher = config.teacher
    head_trained, encoder_trained = False, teacher.source != "scratch"
    for index, stage in enumerate(config.stages):
        key = f"stages.{index}"
        if isinstance(stage, PretrainStage):
            if stage.train == "head" and not encoder_trained:
                raise ConfigError(f"{key}.train: 'head' trains only the MLM head of the scratch teacher, whose "
                                  "encoder is random; use train = 'all' (pretraining from scratch) first")
            head_trained, encoder_trained = True, True
        elif isinstance(stage, DistillStage) and stage.objective == "mlm" and not head_trained:
            _check_teacher_head(key, config)
            head_trained = True  # checked once: the teacher it distils from does not change


def _check_teacher_head(key: str, config: Config) -> None:
    teacher = config.teacher
    fix = (f"add a [[stages]] block with kind = 'pretrain' (train = 'head' for a pretrained encoder, 'all' from "
           f"scratch) before {key}")
    if teacher.source == "scratch":
        raise ConfigError(f"{key}.objective: 'mlm' distils from a scratch teacher that was never trained; {fix}")
    path, label = resolve_source(teacher.source, teacher.name)
    has_head = checkpoint_has_mlm_head(path) if teacher.source != "hub" else None
    if has_head is False:
        raise ConfigError(f"{key}.objective: 'mlm' needs a teacher with a trained MLM head, and {label} has none "
                          f"(its head would be random); {fix}")
    if has_head is None:
        logger.warning("%s: cannot tell whether %s ships an MLM head; the distill record says which head was used",
                       key, label)
