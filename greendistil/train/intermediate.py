"""Intermediate-layer distillation losses as pure functions: TinyBERT's hidden-state MSE, MiniLM's
self-attention and value-relation KLs, MiniLMv2's query/key/value self-relation KLs.

Shapes: B batch, T tokens, H hidden (student H_s, teacher H_t), A attention heads, R relation heads. Every
term averages over the real (unpadded) positions only; padded keys get no probability mass.

- TinyBERT (Jiao et al. 2020): MSE(h_s W, h_t) between mapped layers, W a learned (H_s -> H_t) projection
  when the widths differ (the caller applies it; see `train.matching`).
- MiniLM (Wang et al. 2020): KL(teacher || student) between the last layer's self-attention distributions,
  softmax(q k^T / sqrt(d)) per head, and between its value relations, softmax(v v^T / sqrt(d)) per head;
  averaged over heads and query positions. Both need the same number of heads in student and teacher.
- MiniLMv2 (Wang et al. 2021): the queries (keys, values) of all heads concatenated and split again into
  R relation heads of H/R dims; relations softmax(x x^T / sqrt(H/R)) compared by KL, so the student may
  have any number of attention heads and any width divisible by R.

The attention distributions are computed here from the layer's queries and keys rather than read from
the model: the fused (SDPA) kernels return none, and the eager path returns them after dropout, where a
dropped entry would make KL(teacher || student) infinite. Recomputing costs the QK^T product once more
per read layer, which the FLOP counter counts with the student's step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASKED = -1e9  # added to padded keys' scores: exp() underflows to exactly 0 in fp32 and bf16


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens' hidden units. (B, T, H) each (the student's already projected
    to the teacher's width), mask (B, T). A batch without a real token gives a zero that backpropagates."""
    mask = attention_mask.bool()  # (B, T)
    if not bool(mask.any()):
        return student_hidden.sum() * 0.0
    with torch.autocast(student_hidden.device.type, enabled=False):
        return F.mse_loss(student_hidden[mask].float(), teacher_hidden[mask].float())  # (N, H) each


def relation_log_probs(left: torch.Tensor, right: torch.Tensor, attention_mask: torch.Tensor,
                       num_heads: int) -> torch.Tensor:
    """log softmax(left_r right_r^T / sqrt(d_r)) over the real keys, per head r.

    left, right: (B, T, H), split into `num_heads` heads of d_r = H / num_heads; mask (B, T). Returns
    (B, heads, T, T) log-probabilities, query positions along dim 2, keys along dim 3. With left = queries,
    right = keys and the model's own heads this is the self-attention distribution; with left = right it is
    a self-relation (MiniLM's value relation, MiniLMv2's Q-Q, K-K, V-V relations).
    """
    batch, length, width = left.shape
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    head_dim = width // num_heads
    with torch.autocast(left.device.type, enabled=False):  # fp32 under a bf16 run: a KL of near-equal
        # distributions is a difference of log-probabilities that bf16 would round to about 0.01
        left_heads = left.float().view(batch, length, num_heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
        right_heads = right.float().view(batch, length, num_heads, head_dim).transpose(1, 2)  # (B, heads, T, d)
        scores = left_heads @ right_heads.transpose(-1, -2) / head_dim**0.5  # (B, heads, T, T)
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        return F.log_softmax(scores.masked_fill(~keys, _MASKED), dim=-1)


def relation_kl(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between relation distributions, summed over keys and averaged over heads and
    real query positions (MiniLM). (B, heads, T, T) log-probabilities each (the same number of heads), mask
    (B, T). Padded keys carry no mass in either, so they add nothing."""
    queries = attention_mask.bool()  # (B, T)
    if not bool(queries.any()):
        return student_log_probs.sum() * 0.0
    with torch.autocast(student_log_probs.device.type, enabled=False):
        teacher_log_probs, student_log_probs = teacher_log_probs.float(), student_log_probs.float()
        teacher_probs = teacher_log_probs.exp()  # (B, heads, T, T)
        keys = queries[:, None, None, :]  # (B, 1, 1, T)
        kl = (teacher_probs * (teacher_log_probs - student_log_probs)).masked_fill(~keys, 0.0).sum(dim=-1)  # (B, heads, T)
        return kl.transpose(1, 2)[queries].mean()  # (N, heads) -> mean over real queries and heads
