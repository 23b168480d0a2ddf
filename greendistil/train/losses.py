"""Distillation losses as pure functions. Shapes: B batch, T tokens, H hidden, C classes, V vocabulary,
N rows (positions selected from B x T)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between the softened distributions, averaged over rows, times T^2.

    Hinton et al. (2015): scaling by T^2 keeps the soft-target gradients' magnitude independent of T.
    Logits: (N, C); for token-level use (DistilBERT's L_ce over the vocabulary), select the positions into
    N first: every real token, or only the masked ones.
    """
    if student_logits.shape[0] == 0:  # no position selected (a batch of short lines with nothing masked)
        return student_logits.sum() * 0.0  # 0 that still backpropagates: the mean of nothing would be NaN
    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (N, C)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)  # (N, C)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (N,)
    return kl.mean() * temperature**2


def soft_target_mse(student_predictions: torch.Tensor, teacher_predictions: torch.Tensor) -> torch.Tensor:
    """Soft targets for regression (STS-B): mean squared error to the teacher's predictions. (N,) or (N, 1)."""
    return F.mse_loss(student_predictions.float().view(-1), teacher_predictions.float().view(-1))


def task_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """The hard-label loss: cross-entropy for classification (N, C), MSE for regression (N, 1)."""
    if is_regression:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits, labels)


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (1 - cos) between student and teacher hidden states over real (unpadded) tokens.

    Hidden: (B, T, H); mask: (B, T). DistilBERT aligns the directions of the last hidden states this way.
    """
    mask = attention_mask.bool()  # (B, T)
    cos = F.cosine_similarity(student_hidden[mask], teacher_hidden[mask], dim=-1)  # (num_real_tokens,)
    return (1.0 - cos).mean()


def mlm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-LM loss: mean cross-entropy over the positions whose label is not -100.

    Logits: (N, V) rows (the positions a model was asked to predict); labels: (N,), -100 where nothing
    is to be predicted. A batch in which masking chose no token gives 0, still attached to the graph.
    """
    predicted = labels != -100  # (N,)
    if not bool(predicted.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[predicted].float(), labels[predicted])


def masked_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) argmax predictions over the positions whose label is not -100. (N, V), (N,)."""
    predicted = labels != -100  # (N,)
    correct = (logits[predicted].argmax(dim=-1) == labels[predicted]).sum()
    return int(correct), int(predicted.sum())


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum(weights[name] * term): the distillation objective from its named terms (e.g. alpha_ce * loss_ce)."""
    return sum(weights[name] * value for name, value in terms.items())  # type: ignore[return-value]
