"""`distill` with `objective = "corpus"`: general distillation on the corpus without a vocabulary head.

loss = the intermediate terms that are on (TinyBERT's hidden-state MSE, MiniLM's attention and value
relations, MiniLMv2's Q/K/V relations; `stages.matched`) + alpha_cos * (1 - cos) between the last hidden
states at every real token. Only the encoders run: no masking, no vocabulary logits, so neither a trained
masked-LM head nor the pretrain stage that would train one is needed. The teacher is frozen, in eval mode
and under no_grad, and its forward FLOPs are counted. The student is saved with the head it had (untrained,
and said so), as the general route's encoder for a later finetune. Before and after training, the terms are
computed on the corpus's held-out lines (`stages.corpus_heldout`): metrics `<role>.heldout_loss_before`,
`<role>.heldout_loss_after`, and each term's (`<role>.heldout_loss_hidden_after`, ...).
Analytic FLOPs per token: 6N_student + 2N_teacher over the encoders (+ the projections' 6N).
"""

from __future__ import annotations

from typing import Any

import torch

from greendistil.config import DistillStage
from greendistil.data.batching import Batch
from greendistil.measure.flops import FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.inputs import model_inputs
from greendistil.models.mlm import HEAD_NOTE_KEY, head_note
from greendistil.models.sources import count_params
from greendistil.models.student import describe_shape
from greendistil.stages.context import StageContext
from greendistil.stages.corpus_heldout import HeldoutTerms, evaluate_terms
from greendistil.stages.matched import describe, set_up_matching
from greendistil.stages.training import (TrainingPlan, backward_terms, distill_flops_per_token, name_model, publish_plan,
                                         record_heldout_flops, train_loader, train_plan)
from greendistil.train.loop import LossTerms
from greendistil.train.losses import hidden_cosine, weighted_sum

TeacherSeen = tuple[Any, dict[tuple[int, str], torch.Tensor]]  # the teacher's outputs and its attention taps
StudentSeen = tuple[Any, list[torch.Tensor]]  # the student's outputs and its projected hidden states


def distill_corpus(ctx: StageContext, cfg: DistillStage, window: Window) -> None:
    """The body of `run_distill` for objective = "corpus", in the stage's window."""
    teacher_loaded, student_loaded = ctx.load_mlm("teacher"), ctx.load_mlm(cfg.role)
    teacher_model = teacher_loaded.model.to(ctx.device).eval()
    teacher_model.requires_grad_(False)
    student_model, tokenizer = student_loaded.model.to(ctx.device), teacher_loaded.tokenizer
    name_model(window, student_loaded.source, student_model)
    teacher, student = teacher_model.base_model, student_model.base_model  # the encoders: no vocabulary head
    corpus = ctx.encoded_corpus(tokenizer)
    matching = set_up_matching(cfg, ctx.config.student, student, teacher, f"stages.{cfg.name}")
    # Without the cosine, terms that read inner layers leave the top of the student without a gradient.
    replica = ctx.parallel(matching.student if matching else student, find_unused_parameters=cfg.alpha_cos == 0)
    weights = {"loss_cos": cfg.alpha_cos, **(matching.match.weights if matching else {})}

    def teacher_forward(batch: Batch) -> TeacherSeen:
        """The teacher's outputs (every hidden state) and its attention taps."""
        with torch.no_grad(), ctx.precision.autocast():
            seen = teacher(**model_inputs(batch, teacher), output_hidden_states=True)
        return seen, matching.teacher_taps.take() if matching else {}

    def terms_of(student_seen: StudentSeen, teacher_seen: TeacherSeen, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms, from the student's (outputs, projected hidden states) and the teacher's (outputs,
        taps); mask (B, T). Read the student's taps: call right after its forward."""
        (out, projected), (seen, teacher_taps) = student_seen, teacher_seen
        terms: dict[str, torch.Tensor] = {}
        if cfg.alpha_cos > 0:
            terms["loss_cos"] = hidden_cosine(out.last_hidden_state, seen.last_hidden_state.float(), mask)
        if matching is not None:
            terms |= matching.terms(projected, seen.hidden_states, teacher_taps, mask)
        return terms

    def student_forward(module: torch.nn.Module, batch: Batch) -> StudentSeen:
        """The student's outputs and its hidden states projected for the map (none without matching)."""
        inputs = model_inputs(batch, student)
        return (module(**inputs), []) if matching is None else module(**inputs)

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        teacher_seen = scope.run("teacher_forward", lambda: teacher_forward(batch))

        def forward_backward() -> LossTerms:
            with ctx.precision.autocast():  # bf16 where the run computes in it; backward outside, as AMP asks
                terms = terms_of(student_forward(replica, batch), teacher_seen, batch["attention_mask"])
                loss = weighted_sum(terms, weights)
            return backward_terms(loss, terms)

        return scope.run("student_train", forward_backward)

    evaluated = matching.student if matching else student

    def heldout() -> HeldoutTerms:
        def student_seen(batch: Batch) -> StudentSeen:
            with ctx.precision.autocast():
                return student_forward(evaluated, batch)

        return evaluate_terms(corpus.heldout, teacher_forward=teacher_forward, student_forward=student_seen,
                              terms=terms_of, weights=weights, modules=(evaluated,), batch_size=cfg.batch_size,
                              pad_token_id=tokenizer.pad_token_id, device=ctx.device, dist=ctx.dist)

    before = heldout()

    plan = TrainingPlan(model=student_model, source=student_loaded.source, tokenizer=tokenizer,
                        loader=train_loader(ctx, cfg, corpus.train, tokenizer), step=step,
                        analytic_flops_per_token=distill_flops_per_token(student, teacher)
                        + (matching.analytic_flops_per_token() if matching else 0.0),
                        num_train_examples=len(corpus.train),
                        trained=(matching.trained if matching and matching.trained else student))
    counters = window.counters

    def count(scored: HeldoutTerms) -> None:  # the held-out forwards' FLOPs join the stage's
        record_heldout_flops(counters, "teacher_heldout_forward", scored.teacher_flop_counts,
                             count_nonembedding_params(teacher))
        record_heldout_flops(counters, "student_heldout_forward", scored.student_flop_counts,
                             count_nonembedding_params(student))

    try:
        summary = train_plan(ctx, cfg, window, plan)
        after = heldout()
    finally:
        if matching is not None:
            matching.close()
            counters.details.update(describe(matching))
        count(before)  # spent even when the stage stopped
    count(after)
    counters.metrics.update({**before.as_metrics(cfg.role, "_before"), **after.as_metrics(cfg.role, "_after")})
    head = (f"not trained: the encoder was distilled in stage {cfg.name!r} with objective 'corpus' (no vocabulary "
            f"term); before: {head_note(student_model)}")
    student_model.config.update({HEAD_NOTE_KEY: head})
    publish_plan(ctx, cfg, window, plan, summary, (f"{cfg.role}_mlm", cfg.role), {
        "objective": cfg.objective, "teacher_model": teacher_loaded.source, "mlm_head": head,
        "teacher_num_params": count_params(teacher), "student_num_params": count_params(student),
        "student_num_layers": student.config.num_hidden_layers, "teacher_num_layers": teacher.config.num_hidden_layers,
        **cfg.active_alphas(), **describe(matching), "student_shape": describe_shape(student.config),
        "corpus": corpus.details, "heldout": {"num_sequences": after.num_sequences},
    })
