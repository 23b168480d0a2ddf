"""FLOP counting: exact counts for nn.Linear, a tiny BERT against 2*N*T, the sampler's schedule and math."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

from greendistil.measure.flops import FlopSampler, analytic_flops, count_flops, count_nonembedding_params


def test_linear_forward_and_training_step_are_exact() -> None:
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8)  # no grad for the input: the backward computes only the weight's gradient
    out, flops = count_flops(lambda: layer(x))
    assert out.shape == (5, 4)
    assert flops == 2 * 5 * 8 * 4

    _, flops = count_flops(lambda: layer(x).sum().backward())
    assert flops == 2 * (2 * 5 * 8 * 4)  # forward + grad_weight matmul


def test_tiny_bert_forward_matches_two_n_t_plus_attention() -> None:
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
        attn_implementation="eager",  # CPU sdpa (flash-for-cpu) has no FLOP formula in torch's counter
    )
    torch.manual_seed(0)
    model = BertModel(config).eval()
    batch, seq_len = 2, 16
    ids = torch.randint(0, 100, (batch, seq_len))
    with torch.no_grad():
        _, flops = count_flops(lambda: model(input_ids=ids))
    n = count_nonembedding_params(model)
    assert n == 2 * (4 * (32 * 32 + 32) + 2 * 64 + (32 * 64 + 64) + (64 * 32 + 32)) + (32 * 32 + 32) + 64
    # QK^T and AV per layer: 2 matmuls x 2*B*S*S*H
    attention = config.num_hidden_layers * 2 * 2 * batch * seq_len * seq_len * config.hidden_size
    expected = analytic_flops(num_nonembedding_params=n, num_tokens=batch * seq_len, training=False) + attention
    assert flops == pytest.approx(expected, rel=0.15)


def test_nonembedding_params_exclude_tied_embeddings() -> None:
    embedding = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight  # tied, as a BERT MLM decoder
    model = torch.nn.Sequential(embedding, torch.nn.Linear(4, 4), head)
    assert count_nonembedding_params(model) == 4 * 4 + 4


def test_step_errors_propagate() -> None:
    def failing_step() -> None:
        raise RuntimeError("NaN loss")

    with pytest.raises(RuntimeError, match="NaN loss"):
        count_flops(failing_step)
    assert count_flops(lambda: 1) == (1, 0)  # the mode was left cleanly


def test_counter_bookkeeping_failure_keeps_result_and_reports_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: FlopCounterMode) -> int:
        raise KeyError("bookkeeping")

    monkeypatch.setattr(FlopCounterMode, "get_total_flops", broken)
    layer = torch.nn.Linear(2, 2)
    out, flops = count_flops(lambda: layer(torch.ones(1, 2)))
    assert out.shape == (1, 2) and flops == 0


def test_sampler_schedule() -> None:
    sampler = FlopSampler(sample_steps=3, sample_every=200)
    assert [s for s in range(1001) if sampler.should_count(s)] == [0, 1, 2, 200, 400, 600, 800, 1000]
    every = FlopSampler(sample_steps=0, sample_every=1)
    assert all(every.should_count(s) for s in range(10))
    with pytest.raises(ValueError):
        FlopSampler(sample_every=0)


@pytest.mark.parametrize(("num_steps", "leading"), [(None, 3), (10, 1), (63, 1), (199, 1), (200, 2), (300, 3),
                                                    (5000, 3)])
def test_a_short_stage_counts_fewer_leading_steps(num_steps: int | None, leading: int) -> None:
    sampler = FlopSampler(sample_steps=3, sample_every=200, num_steps=num_steps)
    counted = [s for s in range(num_steps or 1000) if sampler.should_count(s)]
    assert counted[:leading] == list(range(leading)) and leading not in counted
    every = FlopSampler(sample_steps=3, sample_every=1, num_steps=63)  # asked for every step: every step
    assert all(every.should_count(s) for s in range(63))


def test_sampler_extrapolates_by_padded_tokens_per_component() -> None:
    sampler = FlopSampler(sample_steps=2, sample_every=100)
    for step in range(10):
        tokens = 64 if step % 2 == 0 else 32
        if sampler.should_count(step):
            sampler.add_counted("teacher_forward", 1000 * tokens, tokens)
            sampler.add_counted("student_train", 30 * tokens, tokens)
        else:
            sampler.add_uncounted("teacher_forward", tokens)
            sampler.add_uncounted("student_train", tokens)
    total_tokens = 5 * 64 + 5 * 32
    assert sampler.by_component() == {"teacher_forward": 1000 * total_tokens, "student_train": 30 * total_tokens}
    assert sampler.total_flops() == 1030 * total_tokens
    assert sampler.num_counted_steps == 2 and sampler.num_steps == 10
    assert sampler.source() == "counted:torch-flop-counter(2/10 steps sampled, extrapolated by padded tokens)"


def test_sampler_sources_for_all_counted_none_and_missing() -> None:
    sampler = FlopSampler()
    assert sampler.total_flops() is None and sampler.source() == "unavailable:no-steps"
    for _ in range(3):
        sampler.add_counted("student_train", 600, 10)
    assert sampler.total_flops() == 1800
    assert sampler.source() == "counted:torch-flop-counter(all 3 steps)"
    sampler.add_uncounted("teacher_forward", 10)  # a component never counted: no rate to extrapolate by
    assert sampler.total_flops() is None
    assert sampler.source() == "unavailable:no-counted-step(teacher_forward)"


def test_sampler_treats_a_zero_count_as_uncounted() -> None:
    sampler = FlopSampler()
    sampler.add_counted("student_train", 600, 10)
    sampler.add_counted("student_train", 0, 10)  # count_flops' bookkeeping failed
    assert sampler.total_flops() == 1200
    assert "1 counts failed" in sampler.source()


def test_analytic_flops() -> None:
    assert analytic_flops(num_nonembedding_params=10_000_000, num_tokens=1000, training=True) == 6 * 10**10
    assert analytic_flops(num_nonembedding_params=10_000_000, num_tokens=1000, training=False) == 2 * 10**10


def test_cpu_sdpa_attention_is_counted_like_eager_attention() -> None:
    """torch has no formula for the CPU flash-attention kernel; greendistil registers one."""
    from transformers import BertConfig, BertModel

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    ids = torch.randint(0, 100, (4, 16))
    counts = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = BertModel(BertConfig(**sizes, attn_implementation=impl))
        _, forward = count_flops(lambda: model(input_ids=ids))
        _, train = count_flops(lambda: model(input_ids=ids).last_hidden_state.sum().backward())
        counts[impl] = (forward, train)
    assert counts["sdpa"] == counts["eager"]
    assert counts["sdpa"][1] > 2 * counts["sdpa"][0]  # backward ~ 2x forward
