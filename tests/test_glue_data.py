"""GLUE task registry and loaders: original-layout TSV fixtures, the hub path (monkeypatched), errors."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pytest

from greendistil.data.tasks import GLUE_TASKS, get_task
from greendistil.data.glue import GlueExamples, load_glue
from greendistil.errors import ConfigError, DataError

QUOTED = 'he said "it \'s fine and left'  # an unbalanced quote: with quote processing it would eat lines

MNLI_HEADER = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
               "sentence2_parse sentence1 sentence2 label1 label2 label3 label4 label5 gold_label").split()


def _mnli_row(index: int, premise: str, hypothesis: str, label: str) -> list[str]:
    return [str(index), "1", f"{index}e", "fiction", "( p )", "( h )", "(ROOT p)", "(ROOT h)", premise,
            hypothesis, label, label, label, label, label, label]


# Per task dir: (header or None, rows, expected (text_a, text_b, labels)).
FIXTURES: dict[str, tuple[list[str] | None, list[list[str]], tuple]] = {
    "CoLA": (None, [["gj04", "1", "", "The sailors rode the breeze clear of the rocks."],
                    ["gj04", "0", "*", QUOTED]],
             (("The sailors rode the breeze clear of the rocks.", QUOTED), None, (1, 0))),
    "SST-2": (["sentence", "label"], [[QUOTED, "1"], ["unflinchingly bleak ", "0"]],
              ((QUOTED, "unflinchingly bleak "), None, (1, 0))),
    "MRPC": (["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             [["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him as \" the witness"],
              ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."]],
             (("Amrozi accused his brother .", "Yucaipa owned Dominick 's ."),
              ("Referring to him as \" the witness", "Yucaipa bought Dominick 's ."), (1, 0))),
    "QQP": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [["0", "1", "2", "How do I learn?", "How can I learn?", "1"],
             ["1", "3", "4", "Why is the sky blue?", "What is 2+2?", "0"]],
            (("How do I learn?", "Why is the sky blue?"), ("How can I learn?", "What is 2+2?"), (1, 0))),
    "STS-B": ("index genre filename year old_index source1 source2 sentence1 sentence2 score".split(),
              [["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man dances.",
                "A man is dancing.", "5.000"],
               ["1", "main-captions", "MSRvid", "2012test", "0002", "none", "none", "A cat.", QUOTED, "0.5"]],
              (("A man dances.", "A cat."), ("A man is dancing.", QUOTED), (5.0, 0.5))),
    "MNLI": (MNLI_HEADER, [_mnli_row(0, "P one .", "H one .", "neutral"),
                           _mnli_row(1, "P two .", "H two .", "contradiction"),
                           _mnli_row(2, "P three .", "H three .", "entailment")],
             (("P one .", "P two .", "P three ."), ("H one .", "H two .", "H three ."), (1, 2, 0))),
    "QNLI": (["index", "question", "sentence", "label"],
             [["0", "What is it?", "It is a test.", "entailment"],
              ["1", "Who?", "Nobody knows.", "not_entailment"]],
             (("What is it?", "Who?"), ("It is a test.", "Nobody knows."), (0, 1))),
    "RTE": (["index", "sentence1", "sentence2", "label"],
            [["0", "Dana died.", "Dana is dead.", "entailment"], ["1", "A.", "B.", "not_entailment"]],
            (("Dana died.", "A."), ("Dana is dead.", "B."), (0, 1))),
    "WNLI": (["index", "sentence1", "sentence2", "label"],
             [["0", "I stuck a pin.", "The pin had a hole.", "0"], ["1", "X did it.", "X did.", "1"]],
             (("I stuck a pin.", "X did it."), ("The pin had a hole.", "X did."), (0, 1))),
}


def _write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header is not None else []) + rows
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    """Every task in the original GLUE layout; MNLI as dev_matched and dev_mismatched, others as dev."""
    root = tmp_path / "glue"
    for task in GLUE_TASKS.values():
        header, rows, _ = FIXTURES[task.dir_name]
        for split in ("train", *task.dev_splits):
            _write_tsv(root / task.dir_name / f"{split}.tsv", header, rows)
    return root


@pytest.fixture(autouse=True)
def _no_glue_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLUE_DIR", raising=False)


# --- registry ---------------------------------------------------------------------------------------


def test_registry_has_nine_tasks_with_hub_label_order() -> None:
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert {name: task.num_labels for name, task in GLUE_TASKS.items()} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2}
    assert GLUE_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")
    stsb = GLUE_TASKS["stsb"]
    assert stsb.is_regression and stsb.label_names is None and stsb.metrics == ("pearson", "spearman")
    assert not GLUE_TASKS["sst2"].is_regression
    assert GLUE_TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert all(t.dev_splits == ("dev",) for n, t in GLUE_TASKS.items() if n != "mnli")
    assert GLUE_TASKS["cola"].metrics == ("mcc",) and GLUE_TASKS["qqp"].metrics == ("f1", "accuracy")


@pytest.mark.parametrize("name, expected", [("sst2", "sst2"), ("SST-2", "sst2"), ("STS-B", "stsb"),
                                            ("MNLI", "mnli"), ("CoLA", "cola"), ("Rte", "rte")])
def test_get_task_accepts_names_and_dir_names(name: str, expected: str) -> None:
    assert get_task(name).name == expected


def test_get_task_unknown_suggests_and_lists_valid() -> None:
    with pytest.raises(ConfigError) as info:
        get_task("sst")
    assert str(info.value) == ("task.name: 'sst' is not a GLUE task; did you mean 'sst2'? Valid: cola, sst2, "
                               "mrpc, qqp, stsb, mnli, qnli, rte, wnli")
    with pytest.raises(ConfigError, match=r"'imagenet' is not a GLUE task\. Valid: cola"):
        get_task("imagenet")


# --- original TSV layout ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GLUE_TASKS))
def test_load_every_task_from_original_layout(glue_dir: Path, name: str) -> None:
    task = GLUE_TASKS[name]
    text_a, text_b, labels = FIXTURES[task.dir_name][2]
    for split in ("train", *task.dev_splits):
        examples = load_glue(task, split, glue_dir=glue_dir)
        assert isinstance(examples, GlueExamples)
        assert (examples.text_a, examples.text_b, examples.labels) == (text_a, text_b, labels)
        assert examples.split == split and len(examples) == len(labels)
        assert examples.source == str(glue_dir / task.dir_name / f"{split}.tsv")
    assert all(isinstance(label, float if task.is_regression else int) for label in examples.labels)


def test_columns_are_found_by_header_name(tmp_path: Path) -> None:
    _write_tsv(tmp_path / "RTE" / "dev.tsv", ["label", "extra", "sentence2", "index", "sentence1"],
               [["entailment", "x", "hyp", "0", "prem"]])
    examples = load_glue(get_task("rte"), "dev", glue_dir=tmp_path)
    assert (examples.text_a, examples.text_b, examples.labels) == (("prem",), ("hyp",), (0,))


def test_glue_dir_env_var_is_used(glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    examples = load_glue(get_task("sst2"), "dev")
    assert examples.source == str(glue_dir / "SST-2" / "dev.tsv")


def test_explicit_glue_dir_wins_over_env(glue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "elsewhere"))
    assert load_glue(get_task("sst2"), "dev", glue_dir=glue_dir).source.startswith(str(glue_dir))


def test_max_examples_is_a_seeded_subset_in_order(tmp_path: Path) -> None:
    rows = [[f"sentence {i}", str(i % 2)] for i in range(50)]
    _write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], rows)
    task = get_task("sst2")
    first = load_glue(task, "train", glue_dir=tmp_path, max_examples=10, seed=3)
    again = load_glue(task, "train", glue_dir=tmp_path, max_examples=10, seed=3)
    other = load_glue(task, "train", glue_dir=tmp_path, max_examples=10, seed=4)
    assert len(first) == 10 and first == again and first.text_a != other.text_a
    indices = [int(text.split()[1]) for text in first.text_a]
    assert indices == sorted(indices)
    assert first.labels == tuple(i % 2 for i in indices)
    assert len(load_glue(task, "train", glue_dir=tmp_path, max_examples=500)) == 50
    with pytest.raises(ConfigError, match="max_examples: 0"):
        load_glue(task, "train", glue_dir=tmp_path, max_examples=0)


def test_invalid_split_names_valid_splits(glue_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'dev' is not a labelled split of mnli.*dev_matched, dev_mismatched"):
        load_glue(get_task("mnli"), "dev", glue_dir=glue_dir)
    with pytest.raises(ConfigError, match="GLUE calls the hub split 'validation' 'dev'"):
        load_glue(get_task("rte"), "validation", glue_dir=glue_dir)


# --- data errors ------------------------------------------------------------------------------------


def _load_error(tmp_path: Path, task: str, header: list[str] | None, rows: list[list[str]]) -> str:
    spec = get_task(task)
    path = _write_tsv(tmp_path / spec.dir_name / "dev.tsv", header, rows)
    with pytest.raises(DataError) as info:
        load_glue(spec, "dev", glue_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file_in_local_dir_does_not_fall_back(glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_be_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub must not be tried when a local GLUE folder is set")

    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    (glue_dir / "SST-2" / "dev.tsv").unlink()
    with pytest.raises(DataError) as info:
        load_glue(get_task("sst2"), "dev", glue_dir=glue_dir)
    message = str(info.value)
    assert str(glue_dir / "SST-2" / "dev.tsv") in message and "SST-2/dev.tsv" in message
    assert "GLUE_DIR" in message and "task.glue_dir" in message
    monkeypatch.setenv("GLUE_DIR", str(glue_dir / "nope"))
    with pytest.raises(DataError, match="GLUE_DIR = .*nope; the folder does not exist"):
        load_glue(get_task("sst2"), "dev")


def test_missing_column_lists_found_and_expected(tmp_path: Path) -> None:
    message = _load_error(tmp_path, "rte", ["index", "premise", "sentence2", "label"], [["0", "a", "b", "entailment"]])
    assert "missing column(s) ['sentence1']" in message
    assert "found columns ['index', 'premise', 'sentence2', 'label']" in message
    assert "expected ['sentence1', 'sentence2', 'label']" in message


def test_empty_files(tmp_path: Path) -> None:
    assert "file is empty" in _load_error(tmp_path, "sst2", None, [])
    assert "no data rows" in _load_error(tmp_path, "sst2", ["sentence", "label"], [])
    assert "no data rows" in _load_error(tmp_path, "cola", None, [])


def test_unknown_label_names_row_and_valid_labels(tmp_path: Path) -> None:
    spec = get_task("mnli")
    path = _write_tsv(tmp_path / "MNLI" / "dev_matched.tsv", MNLI_HEADER,
                      [_mnli_row(0, "a", "b", "neutral"), _mnli_row(1, "a", "b", "-")])
    with pytest.raises(DataError) as info:
        load_glue(spec, "dev_matched", glue_dir=tmp_path)
    message = str(info.value)
    assert f"{path} line 3" in message
    assert "label '-' is not a mnli label; valid: entailment, neutral, contradiction" in message
    message = _load_error(tmp_path, "sst2", ["sentence", "label"], [["good", "1"], ["bad", "positive"]])
    assert "line 3" in message and "valid: 0, 1" in message


def test_non_numeric_stsb_score(tmp_path: Path) -> None:
    header = FIXTURES["STS-B"][0]
    row = ["0", "g", "f", "y", "0", "n", "n", "a", "b", "high"]
    message = _load_error(tmp_path, "stsb", header, [row])
    assert "line 2" in message and "'high' is not a number" in message and "[0, 5]" in message


def test_row_with_too_few_fields(tmp_path: Path) -> None:
    message = _load_error(tmp_path, "rte", ["index", "sentence1", "sentence2", "label"],
                          [["0", "a", "b", "entailment"], ["1", "a b entailment"]])
    assert "line 3: 2 field(s), expected at least 4" in message


def test_quote_characters_do_not_merge_lines(tmp_path: Path) -> None:
    rows = [['"unclosed quote', "1"], ["next line", "0"], ['ends with "', "1"]]
    _write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], rows)
    examples = load_glue(get_task("sst2"), "dev", glue_dir=tmp_path)
    assert examples.text_a == ('"unclosed quote', "next line", 'ends with "') and examples.labels == (1, 0, 1)


# --- hub --------------------------------------------------------------------------------------------


def test_hub_path_uses_validation_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(path: str, name: str, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"],
                                           "label": [2, 0], "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_glue(get_task("mnli"), "dev_mismatched")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert (examples.text_a, examples.text_b, examples.labels) == (("p0", "p1"), ("h0", "h1"), (2, 0))
    assert examples.source == "hub:nyu-mll/glue/mnli/validation_mismatched"


def test_hub_regression_labels_are_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict(
        {"sentence1": ["a"], "sentence2": ["b"], "label": [3.25], "idx": [0]}))
    examples = load_glue(get_task("stsb"), "train")
    assert examples.labels == (3.25,) and isinstance(examples.labels[0], float)


def test_hub_unlabelled_rows_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict(
        {"sentence": ["a"], "label": [-1], "idx": [0]}))
    with pytest.raises(DataError, match="hub:nyu-mll/glue/sst2/train: label -1 is out of range"):
        load_glue(get_task("sst2"), "train")


def test_nothing_works_lists_everything_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError) as info:
        load_glue(get_task("rte"), "dev")
    message = str(info.value)
    assert "\n" not in message and "more detail" not in message
    for part in ("glue_dir argument (not given)", "$GLUE_DIR (not set)", "hub:nyu-mll/glue/rte/validation",
                 "HF_DATASETS_OFFLINE, HF_HUB_OFFLINE is set",
                 "ConnectionError: Couldn't reach 'nyu-mll/glue' on the Hub", "GLUE_DIR=", "RTE/dev.tsv",
                 "task.glue_dir", "hub reachable"):
        assert part in message, part


# --- real GLUE (../shared/glue) ---------------------------------------------------------------------

REAL_GLUE_DIR = Path(os.environ.get("GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "glue")


def _real_glue(dir_name: str) -> Path:
    if not (REAL_GLUE_DIR / dir_name / "dev.tsv").is_file():
        pytest.skip(f"real GLUE {dir_name} not found under {REAL_GLUE_DIR}")
    return REAL_GLUE_DIR


def test_real_sst2_dev() -> None:
    examples = load_glue(get_task("sst2"), "dev", glue_dir=_real_glue("SST-2"))
    assert len(examples) == 872 and examples.text_b is None
    assert examples.labels.count(1) == 444 and examples.labels.count(0) == 428


def test_real_stsb_dev() -> None:
    examples = load_glue(get_task("stsb"), "dev", glue_dir=_real_glue("STS-B"))
    assert len(examples) == 1500 and examples.text_b is not None
    assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in examples.labels)


def test_real_rte_dev() -> None:
    examples = load_glue(get_task("rte"), "dev", glue_dir=_real_glue("RTE"))
    assert len(examples) == 277 and set(examples.labels) == {0, 1}
