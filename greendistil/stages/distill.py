"""`distill`: the student learns from the frozen teacher on the task's train split (task distillation).
With `objective = "mlm"` the stage is general distillation on the corpus instead: see `stages.distill_mlm`.

With `objective = "corpus"`, general distillation on the corpus by the intermediate terms only: see
`stages.distill_corpus`.

loss = alpha_ce * KL(teacher_T || student_T) * T^2 + alpha_task * task loss + alpha_cos * (1 - cos(h_s, h_t))
over the last hidden states, + the intermediate terms that are on (TinyBERT's hidden-state MSE, MiniLM's
attention and value relations, MiniLMv2's Q/K/V relations: `stages.matched`). For regression (STS-B) the
soft-target term is the MSE to the teacher's output. The teacher runs in eval mode under no_grad, and its
forward FLOPs are counted with the student's.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from greendistil.config import DistillStage
from greendistil.data.batching import EXAMPLE_INDEX, Batch, EncodedSplit
from greendistil.measure.flops import FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.inputs import model_inputs
from greendistil.models.sources import count_params
from greendistil.models.student import describe_shape
from greendistil.stages.context import StageContext, single_window
from greendistil.stages.distill_corpus import distill_corpus
from greendistil.stages.distill_mlm import distill_mlm
from greendistil.stages.matched import Matching, describe, set_up_matching
from greendistil.stages.training import (TrainingPlan, backward_terms, distill_flops_per_token, name_model, publish_plan,
                                         train_loader, train_plan)
from greendistil.train.loop import LossTerms
from greendistil.train.teacher_cache import CacheShape, TeacherCache, hidden_part, parse_part
from greendistil.train.losses import hidden_cosine, soft_target_kl, soft_target_mse, task_loss, weighted_sum


class TeacherView(NamedTuple):
    """What a step reads of the teacher: logits (B, C), last hidden states (B, T, H), and with intermediate
    terms its hidden states by index (embeddings first: every layer's, or from the cache those the terms
    read) and the attention taps."""

    logits: torch.Tensor | None
    last_hidden: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | Mapping[int, torch.Tensor] = ()
    taps: Mapping[tuple[int, str], torch.Tensor] = MappingProxyType({})

    @classmethod
    def of_cache(cls, logits: torch.Tensor | None, parts: Mapping[str, torch.Tensor], num_layers: int) -> TeacherView:
        """A served batch's view from the cache's parts (`train.teacher_cache` names them)."""
        named = [(parse_part(name), tensor) for name, tensor in parts.items()]
        hidden = {index: tensor for (kind, index), tensor in named if kind == "hidden"}
        taps = {(layer, kind): tensor for (kind, layer), tensor in named if kind != "hidden"}
        return cls(logits, hidden.get(num_layers), hidden, taps)


@single_window
def run_distill(ctx: StageContext, cfg: DistillStage, window: Window) -> None:
    if cfg.objective == "mlm":
        distill_mlm(ctx, cfg, window)
        return
    if cfg.objective == "corpus":
        distill_corpus(ctx, cfg, window)
        return
    teacher_loaded, student_loaded = ctx.load("teacher"), ctx.load(cfg.role)
    teacher = teacher_loaded.model.to(ctx.device).eval()
    teacher.requires_grad_(False)
    student = student_loaded.model.to(ctx.device)
    name_model(window, student_loaded.source, student)
    tokenizer = teacher_loaded.tokenizer
    train_split = ctx.encoded("train", tokenizer)
    is_regression = ctx.task.is_regression
    # DDP under torchrun; the frozen teacher is simply replicated per rank. Without a logit term (cosine
    # only) the classifier gets no gradient, which DDP must be told about.
    matching = set_up_matching(cfg, ctx.config.student, student, teacher, f"stages.{cfg.name}")
    replica = ctx.parallel(matching.student if matching else student,
                           find_unused_parameters=cfg.alpha_ce == 0 and cfg.alpha_task == 0)
    weights = {"loss_ce": cfg.alpha_ce, "loss_task": cfg.alpha_task, "loss_cos": cfg.alpha_cos,
               **(matching.match.weights if matching else {})}
    cache, cache_details = teacher_cache(ctx, cfg, teacher, train_split, matching)
    served_padded_tokens = [0]
    num_teacher_layers = int(teacher.config.num_hidden_layers)

    def teacher_outputs(batch: Batch, scope: FlopScope) -> TeacherView:
        """The teacher's logits (B, C) and last hidden states (B, T, H), with intermediate terms also its hidden
        states and attention taps: from the cache when it has the whole batch (the parts the terms read)."""
        indices = batch.get(EXAMPLE_INDEX)  # (B,) on the CPU
        found = cache.lookup(indices, batch["attention_mask"]) if cache is not None and indices is not None else None
        if found is not None:
            served_padded_tokens[0] += batch["input_ids"].numel()
            return TeacherView.of_cache(*found, num_teacher_layers)  # the terms that read a missing part are off
        with torch.no_grad(), ctx.precision.autocast():
            out = scope.run("teacher_forward", lambda: teacher(**model_inputs(batch, teacher), output_hidden_states=True))
        taps = matching.teacher_taps.take() if matching else {}
        if cache is not None and indices is not None:
            cache.store(indices, out.logits, {name: _part(name, out.hidden_states, taps)
                                              for name in cache.shape.token_parts})
        # fp32, as the cache serves them: a bf16 run then computes the same loss with or without the cache.
        return TeacherView(out.logits.float(), out.hidden_states[-1].float(), out.hidden_states, taps)

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        student_inputs = model_inputs(batch, student)
        seen = teacher_outputs(batch, scope)
        teacher_logits, teacher_hidden = seen.logits, seen.last_hidden

        def forward_backward() -> LossTerms:
            with ctx.precision.autocast():  # bf16 where the run computes in it; backward outside, as AMP asks
                if matching is None:
                    student_out = replica(**student_inputs, output_hidden_states=True)
                else:
                    student_out, projected = replica(**student_inputs)
                terms: dict[str, torch.Tensor] = {}
                if cfg.alpha_ce > 0:
                    terms["loss_ce"] = (soft_target_mse(student_out.logits, teacher_logits) if is_regression
                                        else soft_target_kl(student_out.logits, teacher_logits, cfg.temperature))
                if cfg.alpha_task > 0:
                    terms["loss_task"] = task_loss(student_out.logits, batch["labels"], is_regression)
                if cfg.alpha_cos > 0:
                    terms["loss_cos"] = hidden_cosine(student_out.hidden_states[-1], teacher_hidden,
                                                      batch["attention_mask"])  # (B, T, H) each
                if matching is not None:
                    terms |= matching.terms(projected, seen.hidden_states, seen.taps, batch["attention_mask"])
                loss = weighted_sum(terms, weights)
            return backward_terms(loss, terms)

        return scope.run("student_train", forward_backward)

    plan = TrainingPlan(model=student, source=student_loaded.source, tokenizer=tokenizer,
                        loader=train_loader(ctx, cfg, train_split, tokenizer), step=step,
                        analytic_flops_per_token=distill_flops_per_token(student, teacher)
                        + (matching.analytic_flops_per_token() if matching else 0.0),
                        num_train_examples=len(train_split), trained=matching.trained if matching else None,
                        teacher_cached=cache is not None and ctx.dist.world_size == 1)  # DDP: hardly ever served
    teacher_flops_per_token = 2.0 * count_nonembedding_params(teacher)
    try:
        summary = train_plan(ctx, cfg, window, plan)
    finally:  # a stopped stage's record says what its cache served too
        if matching is not None:
            matching.close()
            window.counters.details.update(describe(matching))
        # The analytic count charged every step the teacher's 2N per token: take back the steps it did not run.
        window.counters.flops_analytic -= teacher_flops_per_token * served_padded_tokens[0]
        window.counters.details["teacher_cache"] = cache_details | _served(cache) | {
            "num_padded_tokens_served": served_padded_tokens[0]}
    publish_plan(ctx, cfg, window, plan, summary, cfg.role, {
        "objective": cfg.objective, "teacher_model": teacher_loaded.source,
        "teacher_num_params": count_params(teacher), "student_num_params": count_params(student),
        "student_num_layers": student.config.num_hidden_layers, "teacher_num_layers": teacher.config.num_hidden_layers,
        "temperature": cfg.temperature, **cfg.active_alphas(), **describe(matching),
        "student_shape": describe_shape(student.config),
    })


def _part(name: str, hidden_states: tuple[torch.Tensor, ...], taps: Mapping[tuple[int, str], torch.Tensor]
          ) -> torch.Tensor:
    """The teacher's output that a cache part names (`train.teacher_cache`), (B, T, H)."""
    kind, index = parse_part(name)
    return hidden_states[index] if kind == "hidden" else taps[(index, kind)]


def teacher_cache(ctx: StageContext, cfg: DistillStage, teacher: torch.nn.Module, split: EncodedSplit,
                  matching: Matching | None = None) -> tuple[TeacherCache | None, dict[str, Any]]:
    """The stage's teacher cache (None: the teacher runs every step) and what the record says of the choice.
    It holds what the terms read: the logits, the last hidden states for the cosine, and with intermediate
    terms (`matching`) the hidden states and attention projections they match."""
    last = [hidden_part(int(teacher.config.num_hidden_layers))] if cfg.alpha_cos > 0 else []
    parts = tuple(dict.fromkeys(last + list(matching.teacher_parts() if matching else ())))
    shape = CacheShape(num_examples=len(split), num_real_tokens=split.num_tokens,
                       num_labels=int(teacher.config.num_labels), hidden_size=int(teacher.config.hidden_size),
                       logits=cfg.alpha_ce > 0, token_parts=parts)
    size_mb = shape.num_bytes / 1e6
    details: dict[str, Any] = {"setting": cfg.cache_teacher, "size_mb": size_mb, "precision": "fp32",
                               "where": str(ctx.device), "parts": list(parts)}
    if cfg.cache_teacher is False:
        return None, details | {"used": False, "reason": "cache_teacher = false"}
    if cfg.cache_teacher == "auto" and cfg.epochs <= 1:
        return None, details | {"used": False, "reason": f"one epoch or less ({cfg.epochs:g}): nothing repeats"}
    if cfg.cache_teacher == "auto" and ctx.dist.world_size > 1:  # rank r's rows of a later epoch's batches are
        # mostly rows another rank saw in the first: its own cache would hardly ever hold a whole batch
        return None, details | {"used": False, "reason": f"DDP over {ctx.dist.world_size} ranks: each rank would "
                                                          "cache only the rows it saw"}
    if cfg.cache_teacher == "auto" and size_mb > cfg.teacher_cache_max_mb:
        return None, details | {"used": False, "reason": f"{size_mb:.0f} MB > teacher_cache_max_mb "
                                                          f"{cfg.teacher_cache_max_mb:g}"}
    on_resume = "refilled from the resumed position on (in memory only)" if ctx.resuming else None
    return TeacherCache(shape, split.lengths, ctx.device), details | {"used": True, "on_resume": on_resume}


def _served(cache: TeacherCache | None) -> dict[str, int]:
    if cache is None:
        return {"num_batches_served": 0, "num_batches_stored": 0}
    return {"num_batches_served": cache.num_served, "num_batches_stored": cache.num_stored}
