"""`pretrain`: masked-language-model training of the teacher on the corpus, with dynamic masking.

`train = "head"` trains only the MLM head (the encoder and the decoder tied to the word embeddings stay
frozen and in eval mode): the packaged MiniLM teacher ships without an MLM head, and MLM distillation from a
random head would teach nothing. `train = "all"` trains everything: continued pretraining, or a teacher from
scratch. The held-out MLM loss, masked-token accuracy and perplexity are measured before and after, on the
same masked positions, inside the stage's window.

Analytic FLOPs per token: 2N forward + 4N' backward, N the non-embedding parameters and N' the trainable
ones (6N when everything trains). As in Kaplan et al. this leaves out the vocabulary projection, tied to
the embeddings; the counted FLOPs include it, at the masked positions where the head runs.
"""

from __future__ import annotations

import dataclasses

import torch

from greendistil.config import PretrainStage
from greendistil.data.batching import Batch
from greendistil.data.masking import build_masker, mask_tokens
from greendistil.distributed import rank_seed
from greendistil.measure.flops import FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.mlm import HEAD_NOTE_KEY, MlmForward, evaluate_mlm, freeze_all_but_head, head_note, mlm_head
from greendistil.stages.context import StageContext, single_window
from greendistil.stages.training import (TrainingPlan, name_model, publish_plan, record_heldout_flops, train_loader,
                                         train_plan)
from greendistil.train.loop import LossTerms
from greendistil.train.losses import mlm_cross_entropy


@single_window
def run_pretrain(ctx: StageContext, cfg: PretrainStage, window: Window) -> None:
    loaded = ctx.load_mlm(cfg.role)
    model, tokenizer = loaded.model.to(ctx.device), loaded.tokenizer
    name_model(window, loaded.source, model)
    counters = window.counters
    corpus = ctx.encoded_corpus(tokenizer)
    masker = build_masker(tokenizer, ctx.config.masking).to(ctx.device)
    head_before = head_note(model)
    head_only = cfg.train == "head"
    # Head only: the optimizer, clipping and train mode see the head alone; the encoder stays in eval mode.
    trained = mlm_head(model) if head_only else model
    if head_only:
        freeze_all_but_head(model)
        model.eval()
    num_nonembedding = count_nonembedding_params(model)
    num_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    num_frozen_nonembedding = num_nonembedding - count_nonembedding_params(model, trainable_only=True)
    evaluate = dict(batch_size=cfg.batch_size, pad_token_id=tokenizer.pad_token_id, device=ctx.device, dist=ctx.dist)
    before = evaluate_mlm(model, corpus.heldout, masker, **evaluate)
    replica = ctx.parallel(MlmForward(model))  # DDP under torchrun (the frozen encoder is not synchronised)
    # Each DDP rank masks its own rows from its own stream (rank 0's is the single-process one).
    generator = torch.Generator(device=ctx.device).manual_seed(rank_seed(ctx.dist, ctx.config.run.seed))

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        masked_ids, labels = mask_tokens(masker, batch["input_ids"], batch["attention_mask"], generator)
        positions = labels != -100  # (B, T): the head runs only where there is something to predict

        def forward_backward() -> LossTerms:
            with ctx.precision.autocast():  # bf16 where the run computes in it; backward outside, as AMP asks
                logits, _ = replica(batch, masked_ids, positions, encoder_grad=not head_only)  # (N, V)
                loss = mlm_cross_entropy(logits, labels[positions])
            loss.backward()
            return {"loss": loss.detach()}
        return scope.run(f"{cfg.role}_train", forward_backward)

    # Head only: the training state holds the head, the part trained.
    plan = TrainingPlan(model=model, trained=trained, source=loaded.source, tokenizer=tokenizer,
                        loader=train_loader(ctx, cfg, corpus.train, tokenizer), step=step,
                        analytic_flops_per_token=6.0 * num_nonembedding - 4.0 * num_frozen_nonembedding,
                        num_train_examples=len(corpus.train))
    summary = train_plan(ctx, cfg, window, plan)
    after = evaluate_mlm(model, corpus.heldout, masker, **evaluate)
    record_heldout_flops(counters, f"{cfg.role}_heldout_forward", before.flop_counts + after.flop_counts,
                         num_nonembedding)
    what = ("head only (encoder and tied decoder frozen)" if head_only else "all weights")
    note = (f"trained in stage {cfg.name!r}: {what}, {summary.num_steps} steps, {counters.num_tokens} tokens of "
            f"{corpus.details['source']}, learning rate {cfg.learning_rate:g}; before: {head_before}")
    model.config.update({HEAD_NOTE_KEY: note})
    counters.metrics.update({**before.as_metrics(cfg.role, "_before"), **after.as_metrics(cfg.role, "_after")})
    # Head only: the encoder is unchanged, so later task stages keep starting from the teacher they had.
    roles = (f"{cfg.role}_mlm",) if head_only else (f"{cfg.role}_mlm", cfg.role)
    publish_plan(ctx, cfg, window, plan, summary, roles, {
        "train": cfg.train, "mlm_head": note, "mlm_head_before": head_before, "trainable_params": num_trainable,
        "corpus": corpus.details, "masking": dataclasses.asdict(ctx.config.masking),
        "heldout": {"num_sequences": after.num_sequences, "num_masked_tokens": after.num_masked_tokens},
    })
