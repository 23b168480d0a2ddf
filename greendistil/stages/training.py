"""The skeleton every training stage shares (finetune, distill, distill-mlm, pretrain).

A stage builds a `TrainingPlan` (its models on the device, its loader, its step function, its analytic
FLOPs per token), then `train_plan` fills the window's counters and runs the shared loop, and
`publish_plan` saves the model and writes the details every training record carries. What differs between
the stages is only what they build and the details of their own they add.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from greendistil.config import TrainingStage
from greendistil.data.batching import EncodedSplit, make_loader
from greendistil.measure.counters import StageCounters
from greendistil.measure.flops import FlopSampler, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.sources import count_params
from greendistil.stages.context import StageContext
from greendistil.train.loop import LogPoint, LossTerms, StepFn, TrainSummary, train


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """What a training stage trains, and how."""

    model: torch.nn.Module  # the model the stage measures and saves, on the device
    source: str  # where it came from, for the record
    tokenizer: Any
    loader: DataLoader
    step: StepFn
    analytic_flops_per_token: float
    num_train_examples: int
    trained: torch.nn.Module | None = None  # the part the optimizer and the checkpoint see (default: model)
    teacher_cached: bool = False  # a teacher cache serves the epochs after the first (for the forecasts)


def backward_terms(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> LossTerms:
    """Backpropagate a distillation loss (outside autocast, as AMP asks) and hand the loop the loss and its
    named terms, detached (read at log intervals, never per step)."""
    loss.backward()
    return {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}}


def distill_flops_per_token(student: torch.nn.Module, teacher: torch.nn.Module) -> float:
    """Analytic FLOPs per training token of distillation: the student's training step (6N) and the frozen
    teacher's forward pass (2N), N the non-embedding parameters (Kaplan et al. 2020)."""
    return 6.0 * count_nonembedding_params(student) + 2.0 * count_nonembedding_params(teacher)


def train_loader(ctx: StageContext, cfg: TrainingStage, split: EncodedSplit, tokenizer: Any) -> DataLoader:
    """The stage's shuffled (length-grouped) training batches: this rank's share under torchrun."""
    return make_loader(split, batch_size=cfg.batch_size, pad_token_id=tokenizer.pad_token_id, shuffle=True,
                       seed=ctx.config.run.seed, group_by_length=cfg.group_by_length, **ctx.shard)


def name_model(window: Window, source: str, model: torch.nn.Module) -> None:
    """Say in the window which model it measures, as soon as it is loaded (a stage that fails later keeps it)."""
    window.counters.model, window.counters.num_params = source, count_params(model)


def train_plan(ctx: StageContext, cfg: TrainingStage, window: Window, plan: TrainingPlan) -> TrainSummary:
    """Run the shared loop over the plan, into the window's counters."""
    return train(cfg=cfg, model=plan.trained or plan.model, loader=plan.loader, step_fn=plan.step, window=window,
                 analytic_flops_per_token=plan.analytic_flops_per_token, state=ctx.train_state(cfg.name),
                 dist=ctx.dist, show_progress=ctx.show_progress, on_log=_live_scalars(ctx, window),
                 max_steps=ctx.max_train_steps, count_flops=ctx.count_flops, teacher_cached=plan.teacher_cached)


def _live_scalars(ctx: StageContext, window: Window) -> Callable[[LogPoint], None] | None:
    """Each log interval's scalars to the run's TensorBoard log, when `run.tensorboard` is on (rank 0)."""
    log = ctx.scalar_log
    if log is None or not ctx.dist.is_main:
        return None
    prefix = f"{ctx.task_folder}/{window.stage}" if ctx.task_folder else window.stage

    def write(point: LogPoint) -> None:
        scalars = {f"loss/{name}": value for name, value in point.losses.items()}
        scalars |= {"learning_rate": point.learning_rate, "examples_per_s": point.examples_per_s}
        scalars |= {f"so_far/{name}": value for name, value in window.live_scalars().items()}
        log.add(prefix, point.step, scalars)
    return write


def publish_plan(ctx: StageContext, cfg: TrainingStage, window: Window, plan: TrainingPlan, summary: TrainSummary,
                 roles: str | tuple[str, ...], details: dict[str, Any]) -> Path:
    """Save the trained model as the latest of `roles` and record the details every training stage has,
    then the stage's own `details`."""
    folder = ctx.publish(roles, plan.model, plan.tokenizer, cfg.name, window.counters)
    window.counters.details.update({
        "checkpoint": str(folder.relative_to(ctx.run_dir)), "train_examples": plan.num_train_examples,
        "final_loss": summary.final_loss, "mean_loss": summary.mean_loss, "examples_per_s": summary.examples_per_s,
        "device": str(ctx.device), "torch_threads": torch.get_num_threads(), **details,
    })
    return folder


def record_heldout_flops(counters: StageCounters, component: str, flop_counts: Iterable[tuple[int, int]],
                         num_nonembedding_params: int) -> None:
    """Add held-out evaluations ((FLOPs, padded tokens) per batch, every batch counted) to the stage's FLOPs
    and its analytic estimate (2N per padded token, forward only). They are compute the stage spent, though
    not training tokens."""
    sampler = counters.flop_sampler
    for flops, padded_tokens in flop_counts:
        if isinstance(sampler, FlopSampler):
            sampler.add_counted(component, flops, padded_tokens)
        counters.flops_analytic += 2.0 * num_nonembedding_params * padded_tokens
