"""`finetune`: supervised training of the teacher (or the student) on the GLUE task's train split."""

from __future__ import annotations

import torch

from greendistil.config import FinetuneStage
from greendistil.data.batching import make_loader
from greendistil.losses import task_loss
from greendistil.measure.flops import count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models import count_params
from greendistil.stages.context import StageContext
from greendistil.training import Batch, FlopScope, model_inputs, train


def run_finetune(ctx: StageContext, cfg: FinetuneStage, window: Window) -> None:
    loaded = ctx.load(cfg.role)
    model = loaded.model.to(ctx.device)
    counters = window.counters
    counters.model, counters.num_params = loaded.source, count_params(model)
    train_split = ctx.encoded("train", loaded.tokenizer)
    loader = make_loader(train_split, batch_size=cfg.batch_size, pad_token_id=loaded.tokenizer.pad_token_id,
                         shuffle=True, seed=ctx.config.run.seed, group_by_length=cfg.group_by_length, **ctx.shard)
    is_regression = ctx.task.is_regression
    replica = ctx.parallel(model)  # DDP under torchrun: gradients averaged over ranks in backward

    def step(batch: Batch, scope: FlopScope) -> dict[str, float]:
        def forward_backward() -> dict[str, float]:
            logits = replica(**model_inputs(batch, model)).logits  # (B, C)
            loss = task_loss(logits, batch["labels"], is_regression)
            loss.backward()
            return {"loss": loss.item()}
        return scope.run(f"{cfg.role}_train", forward_backward)

    summary = train(cfg=cfg, model=model, loader=loader, step_fn=step, window=window,
                    analytic_flops_per_token=6.0 * count_nonembedding_params(model), state=ctx.train_state(cfg.name),
                    dist=ctx.dist)
    folder = ctx.publish(cfg.role, model, loaded.tokenizer, cfg.name, window)
    counters.details.update({
        "checkpoint": str(folder.relative_to(ctx.run_dir)), "train_examples": len(train_split),
        "final_loss": summary.final_loss, "mean_loss": summary.mean_loss,
        "examples_per_s": summary.examples_per_s, "device": str(ctx.device),
        "torch_threads": torch.get_num_threads(),
    })
