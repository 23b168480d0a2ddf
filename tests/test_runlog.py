"""The run log: whole-line appends, torn-line tolerance, load_runs flattening, run-directory errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from greendistil import load_runs
from greendistil.errors import GreendistilError, RunDirError
from greendistil.runlog import store as runlog
from greendistil.runlog.schema import SCHEMA_VERSION
from greendistil.runtime.environment import _cpu_family_model, hardware

import builders


def record(stage: str, **values) -> dict:
    """A record of the current schema (through `new_record`: KeyError on a non-field) with a few known values."""
    return builders.record(**{"run_id": "r", "stage": stage, "status": "ok",
                              "started_at": "2026-11-25T05:48:16.354+00:00",
                              "ended_at": "2026-11-25T05:48:17.707+00:00", "energy_kwh": 0.5, "metrics": {},
                              "hardware": {"cpu_count": 2}, **values})


def write_run(root: Path, run_id: str, *records: dict) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    for rec in records:
        runlog.append_record(run_dir, {**rec, "run_id": run_id})
    return run_dir


def test_append_record_writes_whole_lines(tmp_path: Path) -> None:
    runlog.append_record(tmp_path, record("a", artifacts={"student": tmp_path / "x"}, num_examples=np.int64(3),
                                          duration_s=np.float32(0.5)))
    runlog.append_record(tmp_path, record("b"))
    text = (tmp_path / runlog.RECORDS_FILE).read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 2
    first, second = (json.loads(line) for line in text.splitlines())
    assert (first["stage"], second["stage"]) == ("a", "b")
    assert first["artifacts"] == {"student": str(tmp_path / "x")}
    assert first["num_examples"] == 3 and first["duration_s"] == 0.5


def test_append_record_refuses_nan_without_writing_a_partial_line(tmp_path: Path) -> None:
    runlog.append_record(tmp_path, record("a"))
    with pytest.raises(ValueError):
        runlog.append_record(tmp_path, record("b", energy_kwh=float("nan")))
    with pytest.raises(TypeError):
        runlog.append_record(tmp_path, record("c", details={"thing": object()}))
    assert [r["stage"] for r in runlog.read_records(tmp_path)] == ["a"]


def test_read_records_skips_a_torn_last_line_with_a_warning(tmp_path: Path) -> None:
    runlog.append_record(tmp_path, record("a"))
    with open(tmp_path / runlog.RECORDS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"schema_version": 1, "stage": "b", "sta')  # killed mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        records = runlog.read_records(tmp_path)
    assert [r["stage"] for r in records] == ["a"]


def test_read_records_raises_on_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / runlog.RECORDS_FILE
    path.write_text(json.dumps(record("a")) + "\n" + "garbage\n" + json.dumps(record("c")) + "\n", encoding="utf-8")
    with pytest.raises(GreendistilError, match=r":2: not a JSON record"):
        runlog.read_records(tmp_path)


def test_read_records_of_a_folder_without_a_log_is_empty(tmp_path: Path) -> None:
    assert runlog.read_records(tmp_path) == []
    assert load_runs(tmp_path).empty


def test_load_runs_accepts_a_run_dir_a_runs_root_and_a_list(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    one = write_run(root, "one", record("finetune"), record("evaluate", metrics={"teacher.accuracy": 0.9}))
    two = write_run(root, "two", record("finetune"))
    (root / "not-a-run").mkdir()

    assert len(load_runs(one)) == 2
    assert len(load_runs(str(one))) == 2
    from_root = load_runs(root)
    assert len(from_root) == 3 and set(from_root["run_id"]) == {"one", "two"}
    assert set(from_root["run_dir"]) == {str(one), str(two)}
    assert len(load_runs([one, two])) == 3
    assert len(load_runs([root, tmp_path / "missing"])) == 3


def test_load_runs_flattens_metrics_and_nested_fields(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "r", record("evaluate", metrics={"teacher.accuracy": 0.9, "student.accuracy": 0.8},
                                              codecarbon={"co2_kg_at_pue_1": 1e-6}))
    frame = load_runs(run_dir)
    row = frame.iloc[0]
    assert row["metric.teacher.accuracy"] == 0.9 and row["metric.student.accuracy"] == 0.8
    assert row["hardware.cpu_count"] == 2 and row["codecarbon.co2_kg_at_pue_1"] == 1e-6
    assert "metrics" not in frame.columns and "hardware" not in frame.columns
    assert pd.api.types.is_datetime64_any_dtype(frame["started_at"])
    assert pd.api.types.is_datetime64_any_dtype(frame["ended_at"])
    assert frame["started_at"].iloc[0] == pd.Timestamp("2026-11-25T05:48:16.354Z")


def test_load_runs_tolerates_unknown_and_missing_fields(tmp_path: Path) -> None:
    # Deliberately not through new_record: a record of a later schema (a field this one lacks) and one of an
    # earlier schema (most fields absent, not null).
    newer = {**record("a", schema_version=SCHEMA_VERSION + 1), "future_field": {"x": 1}}
    run_dir = write_run(tmp_path, "r", newer, {"run_id": "r", "stage": "b", "status": "ok"})
    frame = load_runs(run_dir)
    assert list(frame["stage"]) == ["a", "b"]
    assert frame["future_field.x"].iloc[0] == 1 and pd.isna(frame["future_field.x"].iloc[1])
    assert pd.isna(frame["energy_kwh"].iloc[1])


def create(output_dir: Path, run_id: str, *, force: bool = False) -> Path:
    run_dir, lock = runlog.create_run_dir(output_dir, run_id, force=force)
    lock.release()
    return run_dir


def test_create_run_dir_makes_a_writable_folder(tmp_path: Path) -> None:
    run_dir = create(tmp_path / "a" / "b", "run1")
    assert run_dir == tmp_path / "a" / "b" / "run1" and run_dir.is_dir()
    assert [p.name for p in run_dir.iterdir()] == [runlog.LOCK_FILE]  # the write probe is removed


def test_create_run_dir_refuses_an_existing_run_dir_unless_forced(tmp_path: Path) -> None:
    run_dir = create(tmp_path, "run1")
    runlog.append_record(run_dir, record("a"))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "finetune.state.pt").write_bytes(b"stale")
    with pytest.raises(RunDirError, match="already exists") as info:
        create(tmp_path, "run1")
    assert str(run_dir) in str(info.value) and isinstance(info.value, GreendistilError)
    assert "--resume" in str(info.value) and "--force" in str(info.value)
    assert create(tmp_path, "run1", force=True) == run_dir
    # --force starts a clean log: two attempts in one log would be summed as one run, and a stale
    # training state must never be picked up by a later --resume.
    assert runlog.read_records(run_dir) == []
    assert not (run_dir / "checkpoints").exists()


def test_a_locked_run_dir_is_refused_and_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    run_dir, lock = runlog.create_run_dir(tmp_path, "run1")
    runlog.append_record(run_dir, record("a"))
    (run_dir / "config.toml").write_text("", encoding="utf-8")
    with pytest.raises(RunDirError, match=f"in use by another greendistil process \\(pid {os.getpid()}\\)"):
        runlog.open_run_dir(run_dir)
    with pytest.raises(RunDirError, match="in use"):
        runlog.create_run_dir(tmp_path, "run1", force=True)  # --force must not wipe a run being written
    assert len(runlog.read_records(run_dir)) == 1
    lock.release()
    runlog.open_run_dir(run_dir).release()
    # A holder killed with SIGKILL leaves no stale lock: flock dies with the process.
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; h = open(sys.argv[1], 'a'); "
                               "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(run_dir / runlog.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match="in use"):
            runlog.open_run_dir(run_dir)
    finally:
        holder.kill()
        holder.wait()
    runlog.open_run_dir(run_dir).release()


def test_open_run_dir_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a run directory"):
        runlog.open_run_dir(tmp_path)


def test_segments_of_a_resumed_stage_are_summed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = record("finetune", energy_kwh=0.25, status="interrupted", segment=1, cpu_energy_kwh=0.05,
                   ram_energy_kwh=0.2, co2_kg=0.1, flops=100, num_examples=10, duration_s=4.0,
                   flops_by_component={"teacher_train": 100}, started_at="2026-11-25T08:00:00+00:00")
    second = record("finetune", energy_kwh=0.5, segment=2, cpu_energy_kwh=0.1, ram_energy_kwh=0.4, co2_kg=0.2,
                    flops=300, num_examples=30, duration_s=6.0, resumed_from_step=1,
                    flops_by_component={"teacher_train": 300}, metrics={"x": 1.0},
                    started_at="2026-11-25T09:00:00+00:00")
    for rec in (first, second, record("evaluate", energy_kwh=0.125, segment=1)):
        runlog.append_record(run_dir, rec)
    frame = load_runs(run_dir)
    assert list(frame["stage"]) == ["finetune", "evaluate"]
    row = frame.iloc[0]
    assert row["energy_kwh"] == pytest.approx(0.75) and row["co2_kg"] == pytest.approx(0.3)
    assert row["cpu_energy_kwh"] + row["ram_energy_kwh"] == pytest.approx(row["energy_kwh"])
    assert row["flops"] == 400 and row["flops_by_component.teacher_train"] == 400
    assert row["num_examples"] == 40 and row["duration_s"] == pytest.approx(10.0)
    assert row["status"] == "ok" and row["num_segments"] == 2 and bool(row["resumed"])
    assert row["segment_statuses"] == "interrupted,ok" and row["metric.x"] == 1.0
    assert row["started_at"] == pd.Timestamp("2026-11-25T08:00:00+00:00")
    assert not bool(frame.iloc[1]["resumed"]) and frame.iloc[1]["num_segments"] == 1
    by_segment = load_runs(run_dir, by_segment=True)
    assert list(by_segment["stage"]) == ["finetune", "finetune", "evaluate"]
    assert by_segment["energy_kwh"].sum() == pytest.approx(0.875)


def test_a_sum_with_a_missing_part_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runlog.append_record(run_dir, record("distill", energy_kwh=None, status="interrupted", num_examples=5))
    runlog.append_record(run_dir, record("distill", energy_kwh=0.5, segment=2, num_examples=5))
    row = load_runs(run_dir).iloc[0]
    assert row["energy_kwh"] == 0.5 and row["segments_incomplete"] == ["energy_kwh"]


def test_a_run_named_twice_is_loaded_once(tmp_path: Path) -> None:
    run_dir = create(tmp_path / "runs", "run1")
    runlog.append_record(run_dir, record("a"))
    assert runlog.find_run_dirs([run_dir, tmp_path / "runs", run_dir]) == [run_dir]
    assert len(load_runs([run_dir, tmp_path / "runs"])) == 1


def test_create_run_dir_under_a_regular_file_is_a_run_dir_error(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(RunDirError, match="run.output_dir"):
        create(blocker / "runs", "run1")
    assert blocker.is_file()


def test_new_run_ids_are_distinct() -> None:
    ids = {runlog.new_run_id("quick") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("quick-") for i in ids)


def test_resume_refuses_a_finished_training_stage_without_its_model(tmp_path: Path) -> None:
    """A finished training stage whose record names no saved model cannot be the start of later stages."""
    from greendistil.errors import RunDirError
    from greendistil.runlog.progress import RunProgress

    records = [{"stage": "finetune", "kind": "finetune", "status": "ok", "artifacts": {}}]
    with pytest.raises(RunDirError, match="names no saved model"):
        RunProgress.from_records(tmp_path, records)
    done = RunProgress.from_records(tmp_path, [{**records[0], "artifacts": {"teacher": "checkpoints/finetune"}}])
    assert done.artifacts == {(None, None): {"teacher": tmp_path / "checkpoints" / "finetune"}}  # its task, seed


def test_progress_is_kept_per_task_and_stage(tmp_path: Path) -> None:
    from greendistil.runlog.progress import RunProgress

    records = [record("finetune", task="cola", kind="finetune",
                      artifacts={"teacher": "checkpoints/cola/finetune"}),
               record("finetune", task="sst2", kind="finetune", status="interrupted")]
    progress = RunProgress.from_records(tmp_path, records)
    assert progress.window_done("cola", "finetune") and not progress.window_done("sst2", "finetune")
    assert progress.next_segment("sst2", "finetune") == 2 and progress.next_segment("rte", "finetune") == 1
    assert progress.artifacts == {("cola", None): {"teacher": tmp_path / "checkpoints" / "cola" / "finetune"}}


def test_records_from_before_tasks_were_recorded_count_for_the_runs_task(tmp_path: Path) -> None:
    from greendistil.runlog.progress import RunProgress

    old = builders.without(record("finetune", schema_version=2, kind="finetune",
                         artifacts={"teacher": "checkpoints/finetune"}), "task")
    progress = RunProgress.from_records(tmp_path, [old])
    assert progress.window_done("sst2", "finetune") and progress.next_segment("sst2", "finetune") == 2
    assert progress.artifacts == {(None, None): {"teacher": tmp_path / "checkpoints" / "finetune"}}


def test_hardware_names_the_cpu_generation_and_torchs_kernel_isa(tmp_path: Path) -> None:
    """'AMD EPYC' alone hides the generation, which changes fp32 rounding and speed: the record keeps the
    family/model of the first processor and the instruction set torch dispatches to."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
                       "model\t\t: 143\n", encoding="utf-8")
    assert _cpu_family_model(cpuinfo) == "AuthenticAMD family 25 model 17"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: ARM\n", encoding="utf-8")
    assert _cpu_family_model(cpuinfo) is None
    assert _cpu_family_model(tmp_path / "missing") is None
    info = hardware(torch.device("cpu"))
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and info["cpu_capability"]
