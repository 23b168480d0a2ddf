"""The stages: one module per kind, each a `Runner` (see `stages.context` for the contract)."""

from greendistil.stages.benchmark import run_benchmark
from greendistil.stages.context import OpenWindow, Runner, StageContext
from greendistil.stages.distill import run_distill
from greendistil.stages.evaluate import run_evaluate
from greendistil.stages.finetune import run_finetune
from greendistil.stages.pretrain import run_pretrain

RUNNERS: dict[str, Runner] = {
    "pretrain": run_pretrain, "finetune": run_finetune, "distill": run_distill, "evaluate": run_evaluate,
    "benchmark": run_benchmark,
}

__all__ = ["RUNNERS", "OpenWindow", "Runner", "StageContext"]
