"""The training step never reads the device except at log intervals (on a GPU each read is a CPU-GPU sync
that leaves the GPU idle and bills the idle time to the stage). Counted on the CPU by patching the tensor
methods that copy a value to the host, while the real loop trains a tiny BERT.

greendistil's own code reads once per log interval. transformers (5.x) reads once per forward on its own:
its SDPA mask builder asks `padding_mask.all()` to skip an all-ones mask; that one is bounded here, not
removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from greendistil.config import FinetuneStage
from greendistil.data.batching import Batch, EncodedSplit, make_loader
from greendistil.measure.flops import FlopScope
from greendistil.measure.window import Window
from greendistil.train.loop import LossTerms, train
from greendistil.train.losses import task_loss

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")
PACKAGE_DIR = str(Path(__file__).resolve().parents[1] / "greendistil")
NUM_EXAMPLES, BATCH_SIZE = 64, 4  # 16 steps


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Who made each host read of a tensor's value, in order: 'greendistil' or 'library'."""
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _original: Any = original) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            reads.append("greendistil" if caller.startswith(PACKAGE_DIR) else "library")
            return _original(self, *args)
        monkeypatch.setattr(torch.Tensor, name, counted)
    yield reads


def tiny_run(log_every_steps: int, reads: list[str]) -> tuple[Window, dict[str, list[int]]]:
    """Train a 1-layer BERT for 16 steps; returns the window and, by who made them, the host reads of each
    step (from one step function call to the next: the step, its optimizer update and its logging)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 12, (NUM_EXAMPLES,), generator=generator).tolist()
    ids = [torch.randint(5, 50, (n,), generator=generator).tolist() for n in lengths]
    split = EncodedSplit(input_ids=ids, token_type_ids=[[0] * n for n in lengths],
                         labels=torch.tensor([i % 2 for i in range(NUM_EXAMPLES)]))
    loader = make_loader(split, batch_size=BATCH_SIZE, pad_token_id=0, shuffle=True, seed=0, group_by_length=True)
    cfg = FinetuneStage(batch_size=BATCH_SIZE, log_every_steps=log_every_steps, learning_rate=1e-3)
    per_step: list[int] = []

    def step(batch: Batch, scope: FlopScope) -> LossTerms:
        per_step.append(len(reads))
        def forward_backward() -> LossTerms:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = task_loss(logits, batch["labels"], False)
            loss.backward()
            return {"loss": loss.detach()}
        return scope.run("student_train", forward_backward)

    window = Window("finetune", "finetune", "student")
    reads.clear()
    train(cfg=cfg, model=model, loader=loader, step_fn=step, window=window, analytic_flops_per_token=1.0,
          show_progress=False)
    per_step.append(len(reads))
    return window, {who: [reads[a:b].count(who) for a, b in zip(per_step, per_step[1:])]
                    for who in ("greendistil", "library")}


def test_no_host_read_per_step_except_at_log_intervals(host_reads: list[str]) -> None:
    window, reads = tiny_run(log_every_steps=4, reads=host_reads)
    assert window.counters.num_steps == 16
    assert reads["greendistil"] == [0, 0, 0, 1] * 4  # the loss read after steps 4, 8, 12 and 16 only
    assert max(reads["library"]) <= 1  # transformers' padding-mask check, one per forward


def test_the_counter_sees_a_read_per_step(host_reads: list[str]) -> None:
    """The guard itself: logging every step reads the device every step, and the count says so."""
    _, reads = tiny_run(log_every_steps=1, reads=host_reads)
    assert reads["greendistil"] == [1] * 16
