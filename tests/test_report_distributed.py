"""The report's per-node and per-GPU section for distributed runs, from synthetic records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from greendistil.report import write_report
from greendistil.report.distributed import distributed_section
from greendistil.report.frame import load_report_frame

from builders import full_run, pick, section_of, stage_record, table_rows, without, write_run

HEADING = "## Energy per node and per GPU"
COUNTER, SAMPLES = "measured:nvml-counter", "measured:nvml-power-samples"


def ddp_record(run_id: str, stage: str, nodes: list[dict[str, Any]], *, backend: str | None,
               examples_per_rank: int = 250, flops_per_rank: float = 1e14, **extra: Any) -> dict[str, Any]:
    """A stage record whose totals are the sums of its parts: `nodes` = [{host, cpu, cpu_source, ram, gpus}],
    `gpus` = [(kWh, source)] per GPU on the node. Ranks are numbered node by node, one per GPU (or two per
    GPU-less node); each node's CPU and RAM are measured by its local rank 0."""
    by_node, by_gpu, by_rank, rank = [], [], [], 0
    for node_rank, node in enumerate(nodes):
        num_ranks = len(node["gpus"]) or 2
        gpu_kwh = sum(kwh for kwh, _ in node["gpus"]) if node["gpus"] else None
        by_node.append({"node_rank": node_rank, "hostname": node["host"], "measured_by_rank": rank,
                        "cpu_energy_kwh": node["cpu"], "cpu_energy_source": node["cpu_source"],
                        "ram_energy_kwh": node["ram"], "ram_energy_source": "estimated:ram-model",
                        "gpu_energy_kwh": gpu_kwh, "energy_kwh": node["cpu"] + node["ram"] + (gpu_kwh or 0.0),
                        "num_gpus": len(node["gpus"])})
        for local_rank in range(num_ranks):
            if node["gpus"]:
                kwh, source = node["gpus"][local_rank]
                by_gpu.append({"rank": rank, "local_rank": local_rank, "node_rank": node_rank, "hostname": node["host"],
                               "nvml_index": local_rank, "name": "NVIDIA H200", "uuid": f"GPU-{rank:04d}",
                               "gpu_energy_kwh": kwh, "gpu_energy_source": source, "error": None})
            by_rank.append({"rank": rank, "local_rank": local_rank, "node_rank": node_rank,
                            "num_examples": examples_per_rank, "num_tokens": examples_per_rank * 32, "num_steps": 10,
                            "flops": flops_per_rank, "flops_source": "counted:torch-flop-counter(3/10 steps sampled)",
                            "duration_s": 100.0})
            rank += 1
    gpu_total = sum(g["gpu_energy_kwh"] for g in by_gpu) if by_gpu else None
    fields = {
        "world_size": rank, "num_nodes": len(nodes), "ddp_backend": backend,
        "energy_meters": {"cpu": f"codecarbon on local rank 0 of each node ({len(nodes)} nodes)",
                          "ram": f"codecarbon on local rank 0 of each node ({len(nodes)} nodes)",
                          "gpu": f"nvml: each rank's own GPU ({rank} ranks)" if by_gpu else "unavailable"},
        "energy_by_node": by_node, "energy_by_gpu": by_gpu, "by_rank": by_rank, "ranks_missing": [],
    }
    return stage_record(run_id, stage, "distill", "student", cpu=sum(n["cpu"] for n in nodes), gpu=gpu_total,
                        ram=sum(n["ram"] for n in nodes), flops=flops_per_rank * rank,
                        num_examples=examples_per_rank * rank, **{**fields, **extra})


TWO_BY_TWO = [
    {"host": "node-a", "cpu": 0.1, "cpu_source": "estimated:tdp-load-model", "ram": 0.02,
     "gpus": [(0.25, COUNTER), (0.25, COUNTER)]},
    {"host": "node-b", "cpu": 0.1, "cpu_source": "measured:rapl", "ram": 0.02, "gpus": [(0.3, SAMPLES), (0.2, COUNTER)]},
]
CPU_ONLY = [{"host": "box", "cpu": 0.01, "cpu_source": "estimated:tdp-load-model", "ram": 0.002, "gpus": []}]


def rows(markdown: str, run: str, stage: str) -> list[dict[str, str]]:
    """Every table row (keyed by header) whose `run` and `stage` cells are `run` and `stage`."""
    return [r for r in table_rows(markdown) if r.get("run") == run and r.get("stage") == stage]


def row(markdown: str, run: str, stage: str, column: str, start: str) -> dict[str, str]:
    """The one row of `run` and `stage` whose `column` cell starts with `start`."""
    matches = [r for r in rows(markdown, run, stage) if column in r and r[column].startswith(start)]
    assert len(matches) == 1, f"{len(matches)} rows {run} | {stage} | {column}: {start}... in:\n{markdown}"
    return matches[0]


def test_two_nodes_two_gpus_each_add_up_with_sources(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "ddp", "sst2", [ddp_record("ddp", "distill", TWO_BY_TWO, backend="nccl")])
    report = write_report([tmp_path / "runs"], tmp_path / "out").read_text(encoding="utf-8")
    # After the cost section (whose stages it breaks down), before the teacher-student comparison.
    assert report.index("## Cost of the result") < report.index(HEADING) < report.index("## Teacher vs student")
    text = section_of(report, HEADING)
    nodes = section_of(text, "### Per node")
    node_a = row(nodes, "ddp", "distill", "node", "0 (`node-a`)")
    assert pick(node_a, "measured by", "CPU kWh", "RAM kWh", "GPU kWh", "node kWh") == [
        "rank 0", "0.1 (est.)[^estimated-tdp-load-model]", "0.02 (est.)[^estimated-ram-model]", "0.5 (meas.)",
        "0.62 (est.+meas.)"]
    node_b = row(nodes, "ddp", "distill", "node", "1 (`node-b`)")
    assert node_b["measured by"] == "rank 2" and node_b["CPU kWh"] == "0.1 (meas.)[^measured-rapl]"
    assert node_b["node kWh"] == "0.62 (est.+meas.)"
    total = row(nodes, "ddp", "distill", "node", "**all 2 node(s)**")
    assert total == {"run": "ddp", "stage": "distill", "node": "**all 2 node(s)**", "measured by": "",
                     "CPU kWh": "0.2 (est.+meas.)", "RAM kWh": "0.04 (est.)", "GPU kWh": "1 (meas.)",
                     "node kWh": "1.24 (est.+meas.)", "stage kWh (record)": "1.24 (est.+meas.)", "check": "✓ adds up"}
    gpus = section_of(text, "### Per GPU")
    assert len(rows(gpus, "ddp", "distill")) == 4
    assert row(gpus, "ddp", "distill", "rank", "2 (local 0)") == {
        "run": "ddp", "stage": "distill", "rank": "2 (local 0)", "node": "1 (`node-b`)", "NVML index": "0",
        "GPU": "NVIDIA H200", "GPU kWh": "0.3 (meas.)[^measured-nvml-power-samples]", "source": "NVML power samples",
        "error": "—"}
    assert pick(row(gpus, "ddp", "distill", "rank", "3 (local 1)"), "GPU kWh", "source") == [
        "0.2 (meas.)[^measured-nvml-counter]", "NVML energy counter"]
    ranks = section_of(text, "### Work per rank")
    assert len(rows(ranks, "ddp", "distill")) == 5
    all_ranks = row(ranks, "ddp", "distill", "rank", "**all 4 rank(s)**")
    assert all_ranks["examples"] == "1,000" and all_ranks["FLOPs"] == "4.00e14 (counted)"
    assert all_ranks["check"] == "✓ adds up"
    meters = section_of(text, "### Meters")
    assert "- ddp distill: 4 process(es) on 2 node(s), backend `nccl`." in meters
    assert "GPU: nvml: each rank's own GPU (4 ranks)" in meters and "⚠" not in meters
    # Each source's footnote is defined once in the report: by the cost section, or here when it lacks it.
    for label in ("measured-nvml-counter", "measured-nvml-power-samples", "measured-rapl", "estimated-ram-model"):
        assert report.count(f"[^{label}]:") == 1, label
    assert "[^measured-nvml-power-samples]:" in text


def test_cpu_only_gloo_run_has_nodes_and_no_gpu_rows(tmp_path: Path) -> None:
    write_run(tmp_path, "cpu2", "sst2", [ddp_record("cpu2", "distill", CPU_ONLY, backend="gloo")])
    text = distributed_section(load_report_frame([tmp_path]))
    node = row(section_of(text, "### Per node"), "cpu2", "distill", "node", "0 (`box`)")
    assert node["CPU kWh"] == "0.01 (est.)[^estimated-tdp-load-model]" and node["GPU kWh"] == "— (no GPU)"
    total = row(text, "cpu2", "distill", "node", "**all 1 node(s)**")
    assert total["GPU kWh"] == "— (no GPU)" and total["check"] == "✓ adds up"
    assert total["node kWh"] == total["stage kWh (record)"] == "0.012 (est.)"
    gpus = section_of(text, "### Per GPU")
    assert "| NVML index |" not in gpus and "No GPU in cpu2 distill: CPU and RAM only" in gpus
    assert row(text, "cpu2", "distill", "rank", "**all 2 rank(s)**")["examples"] == "500"
    assert "2 process(es) on 1 node(s), backend `gloo`" in text and "GPU: unavailable" in text


DISTRIBUTED_FIELDS = ("world_size", "num_nodes", "ddp_backend", "energy_meters", "energy_by_node", "energy_by_gpu",
                      "by_rank", "ranks_missing")


def test_single_process_cpu_and_old_records_have_no_section(tmp_path: Path) -> None:
    full_run(tmp_path / "runs", "plain")  # one process: the distributed fields are null
    old = [without(stage_record("old", stage, kind, role, cpu=0.1, gpu=None, ram=0.1, flops=None, num_examples=10),
                   *DISTRIBUTED_FIELDS)
           for stage, kind, role in (("finetune", "finetune", "teacher"), ("distill", "distill", "student"))]
    write_run(tmp_path / "old-only", "old", "sst2", old)  # from before the distributed fields: no such columns
    assert distributed_section(load_report_frame([tmp_path / "old-only"])) == ""
    write_run(tmp_path / "runs", "old", "sst2", old)
    single = ddp_record("single", "distill", CPU_ONLY, backend=None, world_size=1,
                        by_rank=[{"rank": 0, "local_rank": 0, "node_rank": 0, "num_examples": 500}])
    write_run(tmp_path / "runs", "single", "sst2", [single])
    assert distributed_section(load_report_frame([tmp_path / "runs"])) == ""
    report = write_report([tmp_path / "runs"], tmp_path / "out").read_text(encoding="utf-8")
    assert HEADING not in report


def test_single_gpu_run_gets_its_gpu_table(tmp_path: Path) -> None:
    one_gpu = [{"host": "ws", "cpu": 0.01, "cpu_source": "measured:rapl", "ram": 0.002, "gpus": [(0.05, COUNTER)]}]
    write_run(tmp_path, "gpu1", "sst2", [ddp_record("gpu1", "distill", one_gpu, backend=None)])
    text = distributed_section(load_report_frame([tmp_path]))
    assert len(rows(section_of(text, "### Per GPU"), "gpu1", "distill")) == 1
    assert "1 process(es) on 1 node(s), no process group" in text
    assert row(text, "gpu1", "distill", "node", "**all 1 node(s)**")["check"] == "✓ adds up"


def test_parts_that_do_not_add_up_are_flagged(tmp_path: Path) -> None:
    record = ddp_record("bad", "distill", TWO_BY_TWO, backend="nccl", ranks_missing=[3])
    record["energy_kwh"] = 1.3  # the nodes hold 1.24
    record["num_examples"] = 1200  # the ranks hold 4 × 250
    record["energy_by_gpu"][0]["error"] = "NVMLError_GpuIsLost"
    write_run(tmp_path, "bad", "sst2", [record])
    text = distributed_section(load_report_frame([tmp_path]))
    check = row(section_of(text, "### Per node"), "bad", "distill", "node", "**all 2 node(s)**")["check"]
    assert check.startswith("⚠ kWh does not add up") and "1.24 vs record 1.3" in check
    ranks_check = row(section_of(text, "### Work per rank"), "bad", "distill", "rank", "**all 4 rank(s)**")["check"]
    assert "examples does not add up (1000 vs record 1200)" in ranks_check and "FLOPs" not in ranks_check
    gpu_0 = row(section_of(text, "### Per GPU"), "bad", "distill", "rank", "0 (local 0)")
    assert gpu_0["error"] == "⚠ NVMLError_GpuIsLost"
    assert "⚠ bad distill: the readings of rank(s) 3 could not be gathered" in section_of(text, "### Meters")


def test_a_tiny_difference_is_rounding_not_a_mismatch(tmp_path: Path) -> None:
    record = ddp_record("close", "distill", TWO_BY_TWO, backend="nccl")
    record["energy_kwh"] = 1.24 * (1 + 1e-9)
    write_run(tmp_path, "close", "sst2", [record])
    text = distributed_section(load_report_frame([tmp_path]))
    assert row(text, "close", "distill", "node", "**all 2 node(s)**")["check"] == "✓ adds up"


def test_resumed_stage_shows_last_segment_parts_unchecked(tmp_path: Path) -> None:
    first = ddp_record("res", "distill", TWO_BY_TWO, backend="nccl", status="interrupted",
                       error_type="RunInterrupted")
    second = ddp_record("res", "distill", TWO_BY_TWO, backend="nccl", segment=2, resumed_from_step=4)
    write_run(tmp_path, "res", "sst2", [first, second])
    text = distributed_section(load_report_frame([tmp_path]))
    total = row(text, "res", "distill", "node", "**all 2 node(s)**")
    # The stage total is summed over both segments; the nodes are the last segment's: no false alarm.
    assert total["node kWh"] == "1.24 (est.+meas.)" and total["stage kWh (record)"] == "2.48 (est.+meas.)"
    assert total["check"] == "not checked: resumed, last of 2 segments[^distributed-resumed]"
    assert text.count("[^distributed-resumed]:") == 1
