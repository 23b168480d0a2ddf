"""`[suite]`: tasks, per-task overrides, the order stages run in, and the errors of bad suite input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builders import subprocess_env
from conftest import deep_update, tiny_config, write_config, write_suite_glue
from greendistil.config import build_config, for_task, load_config, suite_steps
from greendistil.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def suite_raw(glue_dir: Path | str, output_dir: Path | str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = deep_update(tiny_config(glue_dir, output_dir), {
        "task": {"name": None},
        "suite": {"tasks": ["sst2", "rte"], "overrides": {"rte": {"epochs": 2, "batch_size": 8,
                                                                  "max_seq_length": 48}}},
    })
    return deep_update(raw, changes or {})


def test_overrides_apply_to_the_tasks_training_stages_only(tmp_path: Path) -> None:
    config = build_config(suite_raw(tmp_path, tmp_path))
    rte, sst2 = for_task(config, "rte"), for_task(config, "sst2")
    assert rte.task.name == "rte" and rte.task.max_seq_length == 48 and sst2.task.max_seq_length == 32
    assert [(s.epochs, s.batch_size) for s in rte.stages[:2]] == [(2.0, 8), (2.0, 8)]
    assert [(s.epochs, s.batch_size) for s in sst2.stages[:2]] == [(1.0, 16), (1.0, 16)]
    assert rte.stages[2] == config.stages[2]  # evaluate has no training keys
    assert not rte.suite.tasks  # each task's config is a single-task one


def test_each_step_carries_its_tasks_overridden_stage(tmp_path: Path) -> None:
    """What the pipeline runs is the step's stage: it must be the task's, overrides applied."""
    by_step = {(s.task, s.stage.name): s.stage for s in suite_steps(build_config(suite_raw(tmp_path, tmp_path)))}
    assert (by_step[("rte", "finetune")].epochs, by_step[("rte", "distill")].batch_size) == (2.0, 8)
    assert (by_step[("sst2", "finetune")].epochs, by_step[("sst2", "distill")].batch_size) == (1.0, 16)


def test_steps_run_shared_stages_once_then_each_task_in_turn(tmp_path: Path) -> None:
    raw = suite_raw(tmp_path, tmp_path, {"corpus": {"source": "glue"}})
    raw["stages"] = [{"kind": "pretrain", "train": "head"},
                     {"kind": "distill", "name": "general", "role": "general_student", "objective": "mlm"},
                     *raw["stages"]]
    steps = [(step.task, step.stage.name, step.index) for step in suite_steps(build_config(raw))]
    assert steps == [(None, "pretrain", 0), (None, "general", 1),
                     ("sst2", "finetune", 2), ("sst2", "distill", 3), ("sst2", "evaluate", 4),
                     ("rte", "finetune", 2), ("rte", "distill", 3), ("rte", "evaluate", 4)]


def test_a_single_task_config_runs_its_stages_in_order_under_its_task(tmp_path: Path) -> None:
    config = build_config(tiny_config(tmp_path, tmp_path))
    assert [(s.task, s.stage.name) for s in suite_steps(config)] == [
        ("sst2", "finetune"), ("sst2", "distill"), ("sst2", "evaluate")]
    assert "suite" not in config.to_dict()  # the hash of a single-task config did not change with suites


def test_the_written_config_reads_back_to_the_same_suite(tmp_path: Path) -> None:
    config = build_config(suite_raw(tmp_path, tmp_path))
    path = tmp_path / "written.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    again = load_config(path)
    assert again == config and again.config_hash() == config.config_hash()


@pytest.mark.parametrize("changes, message", [
    ({"suite": {"tasks": ["sst2", "rtee"]}}, "did you mean 'rte'"),
    ({"suite": {"tasks": ["sst2", "sst2"]}}, "suite.tasks: ['sst2', 'sst2'] is out of range; valid: distinct"),
    ({"suite": {"overrides": {"cola": {"epochs": 2}}}}, "suite.overrides.cola: 'cola' is out of range; valid: a task"),
    ({"suite": {"overrides": {"rte": {"epoch": 2}}}}, "suite.overrides.rte.epoch: unknown key; did you mean 'epochs'"),
    ({"suite": {"overrides": {"rte": {"max_seq_length": 4}}}}, "suite.overrides.rte.max_seq_length: 4 is out of range"),
    ({"suite": {"overrides": {"rte": {"learning_rate": -1}}}}, "suite.overrides.rte.learning_rate: -1.0 is out of range"),
    ({"suite": {"tasks": "sst2"}}, "suite.tasks: expected a list"),
    ({"suite": {"task": ["sst2"]}}, "suite.task: unknown key"),
    ({"task": {"name": "sst2"}}, "task.name: 'sst2' is set beside suite.tasks"),
])
def test_bad_suite_input_names_the_key_and_what_is_valid(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(suite_raw(tmp_path, tmp_path, changes))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_corpus_stage_after_a_task_stage_is_refused_in_a_suite(tmp_path: Path) -> None:
    raw = suite_raw(tmp_path, tmp_path)
    raw["stages"].append({"kind": "pretrain", "train": "head"})
    with pytest.raises(ConfigError, match=r"stages.3: the pretrain stage 'pretrain' trains on the corpus and runs "
                                          r"once for the whole suite, before any task; move it before stages.0"):
        build_config(raw)


def test_a_stage_named_like_a_task_is_refused(tmp_path: Path) -> None:
    raw = suite_raw(tmp_path, tmp_path)
    raw["stages"][1]["name"] = "rte"
    with pytest.raises(ConfigError, match=r"stages.1.name: 'rte' is also a task of the suite"):
        build_config(raw)


def test_a_task_without_data_fails_before_anything_is_written(tmp_path: Path) -> None:
    """MNLI is not in the local GLUE folder and the hub is offline: one line naming the task and both places."""
    glue = write_suite_glue(tmp_path / "glue")
    runs = tmp_path / "runs"
    config = write_config(tmp_path / "suite.toml", suite_raw(glue, runs, {"suite": {"tasks": ["sst2", "rte", "mnli"],
                                                                                     "overrides": None}}))
    done = subprocess.run([sys.executable, "-m", "greendistil", "run", str(config), "--no-progress"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "GLUE mnli train" in lines[0] and f"task.glue_dir = {glue} (no MNLI folder there)" in lines[0]
    assert "hub:nyu-mll/glue/mnli/train" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert not runs.exists()  # nothing written: not even the runs root
