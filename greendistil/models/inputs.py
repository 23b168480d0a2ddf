"""Which of a batch's tensors a model's forward takes (DistilBERT-type models take no token_type_ids)."""

from __future__ import annotations

import functools
import inspect

import torch

from greendistil.data.batching import Batch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Batch, model: torch.nn.Module) -> Batch:
    """The batch's model inputs that `model` accepts; under DDP, the wrapped model's forward decides."""
    accepted = _accepted_inputs(type(getattr(model, "module", model)))
    return {k: batch[k] for k in MODEL_INPUTS if k in batch and k in accepted}


@functools.cache
def _accepted_inputs(model_class: type) -> frozenset[str]:
    """Asked once per model class, not on every step."""
    return frozenset(inspect.signature(model_class.forward).parameters)
