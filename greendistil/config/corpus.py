"""Config tables of masked-language-model training: `[corpus]` (the text) and `[masking]` (how it is masked).

Both are read only by the MLM stages (`pretrain`, and `distill` with `objective = "mlm"`); a run without
them ignores the tables. Defaults follow BERT (Devlin et al. 2019): 15% of the tokens chosen, of which 80%
become [MASK], 10% a random token and 10% stay unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from greendistil.config.types import require
from greendistil.data.tasks import get_task
from greendistil.errors import ConfigError

CorpusSource = Literal["files", "glue", "hub"]


@dataclass(frozen=True, kw_only=True)
class CorpusSection:
    """The text corpus of the MLM stages: local files, GLUE training sentences, or a `datasets` corpus.

    One line is one document or sentence. Blank lines and exact duplicates are dropped; the lines are
    shuffled with `seed`, the first `heldout_examples` are held out (MLM loss and accuracy before and after
    training), and the training lines are then capped by `max_examples` and `max_tokens`.
    """

    source: CorpusSource = "glue"
    paths: tuple[str, ...] = ()  # files: text files, folders (their *.txt files, recursively) or glob patterns
    glue_tasks: tuple[str, ...] = ("sst2",)  # glue: these tasks' train sentences (both sentences of pair tasks)
    glue_dir: str | None = None  # glue: the GLUE folder; default task.glue_dir, then $GLUE_DIR, then the hub
    hub_dataset: str = "wikitext"  # hub: a `datasets` name
    hub_config: str | None = "wikitext-103-raw-v1"
    hub_split: str = "train"
    text_column: str = "text"
    max_examples: int | None = None  # training lines kept (a seeded random subset); None = all
    max_tokens: int | None = None  # training tokens kept (whole lines, after tokenization); None = all
    heldout_examples: int = 500  # lines held out for the before/after MLM evaluation
    max_seq_length: int = 128
    pack: bool = False  # false: one sequence per line, batched by length; true: lines concatenated into full blocks
    seed: int = 0  # the held-out slice and the subsets; fixed apart from run.seed so runs share one held-out slice

    def __post_init__(self) -> None:
        if self.source == "files":
            require(len(self.paths) > 0, "paths", list(self.paths),
                    "a non-empty list of text files, folders or glob patterns when source = 'files'")
        if self.source == "glue":
            require(len(self.glue_tasks) > 0, "glue_tasks", list(self.glue_tasks),
                    "a non-empty list of GLUE task names, e.g. ['sst2', 'rte', 'stsb']")
            for name in self.glue_tasks:
                try:
                    get_task(name)
                except ConfigError as err:  # it names task.name; the key here is glue_tasks
                    raise ConfigError(str(err).replace("task.name:", "glue_tasks:", 1)) from None
        if self.source == "hub":
            require(bool(self.hub_dataset.strip()), "hub_dataset", self.hub_dataset, "a `datasets` name such as 'wikitext'")
            require(bool(self.text_column.strip()), "text_column", self.text_column, "the dataset's text column")
        for key in ("max_examples", "max_tokens"):
            value = getattr(self, key)
            if value is not None:
                require(value > 0, key, value, "> 0, or leave unset for the whole corpus")
        require(self.heldout_examples >= 1, "heldout_examples", self.heldout_examples,
                ">= 1 (the MLM loss and accuracy before and after training are measured on them)")
        require(8 <= self.max_seq_length <= 512, "max_seq_length", self.max_seq_length, "8..512")


@dataclass(frozen=True, kw_only=True)
class MaskingSection:
    """Dynamic masking, drawn anew for every batch (RoBERTa's dynamic masking; BERT masked once, statically)."""

    mlm_probability: float = 0.15  # share of real (non-special, non-padding) tokens chosen for prediction
    mask_replace_prob: float = 0.8  # of the chosen: replaced by [MASK]
    random_replace_prob: float = 0.1  # of the chosen: replaced by a random token; the rest stay unchanged
    whole_word_mask: bool = False  # choose whole words: all word pieces of a chosen word are chosen together

    def __post_init__(self) -> None:
        require(0 < self.mlm_probability < 1, "mlm_probability", self.mlm_probability, "0 < x < 1, typically 0.15")
        require(0 <= self.mask_replace_prob <= 1, "mask_replace_prob", self.mask_replace_prob, "0 <= x <= 1")
        require(0 <= self.random_replace_prob <= 1, "random_replace_prob", self.random_replace_prob, "0 <= x <= 1")
        require(self.mask_replace_prob + self.random_replace_prob <= 1, "random_replace_prob",
                self.random_replace_prob,
                f"<= 1 - mask_replace_prob ({1 - self.mask_replace_prob:g}): the two shares of the chosen tokens "
                "cannot exceed 1")
