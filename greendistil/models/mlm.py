"""Masked-LM models: loading with the head's provenance, logits at chosen positions, held-out evaluation.

The vocabulary projection of an MLM head is large next to a small encoder (30,522 x 384 for MiniLM-L6,
as many weights as its six layers), so logits are computed only at the positions a loss needs: the masked
tokens, or the real tokens for DistilBERT's soft-target term. Where the head came from travels with the
model in its config (`greendistil_mlm_head`), so every stage that uses it can say which head it was.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from greendistil.data.batching import Batch, EncodedSplit, collate, length_sorted_batches
from greendistil.data.masking import Masker, mask_tokens
from greendistil.distributed import SINGLE, Dist, all_gather
from greendistil.errors import ModelSourceError
from greendistil.measure.flops import count_flops
from greendistil.models.inputs import model_inputs
from greendistil.models.sources import LoadedModel, ResolvedTeacher, load_tokenizer
from greendistil.train.losses import masked_token_accuracy

logger = logging.getLogger(__name__)

HEAD_NOTE_KEY = "greendistil_mlm_head"  # config.json key: where the MLM head came from, how it was trained
HEAD_ATTRIBUTES = ("cls", "lm_head")  # BERT-likes; RoBERTa, XLM-R, CamemBERT
HEAD_KEY_MARKERS = ("predictions.transform.", "lm_head.")  # weight names of a trained head in a checkpoint
HELDOUT_MASK_SEED = 1234  # the same masked positions before and after training, and for every model


@dataclass(frozen=True, kw_only=True)
class MlmScores:
    """Held-out MLM figures: loss per masked token, accuracy of the argmax, perplexity = exp(loss)."""

    loss: float
    accuracy: float
    perplexity: float
    num_masked_tokens: int
    num_sequences: int
    flop_counts: tuple[tuple[int, int], ...]  # (FLOPs, padded tokens) of every batch, all counted

    def as_metrics(self, prefix: str, suffix: str = "") -> dict[str, float]:
        """`{prefix}.mlm_loss{suffix}`, `{prefix}.mlm_accuracy{suffix}`, `{prefix}.perplexity{suffix}`."""
        return {f"{prefix}.mlm_loss{suffix}": self.loss, f"{prefix}.mlm_accuracy{suffix}": self.accuracy,
                f"{prefix}.perplexity{suffix}": self.perplexity}


def mlm_head(model: PreTrainedModel) -> torch.nn.Module:
    """The MLM head of a `*ForMaskedLM` model (BERT's `cls`, RoBERTa's `lm_head`)."""
    for name in HEAD_ATTRIBUTES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return getattr(model, name)
    raise ModelSourceError(f"{type(model).__name__}: no MLM head found (looked for {', '.join(HEAD_ATTRIBUTES)}); "
                           "MLM stages support BERT-like masked-LM models")


def mlm_forward(model: PreTrainedModel, batch: Batch, input_ids: torch.Tensor, positions: torch.Tensor, *,
                encoder_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the encoder on `input_ids` (B, T) and the head at `positions` (B, T) bool only.

    Returns (logits (N, V) at the N chosen positions in row-major order, last hidden states (B, T, H)).
    `encoder_grad=False` runs the encoder without autograd (a frozen encoder: no activations kept).
    """
    inputs = {**model_inputs(batch, model), "input_ids": input_ids}
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        hidden = model.base_model(**inputs).last_hidden_state  # (B, T, H)
    return mlm_head(model)(hidden[positions]), hidden  # (N, V), (B, T, H)


def new_scratch_mlm(teacher: ResolvedTeacher) -> LoadedModel:
    """A randomly initialised BERT masked-LM of the scratch teacher's sizes, with its tokenizer."""
    cfg = teacher.section
    model = BertForMaskedLM(BertConfig(vocab_size=len(teacher.tokenizer), hidden_size=cfg.hidden_size,
                                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                                       intermediate_size=cfg.intermediate_size))
    model.config.update({HEAD_NOTE_KEY: "initialised randomly (a scratch teacher)"})
    return LoadedModel(model=model, tokenizer=teacher.tokenizer,
                       source=teacher.label.replace("scratch(", "scratch-mlm(", 1))


def load_teacher_mlm(teacher: ResolvedTeacher) -> LoadedModel:
    """The resolved teacher as a masked-LM (scratch: a new one)."""
    if teacher.path_or_id is None:
        return new_scratch_mlm(teacher)
    return load_mlm(teacher.path_or_id, teacher.label, tokenizer=teacher.tokenizer)


def load_mlm(path_or_id: str, label: str, *, tokenizer: PreTrainedTokenizerBase | None = None) -> LoadedModel:
    """A `*ForMaskedLM` model; its head note says whether the head was loaded or initialised at random."""
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(path_or_id, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelSourceError(f"cannot load {label} as a masked-LM model: {first}") from None
    head_missing = sorted(k for k in info.get("missing_keys", ()) if any(m in k for m in HEAD_KEY_MARKERS))
    if head_missing:
        note = (f"initialised randomly: {label} has no MLM head ({len(head_missing)} head tensors missing, "
                f"e.g. {head_missing[0]})")
    else:
        note = getattr(model.config, HEAD_NOTE_KEY, None) or f"loaded with the model from {label}"
    model.config.update({HEAD_NOTE_KEY: note})
    return LoadedModel(model=model, tokenizer=tokenizer or load_tokenizer(path_or_id), source=label)


def head_note(model: PreTrainedModel) -> str:
    return str(getattr(model.config, HEAD_NOTE_KEY, None) or "unknown")


def checkpoint_has_mlm_head(folder: str | Path) -> bool | None:
    """Whether a save_pretrained folder holds trained MLM-head weights; None when it cannot tell cheaply
    (a hub id, or weights not in safetensors)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = list(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            names = list(handle.keys())
    else:
        return None
    return any(marker in name for name in names for marker in HEAD_KEY_MARKERS)


def freeze_all_but_head(model: PreTrainedModel) -> int:
    """Train only the MLM head; the encoder and the word embeddings (tied to the head's decoder) stay
    frozen, so the encoder computes exactly what it did. Returns the number of trainable parameters."""
    model.requires_grad_(False)
    embedding_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    trainable = [p for p in mlm_head(model).parameters() if id(p) not in embedding_ids]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return sum(p.numel() for p in trainable)


def evaluate_mlm(model: PreTrainedModel, split: EncodedSplit, masker: Masker, *, batch_size: int,
                 pad_token_id: int, device: torch.device, dist: Dist = SINGLE) -> MlmScores:
    """MLM loss, accuracy and perplexity on `split`. Batch i is masked with seed HELDOUT_MASK_SEED + i, so
    every call on the same split masks the same positions the same way (before/after and teacher/student
    figures are comparable), also under DDP, where each rank runs every W-th batch and the sums are gathered."""
    batches = length_sorted_batches(split.lengths, batch_size)
    was_training = model.training
    model.eval()
    total_loss, correct, counted, flop_counts = 0.0, 0, 0, []
    with torch.inference_mode():
        for index in range(dist.rank, len(batches), dist.world_size):
            batch = collate([split[int(i)] for i in batches[index]], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            generator = torch.Generator(device=device).manual_seed(HELDOUT_MASK_SEED + index)
            masked_ids, labels = mask_tokens(masker, batch["input_ids"], batch["attention_mask"], generator)
            positions = labels != -100  # (B, T)
            (logits, _), flops = count_flops(lambda: mlm_forward(model, batch, masked_ids, positions))  # (N, V)
            flop_counts.append((flops, batch["input_ids"].numel()))
            targets = labels[positions]  # (N,)
            total_loss += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            batch_correct, batch_counted = masked_token_accuracy(logits, targets)
            correct, counted = correct + batch_correct, counted + batch_counted
    model.train(was_training)
    sums = all_gather(dist, (total_loss, correct, counted))
    total_loss, correct, counted = (sum(part[k] for part in sums) for k in range(3))
    loss = total_loss / max(counted, 1)
    return MlmScores(loss=loss, accuracy=correct / max(counted, 1), perplexity=math.exp(min(loss, 700.0)),
                     num_masked_tokens=counted, num_sequences=len(split), flop_counts=tuple(flop_counts))


class MlmForward(torch.nn.Module):
    """`mlm_forward` as a module's forward, so that DistributedDataParallel can wrap it (DDP joins the
    gradient averaging through the wrapped module's forward)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, input_ids: torch.Tensor, positions: torch.Tensor, *,
                encoder_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return mlm_forward(self.model, batch, input_ids, positions, encoder_grad=encoder_grad)

