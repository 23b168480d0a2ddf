"""`evaluate`: teacher and/or student on the task's dev split(s) with the official GLUE metrics.

Metric keys in the record: `<role>.<metric>` (and `<role>.<split>.<metric>` for MNLI's two dev sets),
`<role>.score` (the task's GLUE score), and `retention.<metric>` = student / teacher when both are evaluated.
"""

from __future__ import annotations

import numpy as np
import torch

from greendistil.config import EvaluateStage
from greendistil.data.batching import length_sorted_batches, make_loader
from greendistil.distributed import all_gather
from greendistil.data.metrics import compute_metrics, task_score
from greendistil.measure.flops import FlopSampler, FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.inputs import model_inputs
from greendistil.models.sources import LoadedModel, count_params
from greendistil.stages.context import StageContext, single_window


@single_window
def run_evaluate(ctx: StageContext, cfg: EvaluateStage, window: Window) -> None:
    counters = window.counters
    # Count every batch: evaluation is short, and batches sorted by length would bias a sample.
    counters.flop_sampler = FlopSampler(sample_steps=10**9, sample_every=1)
    for role in cfg.roles:
        loaded = ctx.load(role)
        model = loaded.model.to(ctx.device).eval()
        counters.details[role] = {"model": loaded.source, "num_params": count_params(model)}
        flops_per_token = 2.0 * count_nonembedding_params(model)
        split_scores = []
        for split in ctx.task.dev_splits:
            metrics = _evaluate_split(ctx, cfg, window, loaded, split, role, flops_per_token)
            prefix = role if len(ctx.task.dev_splits) == 1 else f"{role}.{split}"
            counters.metrics.update({f"{prefix}.{name}": value for name, value in metrics.items()})
            split_scores.append(task_score(ctx.task, metrics))
        counters.metrics[f"{role}.score"] = float(np.mean(split_scores))
    if "teacher" in cfg.roles:
        for student_role in (r for r in cfg.roles if r != "teacher"):
            counters.metrics.update(_retention(counters.metrics, student_role))
    if len(cfg.roles) == 1:
        counters.model, counters.num_params = counters.details[cfg.roles[0]]["model"], counters.details[cfg.roles[0]]["num_params"]


def _evaluate_split(ctx: StageContext, cfg: EvaluateStage, window: Window, loaded: LoadedModel, split: str,
                    role: str, flops_per_token: float) -> dict[str, float]:
    """The split's metrics over every dev example exactly once. Under DDP each rank runs every W-th batch
    (the single-process batches, so the same padding) and the logits are gathered before the metric."""
    encoded = ctx.encoded(split, loaded.tokenizer)
    # Batches of similar length waste little compute on padding; predictions are put back in order below.
    batches = length_sorted_batches(encoded.lengths, cfg.batch_size)
    mine = batches[ctx.dist.rank::ctx.dist.world_size]
    indices = np.concatenate(mine) if mine else np.empty(0, dtype=np.int64)
    loader = make_loader(encoded, batch_size=cfg.batch_size, pad_token_id=loaded.tokenizer.pad_token_id,
                         shuffle=False, seed=0, sampler=indices.tolist())
    counters, sampler = window.counters, window.counters.flop_sampler
    predictions = []
    with torch.inference_mode():
        for index, cpu_batch in enumerate(loader):
            num_examples, num_tokens = cpu_batch["input_ids"].shape[0], int(cpu_batch["attention_mask"].numpy().sum())
            batch = {k: v.to(ctx.device) for k, v in cpu_batch.items()}
            padded_tokens = batch["input_ids"].numel()
            scope = FlopScope(sampler, sampler.should_count(index), padded_tokens,
                              reset=lambda: None)  # inference: a half-run forward leaves nothing to undo
            with ctx.precision.autocast():
                logits = scope.run(f"{role}_forward",
                                   lambda: loaded.model(**model_inputs(batch, loaded.model)).logits)  # (B, C)
            predictions.append(logits.float().cpu())
            counters.add_batch(num_examples=num_examples, num_tokens=num_tokens, num_padded_tokens=padded_tokens,
                               analytic_flops_per_token=flops_per_token)
    mine_logits = torch.cat(predictions).numpy() if predictions else None
    shards = all_gather(ctx.dist, (indices, mine_logits))
    seen = np.concatenate([i for i, _ in shards])
    if len(seen) != len(encoded) or len(np.unique(seen)) != len(encoded):  # a bug, never bad input
        raise RuntimeError(f"evaluation covered {len(np.unique(seen))} of {len(encoded)} {split} examples "
                           f"({len(seen)} predictions)")
    sorted_logits = np.concatenate([lg for _, lg in shards if lg is not None])
    logits = np.empty_like(sorted_logits)
    logits[seen] = sorted_logits  # back to the split's order
    predicted = logits.reshape(-1) if ctx.task.is_regression else logits.argmax(axis=-1)
    return compute_metrics(ctx.task, predicted, encoded.labels.numpy())


def _retention(metrics: dict[str, float], student_role: str) -> dict[str, float]:
    """student / teacher for every metric both have (DistilBERT reports 97% of BERT's GLUE score):
    `retention.<metric>` for the student, `retention.<role>.<metric>` for another student role."""
    prefix = "retention." if student_role == "student" else f"retention.{student_role}."
    out = {}
    for key, teacher_value in metrics.items():
        if not key.startswith("teacher."):
            continue
        student_value = metrics.get(f"{student_role}." + key[len("teacher."):])
        if student_value is not None and teacher_value:
            out[prefix + key[len("teacher."):]] = student_value / teacher_value
    return out
