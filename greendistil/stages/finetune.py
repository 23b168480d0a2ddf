"""`finetune`: supervised training of the teacher (or the student) on the GLUE task's train split."""

from __future__ import annotations

from greendistil.config import FinetuneStage
from greendistil.data.batching import Batch
from greendistil.measure.flops import FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.inputs import model_inputs
from greendistil.stages.context import StageContext, single_window
from greendistil.stages.training import TrainingPlan, name_model, publish_plan, train_loader, train_plan
from greendistil.train.loop import LossTerms
from greendistil.train.losses import task_loss


@single_window
def run_finetune(ctx: StageContext, cfg: FinetuneStage, window: Window) -> None:
    loaded = ctx.load(cfg.role)
    model = loaded.model.to(ctx.device)
    name_model(window, loaded.source, model)
    train_split = ctx.encoded("train", loaded.tokenizer)
    is_regression = ctx.task.is_regression
    replica = ctx.parallel(model)  # DDP under torchrun: gradients averaged over ranks in backward

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        def forward_backward() -> LossTerms:
            with ctx.precision.autocast():  # bf16 where the run computes in it; backward outside, as AMP asks
                logits = replica(**model_inputs(batch, model)).logits  # (B, C)
                loss = task_loss(logits, batch["labels"], is_regression)
            loss.backward()
            return {"loss": loss.detach()}
        return scope.run(f"{cfg.role}_train", forward_backward)

    plan = TrainingPlan(model=model, source=loaded.source, tokenizer=loaded.tokenizer,
                        loader=train_loader(ctx, cfg, train_split, loaded.tokenizer), step=step,
                        analytic_flops_per_token=6.0 * count_nonembedding_params(model),
                        num_train_examples=len(train_split))
    summary = train_plan(ctx, cfg, window, plan)
    publish_plan(ctx, cfg, window, plan, summary, cfg.role, {})
