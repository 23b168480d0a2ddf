"""Kill trials: real `greendistil run` processes stopped by SIGTERM / SIGINT at several points, then resumed.

Each trial checks that the log parses, that the stopped stage has an `interrupted` record with energy > 0,
that `--resume` completes the run as new segments, that the summed totals equal the parts, and that a
run resumed from a mid-stage checkpoint ends with exactly the weights of a run that was never stopped.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from greendistil import load_runs
from greendistil.cli import main
from builders import read_records_strict as records, student_weights, subprocess_env as _env
from conftest import write_sst2, write_tiny_config

pytestmark = pytest.mark.slow

# 64 examples, batch 16: 4 steps an epoch; 2 epochs = 8 steps per training stage; step checkpoints every 3
# steps plus one at the end of epoch 1 (step 4): checkpoints at steps 3, 4 and 6.
TRIAL_CONFIG = {"stages": [
    {"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 2, "checkpoint_every_steps": 3},
    {"kind": "distill", "batch_size": 16, "epochs": 2, "checkpoint_every_steps": 3},
    {"kind": "evaluate", "roles": ["teacher", "student"]},
]}
STAGES = ["finetune", "distill", "evaluate"]


def greendistil_cli(*args: str, cwd: Path, signal_at: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greendistil", *args], cwd=cwd, env=_env(signal_at),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trial_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trial config, and a reference run of it that nobody interrupted."""
    root = tmp_path_factory.mktemp("trials")
    config = write_tiny_config(root, write_sst2(root / "glue"), TRIAL_CONFIG)
    done = greendistil_cli("run", str(config), "--no-progress", "--run-id", "reference", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = root / "runs" / "reference"
    return {"root": root, "config": config, "reference": reference, "records": records(reference)}


KILL_POINTS = [
    # (id, GREENDISTIL_SIGNAL_AT, exit code, the stage stopped (None: between stages), its step checkpoint)
    ("model-load-sigterm", "stage-start:distill:SIGTERM", 143, "distill", None),
    ("mid-stage-sigterm", "step:finetune:6:SIGTERM", 143, "finetune", 4),  # before the step-6 checkpoint
    ("mid-stage-sigint", "step:distill:5:SIGINT", 130, "distill", 4),
    ("between-stages-sigint", "between-stages:finetune:SIGINT", 130, None, None),
    ("checkpoint-write-sigterm", "checkpoint-write@2:SIGTERM", 143, "finetune", 3),  # the step-4 write is lost
]


@pytest.mark.parametrize(("signal_at", "exit_code", "stopped", "resumed_from"), [k[1:] for k in KILL_POINTS],
                         ids=[k[0] for k in KILL_POINTS])
def test_kill_and_resume(trial_setup: dict[str, Any], signal_at: str, exit_code: int, stopped: str | None,
                         resumed_from: int | None, capsys: pytest.CaptureFixture[str]) -> None:
    root, run_id = trial_setup["root"], f"trial-{signal_at.replace(':', '-').replace('@', '-')}"
    run_dir = root / "runs" / run_id
    killed = greendistil_cli("run", str(trial_setup["config"]), "--no-progress", "--run-id", run_id, cwd=root,
                             signal_at=signal_at)
    assert killed.returncode == exit_code, killed.stderr[-3000:]
    assert "Traceback" not in killed.stderr
    assert f"greendistil run --resume {run_dir}" in killed.stderr
    before = records(run_dir)
    if stopped is None:
        assert [(r["stage"], r["status"]) for r in before] == [("finetune", "ok")]
    else:
        last = before[-1]
        assert (last["stage"], last["status"], last["segment"]) == (stopped, "interrupted", 1)
        assert last["error_type"] == ("RunInterrupted" if exit_code == 143 else "KeyboardInterrupt")
        assert last["energy_kwh"] > 0 and last["duration_s"] > 0
        assert last["energy_kwh"] == pytest.approx(last["cpu_energy_kwh"] + last["ram_energy_kwh"])
        if resumed_from:
            assert last["num_steps"] > 0 and last["flops"] > 0
        assert (run_dir / "checkpoints" / f"{stopped}.state.pt").is_file() == (resumed_from is not None)

    # The resume runs in this process (the stop needed a real process and a real signal; the resume does
    # not): a process start costs more than the tiny run itself.
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0, capsys.readouterr().err[-3000:]
    after = records(run_dir)
    assert after[:len(before)] == before  # append-only
    new = after[len(before):]
    assert [r["stage"] for r in new] == STAGES[STAGES.index(stopped or "finetune") + (0 if stopped else 1):]
    assert all(r["status"] == "ok" for r in new)
    if stopped is not None:
        assert new[0]["segment"] == 2 and new[0]["resumed_from_step"] == resumed_from
    assert not list((run_dir / "checkpoints").glob("*.state.pt*"))  # states and temporary files cleaned up

    # The stage's totals are the sums of its parts, in the records and in load_runs.
    frame = load_runs(run_dir)
    assert list(frame["stage"]) == STAGES and list(frame["status"]) == ["ok"] * 3
    for stage in STAGES:
        parts = [r for r in after if r["stage"] == stage]
        row = frame[frame["stage"] == stage].iloc[0]
        assert row["num_segments"] == len(parts)
        for key in ("energy_kwh", "co2_kg", "duration_s", "num_examples", "num_steps", "flops"):
            assert row[key] == pytest.approx(sum(p[key] or 0 for p in parts)), (stage, key)
        assert row["energy_kwh"] == pytest.approx(row["cpu_energy_kwh"] + row["ram_energy_kwh"])
    if stopped is not None:
        row = frame[frame["stage"] == stopped].iloc[0]
        assert bool(row["resumed"]) and row["segment_statuses"] == "interrupted,ok"
        assert new[0]["num_steps"] == 8 - (resumed_from or 0)  # the resumed segment did only what was left

    # Stopped and resumed (from a checkpoint or between stages): exactly the run nobody interrupted.
    reference = {r["stage"]: r for r in trial_setup["records"]}
    final_eval = [r for r in after if r["stage"] == "evaluate"][-1]
    assert final_eval["metrics"] == reference["evaluate"]["metrics"]
    ref_weights, weights = student_weights(trial_setup["reference"]), student_weights(run_dir)
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)

    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "nothing to resume" in out
    assert records(run_dir) == after


def test_external_sigterm_with_a_second_signal_while_shutting_down(trial_setup: dict[str, Any]) -> None:
    """A scheduler's SIGTERM from outside at a moment the test does not choose, then more signals while the
    record is being written: exit 143, one whole interrupted record, and the run resumes."""
    root = trial_setup["root"]
    config = write_tiny_config(root, root / "glue", {"stages": [
        {"kind": "finetune", "role": "teacher", "batch_size": 4, "epochs": 20, "checkpoint_every_steps": 10},
        {"kind": "evaluate", "roles": ["teacher"]}]}, name="long.toml")
    run_dir = root / "runs" / "external"
    process = subprocess.Popen([sys.executable, "-m", "greendistil", "run", str(config), "--no-progress",
                                "--run-id", "external"], cwd=root, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "finetune.state.pt").is_file():  # mid-stage, past a checkpoint
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.02)
        for second in (signal.SIGINT, signal.SIGTERM):
            if process.poll() is None:
                process.send_signal(second)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr[-3000:]
    (record,) = records(run_dir)
    assert record["status"] == "interrupted" and record["energy_kwh"] > 0 and record["num_steps"] >= 10
    # An override that changes nothing is allowed.
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--set", "stages.0.epochs=20"]) == 0
    frame = load_runs(run_dir)
    finetune = frame[frame["stage"] == "finetune"].iloc[0]
    assert finetune["num_segments"] == 2 and finetune["num_steps"] >= 20 * 16


def test_concurrent_runs_share_a_runs_root_without_touching_each_other(tmp_path: Path) -> None:
    """Runs started at once into one runs/ get distinct ids and write only their own files; two runs
    given the same id: exactly one gets it, the other exits 2 having written nothing."""
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"),
                               {"stages": [{"kind": "finetune", "role": "teacher", "batch_size": 16},
                                           {"kind": "evaluate", "roles": ["teacher"]}]})
    commands = [["run", str(config), "--no-progress"]] * 2 + [["run", str(config), "--no-progress", "--run-id", "same"]] * 2
    processes = [subprocess.Popen([sys.executable, "-m", "greendistil", *args], cwd=tmp_path, env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in commands]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    for p in processes:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in outcomes[:2]] == [0, 0], [err[-2000:] for _, err in outcomes[:2]]
    same = sorted(code for code, _ in outcomes[2:])
    assert same == [0, 2], outcomes[2:]
    loser = next(err for code, err in outcomes[2:] if code == 2)
    assert loser.count("\n") == 1 and "already exists" in loser
    run_dirs = sorted(p for p in (tmp_path / "runs").iterdir())
    assert len(run_dirs) == 3 and len({p.name for p in run_dirs}) == 3
    for run_dir in run_dirs:
        lines = records(run_dir)
        assert [r["stage"] for r in lines] == ["finetune", "evaluate"]
        assert {r["run_id"] for r in lines} == {run_dir.name}
        emissions = (run_dir / "emissions.csv").read_text(encoding="utf-8").splitlines()
        assert len(emissions) == 3 and all(run_dir.name in line for line in emissions[1:])
