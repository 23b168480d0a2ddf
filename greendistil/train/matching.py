"""Which student layer learns from which teacher layer, and the intermediate terms computed over them.

`resolve_match` turns a distill stage's keys and the two models' shapes into a `LayerMatch`, or a
`ConfigError` naming the key, the term and the valid layers. `MatchedStudent` wraps the student with the
projections TinyBERT learns when the widths differ, so that the optimizer, the checkpoint and DDP see them
with the student; `intermediate_terms` computes the active terms from both models' outputs and taps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from greendistil.config import DistillStage
from greendistil.errors import ConfigError
from greendistil.train.intermediate import hidden_mse, relation_kl, relation_log_probs

Pairs = tuple[tuple[int, int], ...]


@dataclass(frozen=True, kw_only=True)
class Shape:
    """What the matching needs of a model: layers, width, attention heads."""

    num_layers: int
    hidden_size: int
    num_heads: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        return cls(num_layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size),
                   num_heads=int(config.num_attention_heads))


@dataclass(frozen=True, kw_only=True)
class LayerMatch:
    """The resolved intermediate terms: weights by term, layer pairs (student, teacher), relation heads."""

    weights: dict[str, float]  # loss_hidden, loss_attn, loss_value, loss_qkv: only the active ones
    hidden_pairs: Pairs
    hidden_embeddings: bool
    relation_pairs: Pairs
    relation_heads: int
    student: Shape
    teacher: Shape

    @property
    def needs_projection(self) -> bool:
        return "loss_hidden" in self.weights and self.student.hidden_size != self.teacher.hidden_size

    def teacher_hidden_indices(self) -> list[int]:
        """The teacher `hidden_states` indices the hidden-state MSE reads, in its order (0: the embeddings)."""
        return ([0] if self.hidden_embeddings else []) + [t + 1 for _, t in self.hidden_pairs]

    def tapped_parts(self) -> tuple[str, ...]:
        """The attention projections the relation terms read."""
        parts = (["query", "key"] if "loss_attn" in self.weights else []) + (
            ["value"] if "loss_value" in self.weights else []) + (
            ["query", "key", "value"] if "loss_qkv" in self.weights else [])
        return tuple(dict.fromkeys(parts))

    def details(self) -> dict[str, Any]:
        """What the record says of the terms."""
        return {"terms": dict(self.weights), "hidden_layer_map": [list(p) for p in self.hidden_pairs],
                "hidden_embeddings": self.hidden_embeddings,
                "relation_layer_map": [list(p) for p in self.relation_pairs], "relation_heads": self.relation_heads,
                "projection": f"linear {self.student.hidden_size} -> {self.teacher.hidden_size}"
                if self.needs_projection else None}


def default_hidden_pairs(student: Shape, teacher: Shape, copied_from: tuple[int, ...]) -> Pairs:
    """Each copied layer to the teacher layer it was copied from; for a student copied from no layer,
    TinyBERT's uniform map: student layer i to teacher layer (i + 1) * L_t / L_s - 1 (last to last)."""
    if copied_from:
        return tuple((i, t) for i, t in enumerate(copied_from))
    return tuple((i, max(0, round((i + 1) * teacher.num_layers / student.num_layers) - 1))
                 for i in range(student.num_layers))


def resolve_match(cfg: DistillStage, student: Shape, teacher: Shape, copied_from: tuple[int, ...],
                  key: str) -> LayerMatch:
    """The stage's intermediate terms over these two models; `key` is the stage's dotted key (stages.N)."""
    weights = {f"loss_{name[len('alpha_'):]}": getattr(cfg, name)
               for name in ("alpha_hidden", "alpha_attn", "alpha_value", "alpha_qkv") if getattr(cfg, name) > 0}
    hidden = (tuple((int(s), int(t)) for s, t in cfg.hidden_layer_map) if cfg.hidden_layer_map is not None
              else default_hidden_pairs(student, teacher, copied_from))
    relation = (tuple((int(s), int(t)) for s, t in cfg.relation_layer_map) if cfg.relation_layer_map is not None
                else ((student.num_layers - 1, teacher.num_layers - 1),))
    for name, pairs in (("hidden_layer_map", hidden), ("relation_layer_map", relation)):
        _check_pairs(f"{key}.{name}", pairs, student, teacher)
    for term in ("alpha_attn", "alpha_value"):
        if getattr(cfg, term) > 0 and student.num_heads != teacher.num_heads:
            raise ConfigError(f"{key}.{term}: MiniLM's {'attention' if term == 'alpha_attn' else 'value-relation'} KL "
                              f"compares head by head, and the student has {student.num_heads} heads, the teacher "
                              f"{teacher.num_heads}; use alpha_qkv (MiniLMv2 relation heads, any head count) or a "
                              f"student with {teacher.num_heads} heads")
    heads = cfg.relation_heads or teacher.num_heads
    if cfg.alpha_qkv > 0 and (student.hidden_size % heads or teacher.hidden_size % heads):
        raise ConfigError(f"{key}.relation_heads: {heads} relation heads must divide both widths (student "
                          f"{student.hidden_size}, teacher {teacher.hidden_size}); valid: a common divisor, e.g. "
                          f"{_common_divisors(student.hidden_size, teacher.hidden_size)}")
    if cfg.alpha_cos > 0 and student.hidden_size != teacher.hidden_size:
        raise ConfigError(f"{key}.alpha_cos: {cfg.alpha_cos:g} compares the last hidden states, which needs equal "
                          f"widths (student {student.hidden_size}, teacher {teacher.hidden_size}); set alpha_cos = 0 "
                          "and use alpha_hidden (through a learned projection) or a relation term")
    return LayerMatch(weights=weights, hidden_pairs=hidden, hidden_embeddings=cfg.hidden_embeddings and cfg.alpha_hidden > 0,
                      relation_pairs=relation, relation_heads=heads, student=student, teacher=teacher)


def _check_pairs(key: str, pairs: Pairs, student: Shape, teacher: Shape) -> None:
    for s, t in pairs:
        if s >= student.num_layers:
            raise ConfigError(f"{key}: student layer {s} in {[list(p) for p in pairs]} is out of range; the student "
                              f"has {student.num_layers} layers, valid 0..{student.num_layers - 1}")
        if t >= teacher.num_layers:
            raise ConfigError(f"{key}: teacher layer {t} in {[list(p) for p in pairs]} is out of range; the teacher "
                              f"has {teacher.num_layers} layers, valid 0..{teacher.num_layers - 1}")


def _common_divisors(a: int, b: int) -> str:
    divisors = [str(d) for d in range(2, min(a, b) + 1) if a % d == 0 and b % d == 0][:8]
    return ", ".join(divisors) or "1"


class MatchedStudent(torch.nn.Module):
    """The student and TinyBERT's projections (student width -> teacher width: one for the layers, one for
    the embeddings), trained together. `forward` returns the student's output and its mapped hidden states
    projected, so the projections run inside the forward pass (as DDP needs)."""

    def __init__(self, student: torch.nn.Module, match: LayerMatch) -> None:
        super().__init__()
        self.student, self.match = student, match
        width = (match.student.hidden_size, match.teacher.hidden_size)
        self.projection = torch.nn.Linear(*width) if match.needs_projection else None
        self.embedding_projection = (torch.nn.Linear(*width) if match.needs_projection and match.hidden_embeddings
                                     else None)

    def forward(self, **inputs: Any) -> tuple[Any, list[torch.Tensor]]:
        out = self.student(**inputs, output_hidden_states=True)
        return out, self.project(out.hidden_states)

    def project(self, hidden_states: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The mapped layers' hidden states (B, T, H_s), projected to the teacher's width: the embeddings' first
        when they are matched. hidden_states[0] is the embeddings' output, [i + 1] layer i's."""
        projected = [] if not self.match.hidden_embeddings else [
            _apply(self.embedding_projection, hidden_states[0])]
        return projected + [_apply(self.projection, hidden_states[s + 1]) for s, _ in self.match.hidden_pairs]


def _apply(projection: torch.nn.Module | None, hidden: torch.Tensor) -> torch.Tensor:
    return hidden if projection is None else projection(hidden)


def intermediate_terms(match: LayerMatch, projected: list[torch.Tensor],
                       teacher_hidden: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
                       student_taps: dict[tuple[int, str], torch.Tensor],
                       teacher_taps: Mapping[tuple[int, str], torch.Tensor],
                       attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The active intermediate terms by name (loss_hidden, loss_attn, loss_value, loss_qkv).

    projected: `MatchedStudent.project`'s list; teacher_hidden: the teacher's hidden states by index
    (embeddings first; all of them, or from the teacher cache those the terms read); taps: (layer, part) ->
    (B, T, H) from `models.taps.AttentionTaps`; mask (B, T).
    """
    terms: dict[str, torch.Tensor] = {}
    if "loss_hidden" in match.weights:
        targets = [teacher_hidden[i] for i in match.teacher_hidden_indices()]
        losses = [hidden_mse(s, t, attention_mask) for s, t in zip(projected, targets)]
        terms["loss_hidden"] = torch.stack(losses).sum()  # TinyBERT sums the layers' losses
    relations: dict[str, list[torch.Tensor]] = {"loss_attn": [], "loss_value": [], "loss_qkv": []}
    for s, t in match.relation_pairs:
        def kl(left: str, right: str, heads_student: int, heads_teacher: int) -> torch.Tensor:
            return relation_kl(relation_log_probs(teacher_taps[(t, left)], teacher_taps[(t, right)], attention_mask,
                                                  heads_teacher),
                               relation_log_probs(student_taps[(s, left)], student_taps[(s, right)], attention_mask,
                                                  heads_student), attention_mask)
        if "loss_attn" in match.weights:
            relations["loss_attn"].append(kl("query", "key", match.student.num_heads, match.teacher.num_heads))
        if "loss_value" in match.weights:
            relations["loss_value"].append(kl("value", "value", match.student.num_heads, match.teacher.num_heads))
        if "loss_qkv" in match.weights:
            relations["loss_qkv"].append(sum(kl(p, p, match.relation_heads, match.relation_heads)
                                             for p in ("query", "key", "value")))  # type: ignore[arg-type]
    for name, values in relations.items():
        if name in match.weights:
            terms[name] = torch.stack(values).mean()  # over the relation layers (one by default)
    return terms
