"""Tokenize GLUE examples once, then batch them with dynamic padding.

Sequences are stored unpadded; `collate` pads each batch only to its own longest sequence. Most GLUE
sentences are far shorter than `max_seq_length`, so this (and `group_by_length`, which puts sequences of
similar length in the same batch) saves most of the compute, and energy, that padding would waste.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from greendistil.data.glue import GlueExamples
from greendistil.errors import ConfigError

logger = logging.getLogger(__name__)

# Sequences are sorted by length within windows of this many batches: wide enough to group lengths well,
# narrow enough that batches still mix examples from across the split (the Hugging Face Trainer uses 50).
MEGA_BATCH_FACTOR = 50

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, token_type_ids (B, T); labels (B,)


@dataclass(frozen=True, kw_only=True, eq=False)  # eq=False: comparing tensors field-wise is ambiguous
class EncodedSplit:
    """Token ids of one split, unpadded, with labels (long for classification, float32 for regression)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: torch.Tensor  # (N,)

    def __post_init__(self) -> None:
        if not len(self.input_ids) == len(self.token_type_ids) == len(self.labels):
            raise ValueError(f"EncodedSplit: {len(self.input_ids)} input_ids, {len(self.token_type_ids)} "
                             f"token_type_ids and {len(self.labels)} labels; they must be equal")

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[index], "token_type_ids": self.token_type_ids[index],
                "labels": self.labels[index], "example_index": index}

    @property
    def lengths(self) -> list[int]:
        """Unpadded length of each sequence, special tokens included."""
        return [len(ids) for ids in self.input_ids]

    @property
    def num_tokens(self) -> int:
        """Total unpadded tokens: the work one pass over the split really needs."""
        return sum(len(ids) for ids in self.input_ids)


def encode(examples: GlueExamples, tokenizer: Any, max_seq_length: int) -> EncodedSplit:
    """Tokenize all examples in one batched call (sentence pairs when the task has two texts), truncating
    to `max_seq_length` tokens and without padding."""
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 4:
        raise ConfigError(f"max_seq_length: {max_seq_length!r} is too small or not an integer; use at "
                          "least 4 (room for [CLS] a [SEP] b [SEP]), typically 128")
    if len(examples) == 0:
        input_ids: list[list[int]] = []
        token_type_ids: list[list[int]] = []
    else:
        text_b = list(examples.text_b) if examples.text_b is not None else None
        encoded = tokenizer(
            list(examples.text_a), text_b, truncation=True, max_length=max_seq_length, padding=False,
            return_token_type_ids=True, return_attention_mask=False,
        )
        input_ids = [list(ids) for ids in encoded["input_ids"]]
        token_type_ids = [list(ids) for ids in encoded["token_type_ids"]]
    dtype = torch.float32 if examples.task.is_regression else torch.long
    split = EncodedSplit(input_ids=input_ids, token_type_ids=token_type_ids,
                         labels=torch.tensor(list(examples.labels), dtype=dtype))
    num_truncated = sum(1 for length in split.lengths if length >= max_seq_length)
    logger.info("encoded %d %s/%s examples: %d tokens, %d at max_seq_length=%d", len(split),
                examples.task.name, examples.split, split.num_tokens, num_truncated, max_seq_length)
    return split


EXAMPLE_INDEX = "example_index"  # (B,) the rows' positions in their split; stays on the CPU (CPU_ONLY_KEYS)
CPU_ONLY_KEYS = frozenset({EXAMPLE_INDEX})  # batch entries the training loop does not copy to the device


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """The row indices of evaluation batches: rows sorted by length (stable), cut into `batch_size` runs, so
    that each batch wastes little compute on padding. Under DDP a rank takes every W-th of them."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(features: Sequence[Mapping[str, Any]], pad_token_id: int) -> Batch:
    """Pad a list of features (`input_ids`, `token_type_ids`, `labels`) to the batch's longest sequence.

    Returns input_ids, attention_mask and token_type_ids as (B, T) long tensors, and labels (B,).
    """
    if not features:
        raise ValueError("collate: got an empty batch")
    batch_size = len(features)
    max_length = max(len(feature["input_ids"]) for feature in features)
    input_ids = torch.full((batch_size, max_length), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((batch_size, max_length), dtype=torch.long)  # (B, T)
    token_type_ids = torch.zeros((batch_size, max_length), dtype=torch.long)  # (B, T)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
        token_type_ids[row, :length] = torch.as_tensor(feature["token_type_ids"], dtype=torch.long)
        attention_mask[row, :length] = 1
    labels = torch.stack([torch.as_tensor(feature["labels"]) for feature in features])  # (B,)
    if labels.is_floating_point():
        labels = labels.to(torch.float32)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
             "labels": labels}
    if all("example_index" in feature for feature in features):  # which examples: a teacher cache's key
        batch[EXAMPLE_INDEX] = torch.tensor([feature["example_index"] for feature in features], dtype=torch.long)
    return batch


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches of similar-length sequences.

    Each epoch: shuffle all indices (seeded by `seed` and the epoch), cut them into mega-batches of
    `MEGA_BATCH_FACTOR * batch_size`, sort each mega-batch by length (longest first) and cut it into
    batches, then shuffle the batch order. Every index appears exactly once per epoch.

    The epoch advances by one after each full iteration; `set_epoch` sets it explicitly (for resuming).
    """

    def __init__(self, lengths: Sequence[int], *, batch_size: int, seed: int) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch` for the next iteration (as `DistributedSampler.set_epoch`)."""
        self.epoch = epoch

    def __len__(self) -> int:
        # Mega-batches are whole multiples of batch_size, so only the last batch can be short.
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of `epoch`, in the order they will be yielded."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        mega_batch_size = MEGA_BATCH_FACTOR * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), mega_batch_size):
            mega = order[start:start + mega_batch_size]
            mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
            batches.extend(mega[i:i + self.batch_size].tolist() for i in range(0, len(mega), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        yield from batches


class ShardedBatchSampler(Sampler[list[int]]):
    """One rank's share of each global batch, for DistributedDataParallel.

    Every rank draws the same global batches (the same sampler with the same seed, reseeded per epoch
    through `set_epoch` like torch's `DistributedSampler`) and rank r keeps rows r, r + W, r + 2W, ... of
    each. Unlike `DistributedSampler`, which shards examples and pads with repeated ones, this keeps the
    single-process recipe: the same global batches, the same number of optimizer steps, and every example
    seen exactly once per epoch. A global batch too small to give each of the W ranks a row (only ever the
    one short batch of an epoch) is merged into the batch before it, since DDP needs every rank in every step.
    """

    def __init__(self, batches: Sampler[list[int]], *, num_examples: int, batch_size: int, rank: int,
                 world_size: int) -> None:
        if num_examples < world_size:
            raise ConfigError(f"{num_examples} training example(s) cannot be shared by {world_size} DDP ranks; "
                              "use fewer processes (--nproc-per-node) or more data")
        if batch_size < world_size:
            raise ConfigError(f"batch_size: {batch_size} is smaller than the {world_size} DDP ranks it is split "
                              f"over; use a batch_size of at least {world_size}")
        self.batches, self.rank, self.world_size = batches, rank, world_size
        tail = num_examples % batch_size
        self._num_merged = 1 if 0 < tail < world_size and len(batches) > 1 else 0  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Draw `epoch`'s global batches next (the same on every rank)."""
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches) - self._num_merged  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        merged: list[list[int]] = []
        for batch in self.batches:
            if merged and (len(batch) < self.world_size or len(merged[-1]) < self.world_size):
                merged[-1] = merged[-1] + list(batch)
            else:
                merged.append(list(batch))
        for batch in merged:
            yield batch[self.rank::self.world_size]


@dataclass(frozen=True, kw_only=True)
class PlannedSteps:
    """The shapes of a training stage's steps, known before it starts: per step, the rows (examples), the
    real tokens and the padded tokens (rows x the batch's longest sequence: what the model computes on)."""

    rows: list[int]
    tokens: list[int]
    padded_tokens: list[int]

    def __len__(self) -> int:
        return len(self.rows)


def planned_steps(loader: DataLoader, num_steps: int) -> PlannedSteps | None:
    """The shapes of a training loader's first `num_steps` batches, epoch after epoch, as training will
    draw them; the loader's state is left as it was. None for a loader whose order cannot be replayed
    without drawing from it (an explicit sampler, DDP shards): the caller then knows only the step count."""
    split, batches = loader.dataset, loader.batch_sampler
    if not isinstance(split, EncodedSplit) or num_steps < 1:
        return None
    lengths = np.asarray(split.lengths, dtype=np.int64)
    drawn: list[list[int]] = []
    if isinstance(batches, LengthGroupedBatchSampler):
        epoch = 0
        while len(drawn) < num_steps:
            drawn += batches.batches(epoch)
            epoch += 1
    elif isinstance(batches, BatchSampler) and isinstance(loader.generator, torch.Generator):
        saved = loader.generator.get_state()
        try:  # an epoch's iterator draws its base seed from the generator, then the sampler its permutation
            while len(drawn) < num_steps:
                epoch_batches = getattr(iter(loader), "_sampler_iter", None)
                if epoch_batches is None:  # a torch whose iterator hides its index sampler
                    return None
                drawn += list(epoch_batches)
        finally:
            loader.generator.set_state(saved)
    else:
        return None
    shapes = [lengths[batch] for batch in drawn[:num_steps]]
    return PlannedSteps(rows=[len(b) for b in shapes], tokens=[int(b.sum()) for b in shapes],
                        padded_tokens=[len(b) * int(b.max()) for b in shapes])


def make_loader(
    split: EncodedSplit,
    *,
    batch_size: int,
    pad_token_id: int,
    shuffle: bool,
    seed: int,
    group_by_length: bool = False,
    sampler: Sampler[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of padded batches (see `collate`), in the main process.

    - `sampler` given (e.g. a DistributedSampler): it alone decides the order; `shuffle` and
      `group_by_length` are ignored.
    - `shuffle=True, group_by_length=True`: a seeded `LengthGroupedBatchSampler`, reachable as
      `loader.batch_sampler` (call its `set_epoch` to resume an epoch's order).
    - `shuffle=True`: a random order from a `torch.Generator` seeded with `seed`, new each epoch.
    - `shuffle=False` (evaluation): the split's order, so predictions line up with labels;
      `group_by_length` is ignored.
    - `world_size > 1` (training under DDP, `shuffle=True`): each global batch of the above is shared
      among the ranks by a `ShardedBatchSampler`; this process gets rank `rank`'s rows.
    - `pin_memory=True` (training on a GPU): batches in page-locked memory, so that the loop's
      `.to(device, non_blocking=True)` really overlaps the copy with compute.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: {batch_size!r} is not valid; use a positive integer")
    if not isinstance(pad_token_id, int):
        raise ConfigError(f"pad_token_id: {pad_token_id!r} is not an integer; the tokenizer needs a pad token")
    collate_fn = functools.partial(collate, pad_token_id=pad_token_id)
    pinned = {"pin_memory": pin_memory, "num_workers": 0}
    if sampler is not None:
        if group_by_length:
            logger.warning("group_by_length is ignored: an explicit sampler decides the order")
        return DataLoader(split, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, **pinned)
    if shuffle and world_size > 1:
        return _sharded_loader(split, batch_size=batch_size, seed=seed, group_by_length=group_by_length,
                               rank=rank, world_size=world_size, collate_fn=collate_fn, pinned=pinned)
    if shuffle and group_by_length:
        batch_sampler = LengthGroupedBatchSampler(split.lengths, batch_size=batch_size, seed=seed)
        return DataLoader(split, batch_sampler=batch_sampler, collate_fn=collate_fn, **pinned)
    if group_by_length:
        logger.debug("group_by_length is ignored for an unshuffled loader: evaluation keeps the split order")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_fn, **pinned)


def _sharded_loader(split: EncodedSplit, *, batch_size: int, seed: int, group_by_length: bool, rank: int,
                    world_size: int, collate_fn: Any, pinned: dict[str, Any]) -> DataLoader:
    """The single-process loader's global batches, this rank's rows of each (see ShardedBatchSampler)."""
    generator: torch.Generator | None = None
    if group_by_length:
        batches: Sampler[list[int]] = LengthGroupedBatchSampler(split.lengths, batch_size=batch_size, seed=seed)
    else:
        # Equal seeds give every rank the same permutation; `loader.generator` lets a resume restore it.
        generator = torch.Generator().manual_seed(seed)
        batches = BatchSampler(RandomSampler(split, generator=generator), batch_size, drop_last=False)
    sharded = ShardedBatchSampler(batches, num_examples=len(split), batch_size=batch_size, rank=rank,
                                  world_size=world_size)
    return DataLoader(split, batch_sampler=sharded, collate_fn=collate_fn, generator=generator, **pinned)
