"""The frozen teacher's outputs kept from distillation's first epoch, so later epochs need not recompute them.

The teacher is in eval mode under no_grad, so its output for an example does not depend on the epoch, the
batch it came in or the student: epochs 2..E of task distillation would recompute exactly what epoch 1
computed (with padding to another length, the real tokens' figures agree to float rounding, ~1e-7). The
cache keeps, per training example, what the loss reads: the logits (C,) for the soft-target term and the
last hidden states of its real tokens (L_i, H) for the cosine term, in fp32 on the training device. A batch
whose every example is cached is served from it; any other batch runs the teacher and fills the cache. A
resumed stage starts with an empty cache and refills it as its batches come (in memory only: nothing is
written to the run directory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BYTES_PER_FLOAT = 4  # fp32: the loss terms then equal the uncached run's to float rounding


@dataclass(frozen=True, kw_only=True)
class CacheShape:
    """What a cache of one training split holds, and its size."""

    num_examples: int
    num_real_tokens: int  # summed over the split's examples
    num_labels: int
    hidden_size: int
    logits: bool  # the soft-target term needs them
    hidden: bool  # the cosine term needs them

    @property
    def num_bytes(self) -> int:
        floats = (self.num_examples * self.num_labels if self.logits else 0) + (
            self.num_real_tokens * self.hidden_size if self.hidden else 0)
        return floats * BYTES_PER_FLOAT


class TeacherCache:
    """Per-example teacher logits and last hidden states, filled by `store` and read back by `lookup`."""

    def __init__(self, shape: CacheShape, lengths: list[int], device: torch.device) -> None:
        self.shape = shape
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + length)
        self._offsets = offsets  # example i's hidden rows: [offsets[i], offsets[i + 1])
        self._filled = torch.zeros(shape.num_examples, dtype=torch.bool)  # on the CPU: read without a device sync
        self._logits = (torch.empty(shape.num_examples, shape.num_labels, device=device) if shape.logits
                        else None)  # (N, C)
        self._hidden = (torch.empty(offsets[-1], shape.hidden_size, device=device) if shape.hidden
                        else None)  # (sum L_i, H)
        self.num_served = 0  # batches answered from the cache
        self.num_stored = 0  # batches the teacher ran for, whose outputs were stored

    def lookup(self, indices: torch.Tensor, attention_mask: torch.Tensor
               ) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """The batch's (logits (B, C), hidden (B, T, H) zero at padding) when every example of it is cached,
        else None. `indices` (B,) on the CPU; `attention_mask` (B, T) on the device (right padding)."""
        if not bool(self._filled[indices].all()):
            return None
        rows = indices.tolist()
        logits = self._logits[indices.to(self._logits.device)] if self._logits is not None else None
        hidden = None
        if self._hidden is not None:
            batch, length = attention_mask.shape
            hidden = self._hidden.new_zeros(batch, length, self.shape.hidden_size)  # (B, T, H)
            for row, index in enumerate(rows):
                start, end = self._offsets[index], self._offsets[index + 1]
                hidden[row, :end - start] = self._hidden[start:end]
        self.num_served += 1
        return logits, hidden

    def store(self, indices: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor | None) -> None:
        """Keep the teacher's outputs for the batch's examples: logits (B, C), hidden (B, T, H)."""
        rows = indices.tolist()
        if self._logits is not None:
            self._logits[indices.to(self._logits.device)] = logits.detach().float()
        if self._hidden is not None and hidden is not None:
            for row, index in enumerate(rows):
                start, end = self._offsets[index], self._offsets[index + 1]
                self._hidden[start:end] = hidden[row, :end - start].detach().float()
        self._filled[indices] = True
        self.num_stored += 1
