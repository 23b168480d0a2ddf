"""The intermediate terms inside a distill stage (objectives "task" and "corpus"): the layer match, the
student wrapped with its projections, and the attention taps on both models, set up once per stage.

The taps sit only on the layers the relation terms read and come off when the stage ends (`close`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from greendistil.config import DistillStage, StudentSection
from greendistil.measure.flops import count_nonembedding_params
from greendistil.models.student import copied_layers
from greendistil.models.taps import AttentionTaps
from greendistil.train.teacher_cache import hidden_part, tap_part
from greendistil.train.matching import LayerMatch, MatchedStudent, Shape, intermediate_terms, resolve_match


@dataclass
class Matching:
    """A stage's intermediate terms: what is matched, the wrapped student, and the taps on both models."""

    match: LayerMatch
    student: MatchedStudent
    student_taps: AttentionTaps
    teacher_taps: AttentionTaps

    @property
    def trained(self) -> torch.nn.Module | None:
        """What the optimizer and the checkpoint see beyond the student: the wrapper when it has projections."""
        return self.student if self.match.needs_projection else None

    def analytic_flops_per_token(self) -> float:
        """6 x the projections' weights x the layers each projects (training: forward and backward)."""
        projection = self.student.projection
        if projection is None:
            return 0.0
        num_layers = len(self.match.hidden_pairs)
        per_layer = count_nonembedding_params(projection)
        embeddings = count_nonembedding_params(self.student.embedding_projection) if self.student.embedding_projection else 0
        return 6.0 * (per_layer * num_layers + embeddings)

    def terms(self, projected: list[torch.Tensor],
              teacher_hidden: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
              teacher_taps: Mapping[tuple[int, str], torch.Tensor], attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The intermediate terms of this step: call after the student's forward (its taps are read here)."""
        return intermediate_terms(self.match, projected, teacher_hidden, self.student_taps.take(), teacher_taps,
                                  attention_mask)

    def teacher_parts(self) -> tuple[str, ...]:
        """What the terms read of the teacher per token, as `train.teacher_cache` names the parts: the hidden
        states the layer map targets, then the tapped projections."""
        hidden = self.match.teacher_hidden_indices() if "loss_hidden" in self.match.weights else []
        names = [hidden_part(i) for i in hidden]
        return tuple(names + [tap_part(layer, projection) for layer in self.teacher_taps.layers
                              for projection in self.teacher_taps.parts])

    def close(self) -> None:
        self.student_taps.close()
        self.teacher_taps.close()


def set_up_matching(cfg: DistillStage, section: StudentSection, student: torch.nn.Module, teacher: torch.nn.Module,
                    key: str) -> Matching | None:
    """The stage's matching, or None when no intermediate term is on. `student` and `teacher` are the encoders
    whose layers are matched (their configs give the shapes)."""
    if not cfg.reads_teacher_layers:
        return None
    student_shape, teacher_shape = Shape.of(student.config), Shape.of(teacher.config)
    match = resolve_match(cfg, student_shape, teacher_shape,
                          copied_layers(section, teacher_shape.num_layers, student_shape.num_layers), key)
    parts = match.tapped_parts()
    student_layers = [s for s, _ in match.relation_pairs] if parts else []
    teacher_layers = [t for _, t in match.relation_pairs] if parts else []
    wrapped = MatchedStudent(student, match).to(next(student.parameters()).device)
    return Matching(match=match, student=wrapped, student_taps=AttentionTaps(student, student_layers, parts),
                    teacher_taps=AttentionTaps(teacher, teacher_layers, parts))


def describe(matching: Matching | None) -> dict[str, Any]:
    """The record's `details.intermediate` (null without intermediate terms): the terms, the layer maps and
    where the attention taps were."""
    if matching is None:
        return {"intermediate": None}
    taps = {"student_layers": list(matching.student_taps.layers), "teacher_layers": list(matching.teacher_taps.layers),
            "parts": list(matching.student_taps.parts) if matching.student_taps.layers else []}
    return {"intermediate": matching.match.details() | {"attention_taps": taps}}
