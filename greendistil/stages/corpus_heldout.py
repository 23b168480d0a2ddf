"""The corpus objective on the held-out sentences: how well the student matches the teacher's inner layers on
corpus lines it never trains on, before and after its general distillation.

The MLM route scores held-out masked-token accuracy (`models.mlm.evaluate_mlm`); the corpus objective has no
vocabulary head, so its own terms are its held-out figures. Both models run in eval mode (no dropout) under
inference mode, on the held-out lines sorted by length; each term is averaged over the sequences (a batch's
term, a mean over its tokens or rows, weighted by the batch's sequences). Under torchrun each rank runs every
W-th batch and the sums are gathered. Every forward's FLOPs are counted, and the stage adds them to its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from greendistil.data.batching import Batch, EncodedSplit, collate, length_sorted_batches
from greendistil.distributed import SINGLE, Dist, all_gather
from greendistil.measure.flops import count_flops

# teacher_forward(batch) -> what the terms read of the teacher; student_forward(batch) -> the student's;
# terms(student_seen, teacher_seen, attention_mask) -> the loss terms by name.
TeacherForward = Callable[[Batch], Any]
StudentForward = Callable[[Batch], Any]
Terms = Callable[[Any, Any, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class HeldoutTerms:
    """The objective's terms on the held-out sequences, and what computing them cost."""

    terms: dict[str, float]  # term name (loss_cos, loss_hidden, ...) -> its mean over the sequences
    loss: float  # the weighted sum of the terms, as training weighs them
    num_sequences: int
    teacher_flop_counts: tuple[tuple[int, int], ...]  # (FLOPs, padded tokens) of every teacher forward
    student_flop_counts: tuple[tuple[int, int], ...]

    def as_metrics(self, role: str, suffix: str) -> dict[str, float]:
        """`{role}.heldout_loss{suffix}` and `{role}.heldout_<term>{suffix}`, e.g.
        general_student.heldout_loss_hidden_after."""
        return {f"{role}.heldout_loss{suffix}": self.loss,
                **{f"{role}.heldout_{name}{suffix}": value for name, value in self.terms.items()}}


def evaluate_terms(split: EncodedSplit, *, teacher_forward: TeacherForward, student_forward: StudentForward,
                   terms: Terms, weights: Mapping[str, float], modules: tuple[torch.nn.Module, ...],
                   batch_size: int, pad_token_id: int, device: torch.device, dist: Dist = SINGLE) -> HeldoutTerms:
    """The terms on `split` (`modules`: what to put in eval mode meanwhile; their modes are restored)."""
    batches = length_sorted_batches(split.lengths, batch_size)
    modes = [(module, module.training) for module in modules]
    for module, _ in modes:
        module.eval()
    sums: dict[str, float] = {}
    num_sequences = 0
    teacher_counts, student_counts = [], []
    try:
        with torch.inference_mode():
            for index in range(dist.rank, len(batches), dist.world_size):
                batch = collate([split[int(i)] for i in batches[index]], pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                padded_tokens = batch["input_ids"].numel()
                teacher_seen, teacher_flops = count_flops(lambda: teacher_forward(batch))
                student_seen, student_flops = count_flops(lambda: student_forward(batch))
                teacher_counts.append((teacher_flops, padded_tokens))
                student_counts.append((student_flops, padded_tokens))
                rows = len(batches[index])
                for name, value in terms(student_seen, teacher_seen, batch["attention_mask"]).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * rows
                num_sequences += rows
    finally:
        for module, training in modes:
            module.train(training)
    gathered = all_gather(dist, (sums, num_sequences))
    total = sum(count for _, count in gathered)
    means = {name: sum(part.get(name, 0.0) for part, _ in gathered) / max(total, 1)
             for name in sorted({name for part, _ in gathered for name in part})}
    loss = sum(weights[name] * value for name, value in means.items())  # as train.losses.weighted_sum
    return HeldoutTerms(terms=means, loss=loss, num_sequences=total, teacher_flop_counts=tuple(teacher_counts),
                        student_flop_counts=tuple(student_counts))
