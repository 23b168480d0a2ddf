"""The text corpus of masked-language-model training: read, de-duplicated, split, tokenized.

Three sources, one line = one document or sentence:
- `files`: text files, folders (their `*.txt` files) or glob patterns;
- `glue`: the train sentences of GLUE tasks (both sentences of a pair task), read with `data.glue`
  (the dev sentences never enter the corpus: the tasks are evaluated on them);
- `hub`: a `datasets` corpus such as wikitext-103, where a hub is reachable.

`load_corpus_text` reads and splits the lines before anything is written (a bad path fails the run's
preflight); `encode_corpus` tokenizes them once a stage knows its tokenizer. Sequences are either one per
line (batched by similar length, see `data.batching`) or packed into full `max_seq_length` blocks.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from greendistil.data.batching import EncodedSplit
from greendistil.data.tasks import get_task
from greendistil.data.glue import load_glue
from greendistil.errors import DataError

if TYPE_CHECKING:  # the config table is only a type here: data/ sits below config/
    from greendistil.config.corpus import CorpusSection

logger = logging.getLogger(__name__)

GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True, kw_only=True)
class CorpusText:
    """The corpus lines after de-duplication, shuffling and the held-out split; not yet tokenized."""

    train_lines: tuple[str, ...]
    heldout_lines: tuple[str, ...]
    source: str  # where the lines came from, for the record
    num_lines_read: int  # non-blank lines read, duplicates included
    num_duplicates_dropped: int
    num_capped_by_max_examples: int  # training lines left out by corpus.max_examples


@dataclass(frozen=True, kw_only=True, eq=False)
class EncodedCorpus:
    """Token ids of the training and held-out sequences, and what the record says about them."""

    train: EncodedSplit
    heldout: EncodedSplit
    details: dict[str, Any]


def load_corpus_text(cfg: CorpusSection, *, default_glue_dir: str | None = None) -> CorpusText:
    """Read the configured corpus and split off the held-out lines. Raises DataError (bad paths, empty
    corpus, too few lines for the held-out slice) or ConfigError."""
    if cfg.source == "files":
        lines, source = _read_files(cfg.paths)
    elif cfg.source == "glue":
        lines, source = _read_glue(cfg.glue_tasks, cfg.glue_dir or default_glue_dir)
    else:
        lines, source = _read_hub(cfg)
    unique = list(dict.fromkeys(line for line in lines))
    if not unique:
        raise DataError(f"corpus: no text in {source}; give files with one document or sentence per line")
    if len(unique) <= cfg.heldout_examples:
        raise DataError(f"corpus.heldout_examples: {cfg.heldout_examples} held-out lines leave no training line; "
                        f"the corpus ({source}) has {len(unique)} distinct lines: set heldout_examples below "
                        f"{len(unique)} or give a larger corpus")
    order = np.random.default_rng(cfg.seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    heldout, train = shuffled[:cfg.heldout_examples], shuffled[cfg.heldout_examples:]
    kept = train if cfg.max_examples is None else train[:cfg.max_examples]
    logger.info("corpus %s: %d lines (%d duplicates dropped), %d train, %d held out", source, len(lines),
                len(lines) - len(unique), len(kept), len(heldout))
    return CorpusText(train_lines=tuple(kept), heldout_lines=tuple(heldout), source=source,
                      num_lines_read=len(lines), num_duplicates_dropped=len(lines) - len(unique),
                      num_capped_by_max_examples=len(train) - len(kept))


def encode_corpus(text: CorpusText, tokenizer, cfg: CorpusSection) -> EncodedCorpus:
    """Tokenize the training and held-out lines (one sequence per line, or packed blocks) and apply
    `max_tokens` to the training sequences (whole sequences are kept)."""
    encode = _pack if cfg.pack else _per_line
    train_ids, heldout_ids = encode(text.train_lines, tokenizer, cfg.max_seq_length), \
        encode(text.heldout_lines, tokenizer, cfg.max_seq_length)
    num_before_cap = len(train_ids)
    if cfg.max_tokens is not None:
        lengths = np.cumsum([len(ids) for ids in train_ids])
        train_ids = train_ids[:max(1, int(np.searchsorted(lengths, cfg.max_tokens, side="right")))]
    train, heldout = _split(train_ids), _split(heldout_ids)
    details = {
        "source": text.source, "pack": cfg.pack, "max_seq_length": cfg.max_seq_length,
        "num_lines_read": text.num_lines_read, "num_duplicates_dropped": text.num_duplicates_dropped,
        "num_train_lines": len(text.train_lines), "num_heldout_lines": len(text.heldout_lines),
        "num_train_sequences": len(train), "num_train_tokens": train.num_tokens,
        "num_heldout_sequences": len(heldout), "num_heldout_tokens": heldout.num_tokens,
        "num_at_max_seq_length": sum(1 for n in train.lengths if n >= cfg.max_seq_length),
        "capped": {"max_examples": cfg.max_examples, "lines_left_out": text.num_capped_by_max_examples,
                   "max_tokens": cfg.max_tokens, "sequences_left_out": num_before_cap - len(train)},
    }
    return EncodedCorpus(train=train, heldout=heldout, details=details)


def _split(input_ids: list[list[int]]) -> EncodedSplit:
    # Labels are made per batch by masking; the split's own labels are unused placeholders.
    return EncodedSplit(input_ids=input_ids, token_type_ids=[[0] * len(ids) for ids in input_ids],
                        labels=torch.zeros(len(input_ids), dtype=torch.long))


def _per_line(lines: tuple[str, ...], tokenizer, max_seq_length: int) -> list[list[int]]:
    if not lines:
        return []
    encoded = tokenizer(list(lines), truncation=True, max_length=max_seq_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _pack(lines: tuple[str, ...], tokenizer, max_seq_length: int) -> list[list[int]]:
    """Lines joined by [SEP] into one stream, cut into blocks of `max_seq_length` with [CLS] ... [SEP]."""
    if not lines:
        return []
    pieces = tokenizer(list(lines), add_special_tokens=False, return_attention_mask=False,
                       return_token_type_ids=False)["input_ids"]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise DataError(f"corpus.pack: the tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP] tokens to "
                        "frame packed blocks; set corpus.pack = false")
    stream = [token for ids in pieces for token in [*ids, sep_id]]
    body = max_seq_length - 2
    return [[cls_id, *stream[start:start + body], sep_id] for start in range(0, len(stream), body)]


def _read_files(paths: tuple[str, ...]) -> tuple[list[str], str]:
    files: list[Path] = []
    for pattern in paths:
        files += _expand(pattern)
    files = list(dict.fromkeys(files))
    lines: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"corpus.paths: {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        except OSError as err:
            raise DataError(f"corpus.paths: cannot read {str(path)!r} ({err.strerror or err})") from None
        lines += [line.strip() for line in text.splitlines() if line.strip()]
    shown = ", ".join(str(p) for p in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return lines, f"files:{shown}"


def _expand(pattern: str) -> list[Path]:
    """A file, a folder's *.txt files (recursively, sorted) or a glob's matching files (sorted)."""
    path = Path(pattern).expanduser()
    if GLOB_CHARACTERS & set(pattern):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"corpus.paths: the pattern {pattern!r} matches no file")
        return matches
    if path.is_dir():
        matches = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not matches:
            raise DataError(f"corpus.paths: the folder {pattern!r} holds no *.txt file; put text files there "
                            "(one document or sentence per line) or give a glob such as 'corpus/*.text'")
        return matches
    if path.is_file():
        return [path]
    raise DataError(f"corpus.paths: {pattern!r} does not exist; valid: a text file, a folder of *.txt files, "
                    "or a glob pattern such as 'corpus/*.txt'")


def _read_glue(task_names: tuple[str, ...], glue_dir: str | None) -> tuple[list[str], str]:
    lines: list[str] = []
    sources = []
    for name in task_names:
        examples = load_glue(get_task(name), "train", glue_dir=Path(glue_dir) if glue_dir else None)
        for texts in (examples.text_a, examples.text_b or ()):
            lines += [text.strip() for text in texts if text.strip()]
        sources.append(examples.source)
    return lines, "glue:" + ", ".join(sources)


def _read_hub(cfg: CorpusSection) -> tuple[list[str], str]:
    name = "/".join(filter(None, [cfg.hub_dataset, cfg.hub_config, cfg.hub_split]))
    try:
        dataset = _fetch_hub_corpus(cfg.hub_dataset, cfg.hub_config, cfg.hub_split)
    except Exception as err:  # any hub, network or cache failure becomes one actionable DataError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"corpus: cannot load the hub dataset {name} ({type(err).__name__}: {first}); make the "
                        "hub reachable, or use corpus.source = 'files' or 'glue' offline") from None
    if cfg.text_column not in dataset.column_names:
        raise DataError(f"corpus.text_column: {cfg.text_column!r} is not a column of {name}; valid: "
                        f"{', '.join(dataset.column_names)}")
    lines = [str(text).strip() for text in dataset[cfg.text_column] if text and str(text).strip()]
    return lines, f"hub:{name}"


def _fetch_hub_corpus(dataset: str, config: str | None, split: str) -> Any:
    """Kept tiny so that tests can replace it."""
    import datasets  # slow to import: only when the hub is used

    return datasets.load_dataset(dataset, config, split=split)
