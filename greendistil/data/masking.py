"""Dynamic masking for masked-language modelling, drawn anew for every batch.

Of the real tokens (not special, not padding) each is chosen with probability `mlm_probability`; of the
chosen, `mask_replace_prob` become [MASK], `random_replace_prob` a random non-special token, and the rest
stay as they are (BERT's 80/10/10). Labels hold the original id at chosen positions and -100 elsewhere,
the value `cross_entropy(ignore_index=-100)` skips. With whole-word masking the choice is made per word,
and every piece of a chosen word is chosen with it. Randomness comes only from the `torch.Generator`
passed in, so a seeded generator gives the same masks every time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from greendistil.errors import ModelSourceError

if TYPE_CHECKING:  # the config table is only a type here: data/ sits below config/
    from greendistil.config.corpus import MaskingSection

IGNORE_INDEX = -100
WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE (RoBERTa, GPT-2) and SentencePiece mark the start of a word
CONTINUATION_PREFIX = "##"  # WordPiece (BERT) marks the pieces that continue a word


@dataclass(frozen=True, kw_only=True, eq=False)
class Masker:
    """What masking needs to know about a tokenizer, as tensors on one device."""

    mask_token_id: int
    special_ids: torch.Tensor  # (K,) ids never chosen: [CLS], [SEP], [PAD], ...
    replacement_ids: torch.Tensor  # (V',) ids a random replacement draws from: every non-special id
    continues_word: torch.Tensor | None  # (V,) bool: the token continues the previous word; None = token-level
    mlm_probability: float
    mask_replace_prob: float
    random_replace_prob: float

    def to(self, device: torch.device | str) -> Masker:
        """The same masker with its tensors on `device` (the batch's)."""
        return replace(self, special_ids=self.special_ids.to(device), replacement_ids=self.replacement_ids.to(device),
                       continues_word=None if self.continues_word is None else self.continues_word.to(device))


def build_masker(tokenizer, cfg: MaskingSection) -> Masker:
    """A `Masker` for `tokenizer`; raises ModelSourceError when it has no mask token, or, for whole-word
    masking, no way to tell word pieces apart."""
    if tokenizer.mask_token_id is None:
        raise ModelSourceError(f"the tokenizer {type(tokenizer).__name__} has no mask token; masked-language "
                               "modelling needs one (BERT-family tokenizers have [MASK])")
    vocab_size = len(tokenizer)
    special = sorted(set(tokenizer.all_special_ids))
    is_special = torch.zeros(vocab_size, dtype=torch.bool)
    is_special[special] = True
    return Masker(
        mask_token_id=int(tokenizer.mask_token_id), special_ids=torch.tensor(special, dtype=torch.long),
        replacement_ids=torch.nonzero(~is_special).view(-1),
        continues_word=word_continuation_table(tokenizer) if cfg.whole_word_mask else None,
        mlm_probability=cfg.mlm_probability, mask_replace_prob=cfg.mask_replace_prob,
        random_replace_prob=cfg.random_replace_prob,
    )


def word_continuation_table(tokenizer) -> torch.Tensor:
    """(V,) bool: True for the tokens that continue the word before them.

    WordPiece marks continuations with '##'; byte-level BPE and SentencePiece mark word starts instead
    ('Ġ', '▁'), so there a token without the marker continues a word.
    """
    vocab = tokenizer.get_vocab()  # token -> id
    table = torch.zeros(len(tokenizer), dtype=torch.bool)
    if any(token.startswith(CONTINUATION_PREFIX) and len(token) > 2 for token in vocab):
        for token, index in vocab.items():
            table[index] = token.startswith(CONTINUATION_PREFIX) and len(token) > 2
        return table
    if any(token.startswith(WORD_START_MARKERS) for token in vocab):
        special = set(tokenizer.all_special_ids)
        for token, index in vocab.items():
            table[index] = not token.startswith(WORD_START_MARKERS) and index not in special
        return table
    raise ModelSourceError(f"masking.whole_word_mask: cannot find word boundaries in the vocabulary of "
                           f"{type(tokenizer).__name__} (neither '##' pieces nor 'Ġ'/'▁' word starts); "
                           "set masking.whole_word_mask = false")


def mask_tokens(masker: Masker, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch. input_ids, attention_mask: (B, T) on the masker's and the generator's device.

    Returns (masked input ids (B, T), labels (B, T) with -100 at positions not chosen).
    """
    eligible = attention_mask.bool() & ~torch.isin(input_ids, masker.special_ids)  # (B, T)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T)
    if masker.continues_word is None:
        chosen = eligible & (draw < masker.mlm_probability)
    else:
        chosen = _whole_word_choice(masker, input_ids, eligible, draw)
    split = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T): 80/10/10
    to_mask = chosen & (split < masker.mask_replace_prob)
    to_random = chosen & ~to_mask & (split < masker.mask_replace_prob + masker.random_replace_prob)
    picks = torch.randint(len(masker.replacement_ids), input_ids.shape, generator=generator,
                          device=input_ids.device)  # (B, T)
    masked = torch.where(to_mask, torch.full_like(input_ids, masker.mask_token_id), input_ids)
    masked = torch.where(to_random, masker.replacement_ids[picks], masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def _whole_word_choice(masker: Masker, input_ids: torch.Tensor, eligible: torch.Tensor,
                       draw: torch.Tensor) -> torch.Tensor:
    """Choose words by the draw at their first piece; every piece of a chosen word is chosen."""
    assert masker.continues_word is not None
    previous_eligible = torch.nn.functional.pad(eligible[:, :-1], (1, 0), value=False)  # (B, T)
    # A piece that follows no real token (after [CLS], or cut off by packing) starts a word of its own.
    starts = eligible & (~masker.continues_word[input_ids] | ~previous_eligible)  # (B, T)
    word_index = torch.cumsum(starts.long(), dim=1) - 1  # (B, T): the word each position belongs to
    num_positions = input_ids.shape[1]
    chosen_start = starts & (draw < masker.mlm_probability)
    # Each word's flag sits at its index; positions that start no word write False into a spare column.
    target = torch.where(starts, word_index, torch.full_like(word_index, num_positions))
    word_chosen = torch.zeros(input_ids.shape[0], num_positions + 1, dtype=torch.bool, device=input_ids.device)
    word_chosen.scatter_(1, target, chosen_start)
    return eligible & word_chosen.gather(1, word_index.clamp(min=0))
