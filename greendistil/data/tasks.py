"""The nine GLUE tasks: names in both data sources, text columns, labels and official metrics."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from greendistil.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class TsvLayout:
    """Where a task's texts and label sit in its original GLUE TSV files."""

    text_columns: tuple[str, ...]
    label_column: str
    # Column names for files without a header line (CoLA); None means the first line is the header.
    implicit_header: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class GlueTask:
    """One GLUE task: names in both sources, text columns, label names and official metrics."""

    name: str
    dir_name: str
    hub_config: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...]
    tsv: TsvLayout

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a similarity score in [0, 5]."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Number of model outputs: the class count, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def splits(self) -> tuple[str, ...]:
        """Labelled splits this task has: train and its dev split(s)."""
        return ("train", *self.dev_splits)


def _pair_layout(text_a: str, text_b: str, label: str) -> TsvLayout:
    return TsvLayout(text_columns=(text_a, text_b), label_column=label)


_BINARY = ("0", "1")  # label ids 0/1 as written in the TSVs; the hub's ClassLabels use the same order
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            name="cola", dir_name="CoLA", hub_config="cola", text_columns=("sentence",),
            label_names=_BINARY, metrics=("mcc",), dev_splits=("dev",),
            tsv=TsvLayout(text_columns=("sentence",), label_column="label",
                          implicit_header=("source", "label", "label_notes", "sentence")),
        ),
        GlueTask(
            name="sst2", dir_name="SST-2", hub_config="sst2", text_columns=("sentence",),
            label_names=_BINARY, metrics=("accuracy",), dev_splits=("dev",),
            tsv=TsvLayout(text_columns=("sentence",), label_column="label"),
        ),
        GlueTask(
            name="mrpc", dir_name="MRPC", hub_config="mrpc", text_columns=("sentence1", "sentence2"),
            label_names=_BINARY, metrics=("f1", "accuracy"), dev_splits=("dev",),
            tsv=_pair_layout("#1 String", "#2 String", "Quality"),
        ),
        GlueTask(
            name="qqp", dir_name="QQP", hub_config="qqp", text_columns=("question1", "question2"),
            label_names=_BINARY, metrics=("f1", "accuracy"), dev_splits=("dev",),
            tsv=_pair_layout("question1", "question2", "is_duplicate"),
        ),
        GlueTask(
            name="stsb", dir_name="STS-B", hub_config="stsb", text_columns=("sentence1", "sentence2"),
            label_names=None, metrics=("pearson", "spearman"), dev_splits=("dev",),
            tsv=_pair_layout("sentence1", "sentence2", "score"),
        ),
        GlueTask(
            name="mnli", dir_name="MNLI", hub_config="mnli", text_columns=("premise", "hypothesis"),
            label_names=("entailment", "neutral", "contradiction"), metrics=("accuracy",),
            dev_splits=("dev_matched", "dev_mismatched"),
            tsv=_pair_layout("sentence1", "sentence2", "gold_label"),
        ),
        GlueTask(
            name="qnli", dir_name="QNLI", hub_config="qnli", text_columns=("question", "sentence"),
            label_names=_NLI2, metrics=("accuracy",), dev_splits=("dev",),
            tsv=_pair_layout("question", "sentence", "label"),
        ),
        GlueTask(
            name="rte", dir_name="RTE", hub_config="rte", text_columns=("sentence1", "sentence2"),
            label_names=_NLI2, metrics=("accuracy",), dev_splits=("dev",),
            tsv=_pair_layout("sentence1", "sentence2", "label"),
        ),
        GlueTask(
            name="wnli", dir_name="WNLI", hub_config="wnli", text_columns=("sentence1", "sentence2"),
            label_names=_BINARY, metrics=("accuracy",), dev_splits=("dev",),
            tsv=_pair_layout("sentence1", "sentence2", "label"),
        ),
    )
}


# The GLUE benchmark's own order (its paper and leaderboard): single sentences, similarity, then inference.
GLUE_ORDER: tuple[str, ...] = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def _normalize_task_name(name: str) -> str:
    # "SST-2", "sts_b", " MNLI " -> "sst2", "stsb", "mnli": the GLUE dir names normalize to the task names.
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def get_task(name: str) -> GlueTask:
    """Return the task for `name`, case-insensitive; GLUE dir names ("SST-2", "STS-B") work too."""
    valid = ", ".join(GLUE_TASKS)
    key = _normalize_task_name(name) if isinstance(name, str) else ""
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    close = difflib.get_close_matches(key, list(GLUE_TASKS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise ConfigError(f"task.name: {name!r} is not a GLUE task{hint} Valid: {valid}")
