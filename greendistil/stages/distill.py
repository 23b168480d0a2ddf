"""`distill`: the student learns from the frozen teacher on the task's train split (task distillation).
With `objective = "mlm"` the stage is general distillation on the corpus instead: see `stages.distill_mlm`.

loss = alpha_ce * KL(teacher_T || student_T) * T^2 + alpha_task * task loss + alpha_cos * (1 - cos(h_s, h_t))
over the last hidden states. For regression (STS-B) the soft-target term is the MSE to the teacher's output.
The teacher runs in eval mode under no_grad, and its forward FLOPs are counted with the student's.
"""

from __future__ import annotations

import torch

from greendistil.config import DistillStage
from greendistil.data.batching import Batch
from greendistil.measure.flops import FlopScope, count_nonembedding_params
from greendistil.measure.window import Window
from greendistil.models.inputs import model_inputs
from greendistil.models.sources import count_params
from greendistil.stages.context import StageContext, single_window
from greendistil.stages.distill_mlm import distill_mlm
from greendistil.stages.training import TrainingPlan, name_model, publish_plan, train_loader, train_plan
from greendistil.train.loop import LossTerms
from greendistil.train.losses import hidden_cosine, soft_target_kl, soft_target_mse, task_loss, weighted_sum


@single_window
def run_distill(ctx: StageContext, cfg: DistillStage, window: Window) -> None:
    if cfg.objective == "mlm":
        distill_mlm(ctx, cfg, window)
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
    replica = ctx.parallel(student, find_unused_parameters=cfg.alpha_ce == 0 and cfg.alpha_task == 0)
    weights = {"loss_ce": cfg.alpha_ce, "loss_task": cfg.alpha_task, "loss_cos": cfg.alpha_cos}

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        teacher_inputs, student_inputs = model_inputs(batch, teacher), model_inputs(batch, student)
        with torch.no_grad():
            teacher_out = scope.run("teacher_forward", lambda: teacher(**teacher_inputs, output_hidden_states=True))

        def forward_backward() -> LossTerms:
            student_out = replica(**student_inputs, output_hidden_states=True)
            terms: dict[str, torch.Tensor] = {}
            if cfg.alpha_ce > 0:
                terms["loss_ce"] = (soft_target_mse(student_out.logits, teacher_out.logits) if is_regression
                                    else soft_target_kl(student_out.logits, teacher_out.logits, cfg.temperature))
            if cfg.alpha_task > 0:
                terms["loss_task"] = task_loss(student_out.logits, batch["labels"], is_regression)
            if cfg.alpha_cos > 0:
                terms["loss_cos"] = hidden_cosine(student_out.hidden_states[-1], teacher_out.hidden_states[-1],
                                                  batch["attention_mask"])  # (B, T, H) each
            loss = weighted_sum(terms, weights)
            loss.backward()
            return {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}}

        return scope.run("student_train", forward_backward)

    plan = TrainingPlan(model=student, source=student_loaded.source, tokenizer=tokenizer,
                        loader=train_loader(ctx, cfg, train_split, tokenizer), step=step,
                        analytic_flops_per_token=6.0 * count_nonembedding_params(student)
                        + 2.0 * count_nonembedding_params(teacher), num_train_examples=len(train_split))
    summary = train_plan(ctx, cfg, window, plan)
    publish_plan(ctx, cfg, window, plan, summary, cfg.role, {
        "objective": cfg.objective, "teacher_model": teacher_loaded.source,
        "teacher_num_params": count_params(teacher), "student_num_params": count_params(student),
        "student_num_layers": student.config.num_hidden_layers, "teacher_num_layers": teacher.config.num_hidden_layers,
        "temperature": cfg.temperature, "alpha_ce": cfg.alpha_ce, "alpha_task": cfg.alpha_task,
        "alpha_cos": cfg.alpha_cos,
    })
