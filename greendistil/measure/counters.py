"""What a stage fills while it runs and its window reads when it closes, whatever happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class FlopFigureSource(Protocol):
    """What a window reads of a stage's FLOP count: a `FlopSampler`, or the benchmark's `ScaledFlops`."""

    error: str | None

    def total_flops(self) -> int | None: ...
    def source(self) -> str: ...
    def by_component(self) -> dict[str, int]: ...


@dataclass
class StageCounters:
    """Filled in by the stage as it goes, so a stage that fails or is interrupted still leaves a record of
    everything it did up to that moment."""

    model: str | None = None
    num_params: int | None = None
    num_examples: int = 0
    num_tokens: int = 0  # real (unpadded) tokens
    num_padded_tokens: int = 0  # what the model actually computed on
    num_steps: int = 0
    flops_analytic: float = 0.0
    flop_sampler: FlopFigureSource | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # stage-specific: losses, layers, sources, ...
    artifacts: dict[str, str] = field(default_factory=dict)  # role -> model folder written (relative to the run)
    resumed_from_step: int | None = None  # this segment continued a checkpoint taken at that step
    num_checkpoints: int = 0  # training-state checkpoints written in this segment

    def add_batch(self, *, num_examples: int, num_tokens: int, num_padded_tokens: int,
                  analytic_flops_per_token: float) -> None:
        """One step's (or one evaluation batch's) work; the analytic FLOPs count the padding too."""
        self.num_steps += 1
        self.num_examples += num_examples
        self.num_tokens += num_tokens
        self.num_padded_tokens += num_padded_tokens
        self.flops_analytic += analytic_flops_per_token * num_padded_tokens
