"""GLUE examples from either data source (the task registry itself is `data.tasks`).

Two sources give the same examples with the same label ids:
- the original GLUE TSV layout, `<glue_dir>/<dir_name>/<split>.tsv` (e.g. `SST-2/dev.tsv`), read without
  quote processing because some sentences contain `"` characters;
- the Hugging Face dataset `nyu-mll/glue`, whose ClassLabel order the registry's `label_names` follow.

`load_glue` picks the source: an explicit `glue_dir`, else `$GLUE_DIR`, else the hub. A local folder that
lacks the file is an error, never a silent fallback to the hub: the two could differ and a run must say
which data it measured.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from greendistil.data.tasks import GlueTask
from greendistil.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
GLUE_DIR_ENV = "GLUE_DIR"

# Our split names (the GLUE file names) -> the hub's split names.
HUB_SPLITS: dict[str, str] = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


@dataclass(frozen=True, kw_only=True)
class GlueExamples:
    """The labelled examples of one task split, as plain tuples, plus where they came from."""

    task: GlueTask
    split: str
    text_a: tuple[str, ...]
    text_b: tuple[str, ...] | None
    labels: tuple[int, ...] | tuple[float, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> GlueExamples:
        """The first `n` examples, in file order (all of them if there are fewer)."""
        return dataclasses.replace(self, text_a=self.text_a[:n], labels=self.labels[:n],
                                   text_b=None if self.text_b is None else self.text_b[:n])


def check_split(task: GlueTask, split: str) -> None:
    """Raise ConfigError unless `split` is one of the task's labelled splits (train, dev, ...)."""
    if split in task.splits:
        return
    our_name = {hub: ours for ours, hub in HUB_SPLITS.items()}.get(split)
    if our_name in task.splits:
        hint = f"; GLUE calls the hub split {split!r} {our_name!r}"
    else:
        close = difflib.get_close_matches(str(split), task.splits, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"split: {split!r} is not a labelled split of {task.name}{hint}. Valid: {', '.join(task.splits)}"
    )


# --- original GLUE TSV files ------------------------------------------------------------------------


def _read_tsv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """All non-blank rows of a TSV file with their 1-based line numbers; no quote processing."""
    rows: list[tuple[int, list[str]]] = []
    try:
        # utf-8-sig: some GLUE files (MRPC) start with a byte-order mark that would corrupt the header.
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row and any(row):
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}); GLUE files are "
                        "UTF-8 TSV") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable TSV ({exc}); GLUE files are tab-separated UTF-8") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return rows


def _parse_label(task: GlueTask, raw: str, where: str) -> int | float:
    value = raw.strip()
    if task.label_names is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{where}: {task.dir_name} score {raw!r} is not a number; expected a float "
                            "in [0, 5]")
        return score
    try:
        return task.label_names.index(value)
    except ValueError:
        raise DataError(f"{where}: label {raw!r} is not a {task.name} label; valid: "
                        f"{', '.join(task.label_names)}") from None


def read_glue_tsv(task: GlueTask, split: str, path: Path) -> GlueExamples:
    """Read one split from an original-layout GLUE TSV file; columns are found by header name."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected the original GLUE layout "
                        f"<glue_dir>/{task.dir_name}/{split}.tsv")
    rows = _read_tsv_rows(path)
    layout = task.tsv
    if layout.implicit_header is None:
        if not rows:
            raise DataError(f"{path}: file is empty; expected a header line and {task.name} examples")
        header = [column.strip() for column in rows[0][1]]
        rows = rows[1:]
    else:
        header = list(layout.implicit_header)
    if not rows:
        raise DataError(f"{path}: no data rows (header only or empty); expected {task.name} examples")

    wanted = (*layout.text_columns, layout.label_column)
    missing = [column for column in wanted if column not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found columns {header}; expected "
                        f"{list(wanted)} (original GLUE layout for {task.dir_name})")
    indices = [header.index(column) for column in wanted]
    num_fields_needed = max(indices) + 1

    texts: list[list[str]] = [[] for _ in layout.text_columns]
    labels: list[int | float] = []
    for line_num, row in rows:
        where = f"{path} line {line_num}"
        if len(row) < num_fields_needed:
            raise DataError(f"{where}: {len(row)} field(s), expected at least {num_fields_needed} "
                            f"({', '.join(header[:num_fields_needed])}); is it tab-separated?")
        for column_texts, index in zip(texts, indices[:-1]):
            column_texts.append(row[index])
        labels.append(_parse_label(task, row[indices[-1]], where))

    return GlueExamples(
        task=task, split=split, text_a=tuple(texts[0]),
        text_b=tuple(texts[1]) if len(texts) > 1 else None,
        labels=tuple(labels), source=str(path),
    )


# --- Hugging Face hub -------------------------------------------------------------------------------


def _fetch_hub(task: GlueTask, hub_split: str) -> Any:
    """Download (or read from the HF cache) one split; kept tiny so tests can monkeypatch `load_dataset`."""
    import datasets  # slow to import: only when the hub is actually used

    return datasets.load_dataset(HUB_DATASET, task.hub_config, split=hub_split)


def _examples_from_hub(task: GlueTask, split: str, dataset: Any, source: str) -> GlueExamples:
    wanted = (*task.text_columns, "label")
    missing = [column for column in wanted if column not in dataset.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found columns {dataset.column_names}; "
                        f"expected {list(wanted)}")
    texts = [tuple(str(text) for text in dataset[column]) for column in task.text_columns]
    raw_labels = list(dataset["label"])
    if task.is_regression:
        labels: tuple[int, ...] | tuple[float, ...] = tuple(float(label) for label in raw_labels)
    else:
        labels = tuple(int(label) for label in raw_labels)
        bad = [label for label in labels if not 0 <= label < task.num_labels]
        if bad:
            raise DataError(f"{source}: label {bad[0]} is out of range for {task.name}; valid: 0.."
                            f"{task.num_labels - 1} (unlabelled test splits use -1)")
    return GlueExamples(
        task=task, split=split, text_a=texts[0], text_b=texts[1] if len(texts) > 1 else None,
        labels=labels, source=source,
    )


# --- source resolution ------------------------------------------------------------------------------


def _local_missing_error(task: GlueTask, split: str, glue_dir: Path, origin: str) -> DataError:
    path = glue_dir / task.dir_name / f"{split}.tsv"
    if not glue_dir.is_dir():
        found = "the folder does not exist"
    else:
        task_dirs = sorted(p.name for p in glue_dir.iterdir() if p.is_dir())
        found = f"task folders found there: {', '.join(task_dirs) or 'none'}"
        if glue_dir.name == task.dir_name:
            found += f" (it looks like a task folder: point {origin} at its parent)"
    return DataError(
        f"{task.name} {split}: {path} not found ({origin} = {glue_dir}; {found}). Put the original GLUE "
        f"file there, point {origin} at a folder containing {task.dir_name}/{split}.tsv, or unset both "
        f"GLUE_DIR and task.glue_dir to load {HUB_DATASET} from the Hugging Face hub"
    )


def _hub_failed_error(task: GlueTask, split: str, source: str, exc: BaseException, *, local_dir: Path | None = None,
                      origin: str = "") -> DataError:
    lines = str(exc).strip().splitlines()
    first_line = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    offline = [name for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
               if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")]
    offline_note = f" ({', '.join(offline)} is set)" if offline else ""
    local = (f"{origin} = {local_dir} (no {task.dir_name} folder there)" if local_dir is not None
             else f"glue_dir argument (not given), ${GLUE_DIR_ENV} (not set)")
    return DataError(
        f"cannot load GLUE {task.name} {split}; tried: {local}, {source}{offline_note} -> {first_line}. "
        f"Fix: set {GLUE_DIR_ENV}=/path/to/glue "
        f"(a folder containing {task.dir_name}/{split}.tsv), or set task.glue_dir in the config, or make "
        "the Hugging Face hub reachable (network, HF cache, unset offline mode)"
    )


def _resolve_local_dir(glue_dir: Path | str | None) -> tuple[Path | None, str]:
    """The local GLUE folder to use, and what named it ("glue_dir", "GLUE_DIR"), or (None, "")."""
    if glue_dir is not None and str(glue_dir).strip():
        return Path(glue_dir).expanduser(), "task.glue_dir"
    from_env = os.environ.get(GLUE_DIR_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser(), GLUE_DIR_ENV
    return None, ""


def _subset(examples: GlueExamples, max_examples: int | None, seed: int) -> GlueExamples:
    if max_examples is None or max_examples >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(examples), size=max_examples, replace=False)).tolist()
    return dataclasses.replace(
        examples,
        text_a=tuple(examples.text_a[i] for i in keep),
        text_b=None if examples.text_b is None else tuple(examples.text_b[i] for i in keep),
        labels=tuple(examples.labels[i] for i in keep),  # type: ignore[arg-type]
    )


def load_glue(
    task: GlueTask,
    split: str,
    *,
    glue_dir: Path | None = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> GlueExamples:
    """Load one labelled split of a GLUE task.

    Source: `glue_dir` if given, else `$GLUE_DIR`, else the hub dataset `nyu-mll/glue`. A local folder
    without the task's file raises DataError (no silent hub fallback). `max_examples` keeps a random
    subset drawn with `numpy.random.default_rng(seed)`, in the original order.
    """
    check_split(task, split)
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ConfigError(f"max_examples: {max_examples!r} is not valid; use a positive integer or "
                          "leave it unset for the whole split")
    local_dir, origin = _resolve_local_dir(glue_dir)
    # A local GLUE folder that holds no folder for this task (e.g. ../shared/glue has no MNLI): the task comes
    # from the hub. A task folder without the split's file is a broken copy: an error, never the hub.
    holds_task = local_dir is not None and (not local_dir.is_dir() or (local_dir / task.dir_name).is_dir())
    if local_dir is not None and holds_task:
        path = local_dir / task.dir_name / f"{split}.tsv"
        if not path.is_file():
            raise _local_missing_error(task, split, local_dir, origin)
        examples = read_glue_tsv(task, split, path)
    else:
        source = f"hub:{HUB_DATASET}/{task.hub_config}/{HUB_SPLITS[split]}"
        try:
            dataset = _fetch_hub(task, HUB_SPLITS[split])
        except Exception as exc:  # any hub/network/cache failure becomes one actionable DataError
            raise _hub_failed_error(task, split, source, exc, local_dir=local_dir, origin=origin) from exc
        examples = _examples_from_hub(task, split, dataset, source)
    subset = _subset(examples, max_examples, seed)
    logger.info("loaded %d of %d %s/%s examples from %s", len(subset), len(examples), task.name, split,
                examples.source)
    return subset
