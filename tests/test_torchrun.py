"""`torchrun --nproc-per-node 2` on CPU (gloo) against one process on the same tiny config and data:
one record per stage, examples counted once, the dev metric of the DDP weights equal to a single process's
on those weights, CPU/RAM energy measured once per node, FLOPs summed over the ranks; and an interrupted
DDP run that keeps every rank's readings and resumes to the same weights as an unbroken DDP run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from greendistil import load_runs
from greendistil.cli import main
from greendistil.config import load_config
from greendistil.preflight import preflight
from greendistil.stages.context import StageContext
from greendistil.stages.evaluate import run_evaluate
from conftest import write_sst2, write_tiny_config
from fakes import PlainWindows
from builders import read_records_strict as records, student_weights, subprocess_env as _env

pytestmark = pytest.mark.slow

NUM_TRAIN, NUM_DEV = 67, 33  # odd sizes: a short last batch, ranks with unequal shares
DDP_CONFIG = {
    "run": {"num_threads": 1},
    "stages": [
        {"kind": "finetune", "role": "teacher", "batch_size": 16, "epochs": 2, "checkpoint_every_steps": 3},
        # No teacher cache: one process would cache (auto), DDP does not (each rank's later batches hold rows
        # other ranks saw), and the FLOPs below compare the same work.
        {"kind": "distill", "batch_size": 16, "epochs": 2, "checkpoint_every_steps": 3, "cache_teacher": False},
        {"kind": "evaluate", "roles": ["teacher", "student"], "batch_size": 8},
    ],
}
STAGES = ["finetune", "distill", "evaluate"]


def torchrun(*args: str, cwd: Path, signal_at: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "greendistil", *args]
    return subprocess.run(command, cwd=cwd, env=_env(signal_at), capture_output=True, text=True, timeout=300)


def single(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greendistil", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("torchrun")
    config = write_tiny_config(root, write_sst2(root / "glue", num_train=NUM_TRAIN, num_dev=NUM_DEV), DDP_CONFIG)
    ddp = torchrun("run", str(config), "--no-progress", "--run-id", "ddp", cwd=root)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    one = single("run", str(config), "--no-progress", "--run-id", "one", cwd=root)
    assert one.returncode == 0, one.stderr[-4000:]
    return {"root": root, "config": config, "ddp": root / "runs" / "ddp", "one": root / "runs" / "one",
            "stdout": ddp.stdout}


def by_stage(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["stage"]: r for r in records(run_dir)}


def test_one_record_per_stage_written_by_rank_0(runs: dict[str, Any]) -> None:
    assert [(r["stage"], r["status"]) for r in records(runs["ddp"])] == [(s, "ok") for s in STAGES]
    assert runs["stdout"].count("run directory:") == 1  # rank 0 alone reports
    assert not (runs["ddp"] / "ranks").exists()  # every reading reached rank 0
    for record in records(runs["ddp"]):
        assert (record["world_size"], record["num_nodes"], record["ddp_backend"]) == (2, 1, "gloo")
        assert [r["rank"] for r in record["by_rank"]] == [0, 1] and record["ranks_missing"] == []
    assert len(load_runs(runs["ddp"])) == 3


def test_examples_counted_once(runs: dict[str, Any]) -> None:
    ddp, one = by_stage(runs["ddp"]), by_stage(runs["one"])
    for stage, expected in (("finetune", 2 * NUM_TRAIN), ("distill", 2 * NUM_TRAIN), ("evaluate", 2 * NUM_DEV)):
        assert ddp[stage]["num_examples"] == one[stage]["num_examples"] == expected
        shares = [r["num_examples"] for r in ddp[stage]["by_rank"]]
        assert sum(shares) == expected and min(shares) > 0
        assert ddp[stage]["num_tokens"] == one[stage]["num_tokens"]  # the same examples, no repeats
    # The same global batches: as many optimizer steps as one process takes.
    assert ddp["finetune"]["num_steps"] == one["finetune"]["num_steps"] == 10


def test_dev_metric_equals_a_single_process_on_the_same_weights(runs: dict[str, Any]) -> None:
    config = load_config(runs["config"])
    checked = preflight(config)
    ddp_dir = runs["ddp"]
    ctx = StageContext(config=config, task=checked.task, run_dir=ddp_dir, device=torch.device("cpu"),
                       splits=checked.splits, teacher=checked.teacher,
                       artifacts={"teacher": ddp_dir / "checkpoints" / "finetune",
                                  "student": ddp_dir / "checkpoints" / "distill"})
    windows = PlainWindows("evaluate")
    run_evaluate(ctx, config.stages[2], windows)
    window = windows.window
    ddp_metrics = by_stage(ddp_dir)["evaluate"]["metrics"]
    assert window.counters.metrics == pytest.approx(ddp_metrics, abs=1e-12)
    assert window.counters.num_examples == 2 * NUM_DEV == by_stage(ddp_dir)["evaluate"]["num_examples"]


def test_cpu_and_ram_measured_once_per_node(runs: dict[str, Any]) -> None:
    for record in records(runs["ddp"]):
        (node,) = record["energy_by_node"]  # one node, however many ranks
        assert node["measured_by_rank"] == 0 and node["hostname"]
        assert record["cpu_energy_kwh"] == node["cpu_energy_kwh"] > 0
        assert record["ram_energy_kwh"] == node["ram_energy_kwh"] > 0
        assert record["energy_kwh"] == pytest.approx(record["cpu_energy_kwh"] + record["ram_energy_kwh"])
        assert "local rank 0 of each node (1 node(s))" in record["energy_meters"]["cpu"]
        assert record["energy_by_gpu"] == []  # CPU only: no GPU to attribute
    # One codecarbon tracker ran per window (rank 0's), not one per rank; each tracker has its own run_id
    # (it writes a row at every checkpoint flush and at the end).
    with open(runs["ddp"] / "emissions.csv", encoding="utf-8") as handle:
        trackers = {row["run_id"] for row in csv.DictReader(handle)}
    assert len(trackers) == len(STAGES)
    assert not list(runs["ddp"].glob("emissions-node*.csv"))


def test_flops_summed_over_ranks(runs: dict[str, Any]) -> None:
    ddp, one = by_stage(runs["ddp"]), by_stage(runs["one"])
    for stage in STAGES:
        per_rank = [r["flops"] for r in ddp[stage]["by_rank"]]
        assert all(f > 0 for f in per_rank) and ddp[stage]["flops"] == sum(per_rank)
        assert "summed over 2 ranks" in ddp[stage]["flops_source"]
        # Each rank's batches are padded to their own longest row: a little less padding than one process.
        assert 0.7 * one[stage]["flops"] < ddp[stage]["flops"] < 1.05 * one[stage]["flops"]


def test_interrupted_ddp_run_keeps_every_rank_and_resumes_exactly(runs: dict[str, Any]) -> None:
    root, config = runs["root"], runs["config"]
    killed = torchrun("run", str(config), "--no-progress", "--run-id", "ddp-killed", cwd=root,
                      signal_at="step:distill:5:SIGTERM")  # both ranks, after the step-3 checkpoint
    assert killed.returncode != 0
    run_dir = root / "runs" / "ddp-killed"
    assert [(r["stage"], r["status"]) for r in records(run_dir)] == [("finetune", "ok"), ("distill", "interrupted")]
    interrupted = records(run_dir)[-1]
    assert interrupted["ranks_missing"] == [1] and "ranks/rank-<r>.jsonl" in interrupted["measurement_errors"]["distributed"]
    assert interrupted["energy_kwh"] > 0 and interrupted["num_steps"] == 5
    (rank1,) = records_of(run_dir / "ranks" / "rank-1.jsonl")
    assert (rank1["stage"], rank1["status"], rank1["num_steps"]) == ("distill", "interrupted", 5)
    assert rank1["cpu_energy_kwh"] is None  # rank 1 measures no CPU: rank 0 did, for the node
    state = torch.load(run_dir / "checkpoints" / "distill.state.pt", weights_only=False)
    assert state["position"]["world_size"] == 2 and len(state["rank_rngs"]) == 2  # each rank's own RNG
    assert not torch.equal(state["rank_rngs"][0]["torch"], state["rank_rngs"][1]["torch"])

    resumed = torchrun("run", "--resume", str(run_dir), "--no-progress", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    after = records(run_dir)
    assert [(r["stage"], r["status"], r["segment"]) for r in after] == [
        ("finetune", "ok", 1), ("distill", "interrupted", 1), ("distill", "ok", 2), ("evaluate", "ok", 1)]
    assert after[2]["resumed_from_step"] == 3
    reference = student_weights(runs["ddp"])
    weights = student_weights(run_dir)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)  # bit-identical to the unbroken DDP run
    assert after[-1]["metrics"] == by_stage(runs["ddp"])["evaluate"]["metrics"]


def test_resume_with_another_process_count_is_refused(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A DDP checkpoint continued by one process would take other batches: the stage stops and says how to resume."""
    root, config = runs["root"], runs["config"]
    killed = torchrun("run", str(config), "--no-progress", "--run-id", "ddp-recount", cwd=root,
                      signal_at="step:finetune:4:SIGTERM")
    assert killed.returncode != 0
    run_dir = root / "runs" / "ddp-recount"
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 1  # one process, in this one
    assert "written by 2 process(es), this run has 1; resume with the same count" in capsys.readouterr().err
    again = torchrun("run", "--resume", str(run_dir), "--no-progress", cwd=root)
    assert again.returncode == 0, again.stderr[-4000:]
    assert [r["status"] for r in records(run_dir) if r["stage"] == "finetune"] == ["interrupted", "failed", "ok"]


def test_a_budget_stops_every_rank_together_and_a_raised_one_resumes_exactly(runs: dict[str, Any]) -> None:
    """Rank 0's verdict reaches every rank (no rank waits for a peer that stopped); the stopped window is
    gathered like a finished one; the run-level energy budget sums the ranks' live readings (a collective at
    each log interval) without deadlocking; a raised budget resumes to the unbroken DDP run's weights."""
    root, config = runs["root"], runs["config"]
    stopped = torchrun("run", str(config), "--no-progress", "--run-id", "ddp-budget", "--set", "run.max_energy_kwh=1000",
                       "--set", "stages.distill.max_duration_s=0.001", cwd=root)  # spent by loading, before a step
    assert stopped.returncode != 0 and "stopped at a budget: stages.distill.max_duration_s" in stopped.stderr, \
        stopped.stderr[-4000:]
    run_dir = root / "runs" / "ddp-budget"
    assert [(r["stage"], r["status"]) for r in records(run_dir)] == [("finetune", "ok"), ("distill", "stopped-budget")]
    stop = records(run_dir)[-1]
    assert stop["num_steps"] == 0 and not stop["ranks_missing"] and stop["world_size"] == 2
    assert stop["budget"]["stopped_by"] == "stages.distill.max_duration_s"
    resumed = torchrun("run", "--resume", str(run_dir), "--no-progress", "--set", "stages.distill.max_duration_s=1000",
                       cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [r["status"] for r in records(run_dir) if r["stage"] == "distill"] == ["stopped-budget", "ok"]
    reference, weights = student_weights(runs["ddp"]), student_weights(run_dir)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def records_of(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_rank_measures_its_own_gpu(tmp_path: Path) -> None:
    """On a GPU machine: one NVML reading per rank, each of a different GPU, adding up to the record's."""
    nproc = min(2, torch.cuda.device_count())
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue", num_train=NUM_TRAIN, num_dev=NUM_DEV),
                               {**DDP_CONFIG, "run": {**DDP_CONFIG["run"], "device": "cuda"}})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "greendistil", "run", str(config), "--no-progress", "--run-id", "gpu"]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for record in records(tmp_path / "runs" / "gpu"):
        gpus = record["energy_by_gpu"]
        assert [g["rank"] for g in gpus] == list(range(nproc))
        assert len({(g["node_rank"], g["nvml_index"]) for g in gpus}) == nproc  # no GPU measured twice
        assert all(g["gpu_energy_source"].startswith("measured:nvml") for g in gpus)
        assert record["gpu_energy_kwh"] == pytest.approx(sum(g["gpu_energy_kwh"] for g in gpus))
        assert record["ddp_backend"] == ("nccl" if nproc > 1 else None)


def test_batch_smaller_than_the_process_count_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"),
                               {"stages": [{"kind": "finetune", "role": "teacher", "batch_size": 1}]})
    done = torchrun("run", str(config), "--no-progress", "--run-id", "tiny-batch", cwd=tmp_path)
    assert done.returncode != 0
    assert "stages.finetune.batch_size: 1 is smaller than the 2 DDP processes" in done.stderr
    assert not (tmp_path / "runs" / "tiny-batch").exists()
