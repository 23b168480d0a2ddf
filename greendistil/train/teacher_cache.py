"""The frozen teacher's outputs kept from distillation's first epoch, so later epochs need not recompute them.

The teacher is in eval mode under no_grad, so its output for an example does not depend on the epoch, the
batch it came in or the student: epochs 2..E of task distillation would recompute exactly what epoch 1
computed (with padding to another length, the real tokens' figures agree to float rounding, ~1e-7). The
cache keeps, per training example, what the loss reads: the logits (C,) for the soft-target term, and per
real token the (H,) vectors the other terms read, each a named part: "hidden:<i>" is the teacher's
`hidden_states[i]` (0 the embeddings, the last the cosine's target; the hidden-state MSE reads those its
layer map names), "<query|key|value>:<layer>" a tapped projection that a relation term reads. All in fp32
on the training device. A batch whose every example is cached is served from it; any other batch runs the
teacher and fills the cache. A resumed stage starts with an empty cache and refills it as its batches come
(in memory only: nothing is written to the run directory).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

BYTES_PER_FLOAT = 4  # fp32: the loss terms then equal the uncached run's to float rounding


def hidden_part(index: int) -> str:
    """The part name of the teacher's `hidden_states[index]` (0: the embeddings' output)."""
    return f"hidden:{index}"


def tap_part(layer: int, projection: str) -> str:
    """The part name of a tapped attention projection ("query", "key", "value") of `layer`."""
    return f"{projection}:{layer}"


def parse_part(name: str) -> tuple[str, int]:
    """("hidden", hidden_states index) or (projection, layer): a part name read back."""
    kind, index = name.split(":")
    return kind, int(index)


@dataclass(frozen=True, kw_only=True)
class CacheShape:
    """What a cache of one training split holds, and its size."""

    num_examples: int
    num_real_tokens: int  # summed over the split's examples
    num_labels: int
    hidden_size: int
    logits: bool  # the soft-target term needs them
    token_parts: tuple[str, ...] = ()  # per real token, (H,) each: `hidden_part` / `tap_part` names

    @property
    def num_bytes(self) -> int:
        floats = (self.num_examples * self.num_labels if self.logits else 0) + (
            self.num_real_tokens * self.hidden_size * len(self.token_parts))
        return floats * BYTES_PER_FLOAT


class TeacherCache:
    """Per-example teacher logits and per-token parts, filled by `store` and read back by `lookup`."""

    def __init__(self, shape: CacheShape, lengths: list[int], device: torch.device) -> None:
        self.shape = shape
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + length)
        self._offsets = offsets  # example i's token rows: [offsets[i], offsets[i + 1])
        self._filled = torch.zeros(shape.num_examples, dtype=torch.bool)  # on the CPU: read without a device sync
        self._logits = (torch.empty(shape.num_examples, shape.num_labels, device=device) if shape.logits
                        else None)  # (N, C)
        self._tokens = (torch.empty(offsets[-1], len(shape.token_parts), shape.hidden_size, device=device)
                        if shape.token_parts else None)  # (sum L_i, P, H)
        self.num_served = 0  # batches answered from the cache
        self.num_stored = 0  # batches the teacher ran for, whose outputs were stored

    def lookup(self, indices: torch.Tensor, attention_mask: torch.Tensor
               ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]] | None:
        """The batch's logits (B, C) and parts by name, (B, T, H) each and zero at padding, when every example
        of it is cached, else None. `indices` (B,) on the CPU; `attention_mask` (B, T) on the device (right
        padding)."""
        if not bool(self._filled[indices].all()):
            return None
        logits = self._logits[indices.to(self._logits.device)] if self._logits is not None else None
        parts: dict[str, torch.Tensor] = {}
        if self._tokens is not None:
            batch, length = attention_mask.shape
            tokens = self._tokens.new_zeros(batch, length, *self._tokens.shape[1:])  # (B, T, P, H)
            for row, index in enumerate(indices.tolist()):
                start, end = self._offsets[index], self._offsets[index + 1]
                tokens[row, :end - start] = self._tokens[start:end]
            parts = {name: tokens[:, :, i] for i, name in enumerate(self.shape.token_parts)}
        self.num_served += 1
        return logits, parts

    def store(self, indices: torch.Tensor, logits: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> None:
        """Keep the teacher's outputs for the batch's examples: logits (B, C) and every part of the shape,
        (B, T, H) each."""
        if self._logits is not None:
            self._logits[indices.to(self._logits.device)] = logits.detach().float()
        if self._tokens is not None:
            tokens = torch.stack([parts[name].detach().float() for name in self.shape.token_parts], dim=2)  # (B, T, P, H)
            for row, index in enumerate(indices.tolist()):
                start, end = self._offsets[index], self._offsets[index + 1]
                self._tokens[start:end] = tokens[row, :end - start]
        self._filled[indices] = True
        self.num_stored += 1
