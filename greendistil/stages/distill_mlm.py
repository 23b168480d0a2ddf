"""`distill` with `objective = "mlm"`: DistilBERT's general distillation on the corpus.

loss = alpha_ce * KL(teacher_T || student_T) * T^2 over the vocabulary (at every real token, or only the
masked ones with `ce_on_masked_only`) + alpha_mlm * MLM cross-entropy at the masked tokens + alpha_cos *
(1 - cos) between the last hidden states at every real token. Teacher and student see the same masked
batch; the teacher is frozen, in eval mode and under no_grad, and its forward FLOPs are counted. The
student's held-out MLM figures are measured before and after, the teacher's once, on the same masks.
Analytic FLOPs per token: 6N_student + 2N_teacher, as for task distillation (see `stages.pretrain` for what
N leaves out).
"""

from __future__ import annotations

import dataclasses

import torch

from greendistil.config import DistillStage
from greendistil.data.batching import Batch
from greendistil.data.masking import build_masker, mask_tokens
from greendistil.distributed import rank_seed
from greendistil.measure.flops import FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.mlm import HEAD_NOTE_KEY, MlmForward, evaluate_mlm, head_note, mlm_forward
from greendistil.models.sources import count_params
from greendistil.models.student import describe_shape
from greendistil.stages.context import StageContext
from greendistil.stages.training import (TrainingPlan, backward_terms, distill_flops_per_token, name_model, publish_plan,
                                         record_heldout_flops, train_loader, train_plan)
from greendistil.train.loop import LossTerms
from greendistil.train.losses import hidden_cosine, mlm_cross_entropy, soft_target_kl, weighted_sum


def distill_mlm(ctx: StageContext, cfg: DistillStage, window: Window) -> None:
    """The body of `run_distill` for objective = "mlm", in the stage's window."""
    teacher_loaded, student_loaded = ctx.load_mlm("teacher"), ctx.load_mlm(cfg.role)
    teacher = teacher_loaded.model.to(ctx.device).eval()
    teacher.requires_grad_(False)
    student, tokenizer = student_loaded.model.to(ctx.device), teacher_loaded.tokenizer
    name_model(window, student_loaded.source, student)
    counters = window.counters
    corpus = ctx.encoded_corpus(tokenizer)
    masker = build_masker(tokenizer, ctx.config.masking).to(ctx.device)
    evaluate = dict(batch_size=cfg.batch_size, pad_token_id=tokenizer.pad_token_id, device=ctx.device, dist=ctx.dist)
    teacher_scores = evaluate_mlm(teacher, corpus.heldout, masker, **evaluate)
    before = evaluate_mlm(student, corpus.heldout, masker, **evaluate)
    # DDP under torchrun; the frozen teacher is replicated per rank. Cosine only: the head gets no gradient.
    replica = ctx.parallel(MlmForward(student), find_unused_parameters=cfg.alpha_ce == 0 and cfg.alpha_mlm == 0)
    # Each DDP rank masks its own rows from its own stream (rank 0's is the single-process one).
    generator = torch.Generator(device=ctx.device).manual_seed(rank_seed(ctx.dist, ctx.config.run.seed))
    weights = {"loss_ce": cfg.alpha_ce, "loss_mlm": cfg.alpha_mlm, "loss_cos": cfg.alpha_cos}

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        masked_ids, labels = mask_tokens(masker, batch["input_ids"], batch["attention_mask"], generator)
        masked = labels != -100  # (B, T)
        # Logits only where a term needs them; the masked tokens are real tokens, so they are always included.
        rows = masked if cfg.ce_on_masked_only or cfg.alpha_ce == 0 else batch["attention_mask"].bool()  # (B, T)
        with torch.no_grad(), ctx.precision.autocast():
            teacher_logits, teacher_hidden = scope.run(
                "teacher_forward", lambda: mlm_forward(teacher, batch, masked_ids, rows))  # (N, V), (B, T, H)

        def forward_backward() -> LossTerms:
            with ctx.precision.autocast():  # bf16 where the run computes in it; backward outside, as AMP asks
                student_logits, student_hidden = replica(batch, masked_ids, rows)  # (N, V), (B, T, H)
                terms: dict[str, torch.Tensor] = {}
                if cfg.alpha_ce > 0:
                    terms["loss_ce"] = soft_target_kl(student_logits, teacher_logits, cfg.temperature)
                if cfg.alpha_mlm > 0:
                    terms["loss_mlm"] = mlm_cross_entropy(student_logits, labels[rows])
                if cfg.alpha_cos > 0:
                    terms["loss_cos"] = hidden_cosine(student_hidden, teacher_hidden, batch["attention_mask"])
                loss = weighted_sum(terms, weights)
            return backward_terms(loss, terms)

        return scope.run("student_train", forward_backward)

    plan = TrainingPlan(model=student, source=student_loaded.source, tokenizer=tokenizer,
                        loader=train_loader(ctx, cfg, corpus.train, tokenizer), step=step,
                        analytic_flops_per_token=distill_flops_per_token(student, teacher), num_train_examples=len(corpus.train))
    summary = train_plan(ctx, cfg, window, plan)
    after = evaluate_mlm(student, corpus.heldout, masker, **evaluate)
    record_heldout_flops(counters, "teacher_heldout_forward", teacher_scores.flop_counts, count_nonembedding_params(teacher))
    record_heldout_flops(counters, "student_heldout_forward", before.flop_counts + after.flop_counts,
                         count_nonembedding_params(student))
    student_head = (f"trained in stage {cfg.name!r} by MLM distillation, {summary.num_steps} steps, "
                    f"{counters.num_tokens} tokens of {corpus.details['source']}; before: {head_note(student)}")
    student.config.update({HEAD_NOTE_KEY: student_head})
    counters.metrics.update({**teacher_scores.as_metrics("teacher"), **before.as_metrics(cfg.role, "_before"),
                             **after.as_metrics(cfg.role, "_after")})
    if teacher_scores.accuracy:
        counters.metrics["retention.mlm_accuracy"] = after.accuracy / teacher_scores.accuracy
    # A later finetune starts from this encoder.
    publish_plan(ctx, cfg, window, plan, summary, (f"{cfg.role}_mlm", cfg.role), {
        "objective": cfg.objective, "teacher_model": teacher_loaded.source, "teacher_mlm_head": head_note(teacher),
        "mlm_head": student_head, "teacher_num_params": count_params(teacher), "student_num_params": count_params(student),
        "student_num_layers": student.config.num_hidden_layers, "teacher_num_layers": teacher.config.num_hidden_layers,
        "student_shape": describe_shape(student.config), "temperature": cfg.temperature, **cfg.active_alphas(), "ce_on_masked_only": cfg.ce_on_masked_only,
        "corpus": corpus.details, "masking": dataclasses.asdict(ctx.config.masking),
        "heldout": {"num_sequences": after.num_sequences, "num_masked_tokens": after.num_masked_tokens},
    })
