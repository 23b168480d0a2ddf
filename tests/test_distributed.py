"""DDP pieces that need no second process: torchrun's environment, the sharded batches, and how per-rank
readings combine into one record (CPU and RAM once per node, GPU per rank, work summed over ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from greendistil.data.batching import EncodedSplit, LengthGroupedBatchSampler, ShardedBatchSampler, make_loader
from greendistil.distributed import SINGLE, Dist, choose_backend, from_env
from greendistil.errors import ConfigError
from greendistil.measure.carbon import CarbonReading
from greendistil.measure.gpu_reading import GpuReading
from greendistil.measure.ranks import FlopFigures, RankReading, Work, combine, combine_sources
from greendistil.measure.window import Window, compose_record
from greendistil.runlog import store as runlog
from greendistil.runlog.schema import FIELD_NAMES

from builders import make_run

# ---- torchrun's environment ------------------------------------------------------------------------


def test_no_torchrun_environment_is_a_single_process() -> None:
    assert from_env({}) is SINGLE and not SINGLE.enabled and SINGLE.is_main and SINGLE.is_node_leader


def test_torchrun_environment_gives_the_rank_and_node() -> None:
    me = from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"})
    assert (me.rank, me.world_size, me.local_rank, me.node_rank, me.num_nodes) == (5, 8, 1, 1, 2)
    assert me.enabled and not me.is_main and not me.is_node_leader


@pytest.mark.parametrize("env", [
    {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"},  # rank outside the world
    {"RANK": "x", "WORLD_SIZE": "2"},
    {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"},
])
def test_impossible_environment_is_refused_by_name(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="torchrun"):
        from_env(env)


def test_backend_follows_the_hardware() -> None:
    assert choose_backend("auto", cuda_available=False) == "gloo"
    assert choose_backend("auto", cuda_available=True) == "nccl"
    with pytest.raises(ConfigError, match="run.ddp_backend: 'nccl' needs CUDA"):
        choose_backend("nccl", cuda_available=False)
    with pytest.raises(ConfigError, match="valid: auto, gloo, nccl"):
        choose_backend("mpi", cuda_available=False)


# ---- sharded global batches ------------------------------------------------------------------------


def _split(num_examples: int) -> EncodedSplit:
    ids = [[101] + [7] * (1 + i % 9) + [102] for i in range(num_examples)]
    return EncodedSplit(input_ids=ids, token_type_ids=[[0] * len(x) for x in ids],
                        labels=torch.zeros(num_examples, dtype=torch.long))


def _shards(num_examples: int, batch_size: int, world_size: int, group_by_length: bool) -> list[list[list[int]]]:
    """Each rank's batches of one epoch (as example indices)."""
    split = _split(num_examples)
    out = []
    for rank in range(world_size):
        loader = make_loader(split, batch_size=batch_size, pad_token_id=0, shuffle=True, seed=3,
                             group_by_length=group_by_length, rank=rank, world_size=world_size)
        out.append([list(b) for b in loader.batch_sampler])
        assert len(loader) == len(out[-1])
    return out


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize(("num_examples", "batch_size", "world_size"),
                         [(67, 16, 2), (64, 16, 2), (65, 16, 2), (66, 16, 3), (33, 8, 4), (5, 4, 2)])
def test_each_example_once_per_epoch_and_every_rank_in_every_step(num_examples: int, batch_size: int,
                                                                  world_size: int, group_by_length: bool) -> None:
    shards = _shards(num_examples, batch_size, world_size, group_by_length)
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank, or DDP hangs
    assert all(len(batch) >= 1 for shard in shards for batch in shard)
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(num_examples))


@pytest.mark.parametrize("group_by_length", [True, False])
def test_ranks_together_take_the_single_process_batches(group_by_length: bool) -> None:
    """Same seed, same global batches: rank 0 and rank 1's rows of step k are the single process's step k."""
    split = _split(64)
    single = make_loader(split, batch_size=16, pad_token_id=0, shuffle=True, seed=3, group_by_length=group_by_length)
    expected = [sorted(b) for b in single.batch_sampler]
    shards = _shards(64, 16, 2, group_by_length)
    assert [sorted(a + b) for a, b in zip(*shards)] == expected


def test_a_too_small_batch_is_merged_not_dropped() -> None:
    """67 = 4 x 16 + 3 with 4 ranks: the 3-row batch cannot give each rank a row, so it joins a neighbour."""
    batches = LengthGroupedBatchSampler(list(range(67)), batch_size=16, seed=0)
    sharded = ShardedBatchSampler(batches, num_examples=67, batch_size=16, rank=0, world_size=4)
    assert len(batches) == 5 and len(sharded) == 4 == len(list(sharded))


def test_epochs_reshuffle_identically_on_every_rank() -> None:
    split = _split(40)
    loaders = [make_loader(split, batch_size=8, pad_token_id=0, shuffle=True, seed=1, rank=r, world_size=2)
               for r in range(2)]
    epochs = []
    for epoch in range(2):
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
        epochs.append([list(loader.batch_sampler) for loader in loaders])
    assert epochs[0] != epochs[1]  # a new order each epoch ...
    for rank_batches in epochs:  # ... and the ranks still split one order between them
        assert sorted(i for batches in rank_batches for b in batches for i in b) == list(range(40))


@pytest.mark.parametrize(("num_examples", "batch_size", "match"), [(1, 4, "cannot be shared by 2"),
                                                                   (10, 1, "batch_size: 1 is smaller")])
def test_data_too_small_for_the_ranks_is_a_clear_error(num_examples: int, batch_size: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_loader(_split(num_examples), batch_size=batch_size, pad_token_id=0, shuffle=True, seed=0,
                    rank=0, world_size=2)


# ---- combining the ranks' readings -----------------------------------------------------------------


def _carbon(cpu_kwh: float, ram_kwh: float, cpu_source: str = "measured:rapl") -> CarbonReading:
    return CarbonReading(cpu_energy_kwh=cpu_kwh, cpu_energy_source=cpu_source, ram_energy_kwh=ram_kwh,
                         ram_energy_source="estimated:ram-model", cpu_power_w=10.0, ram_power_w=2.0)


def _gpu(energy_j: float | None, index: int) -> GpuReading:
    if energy_j is None:
        return GpuReading.unavailable("stop-failed", "GPU is lost")
    device = {"index": index, "name": "H200", "uuid": f"GPU-{index}", "energy_j": energy_j,
              "source": "measured:nvml-counter", "error": None}
    return GpuReading(energy_j=energy_j, source="measured:nvml-counter", duration_s=2.0, devices=(device,),
                      power_samples=((0.5, index, 100.0), (1.5, index, 120.0)))


def _reading(rank: int, *, local_world: int = 2, carbon: CarbonReading | None = None, gpu_j: float | None = 3.6e5,
             examples: int = 10, flops: int | None = 1000) -> RankReading:
    local, node = rank % local_world, rank // local_world
    return RankReading(rank=rank, local_rank=local, node_rank=node, hostname=f"node{node}", duration_s=2.0 + rank,
                       carbon=carbon, gpu=_gpu(gpu_j, local), work=Work(
                           num_examples=examples, num_tokens=5 * examples, num_padded_tokens=6 * examples, num_steps=3,
                           flops_analytic=100.0,
                           flops=FlopFigures(total=flops, source="counted:torch-flop-counter(all 3 steps)",
                                             by_component={"student_train": flops or 0})))


TWO_NODES = Dist(rank=0, world_size=4, local_rank=0, local_world_size=2, node_rank=0, backend="nccl")


def test_two_nodes_two_gpus_each_count_every_component_once() -> None:
    readings = [_reading(0, carbon=_carbon(0.01, 0.002)), _reading(1),
                _reading(2, carbon=_carbon(0.03, 0.004)), _reading(3)]
    total = combine(readings, TWO_NODES, missing=[])
    assert total.carbon.cpu_energy_kwh == pytest.approx(0.04)  # two nodes, not four ranks
    assert total.carbon.ram_energy_kwh == pytest.approx(0.006)
    assert total.gpu.energy_j == pytest.approx(4 * 3.6e5)  # four GPUs
    assert (total.work.num_examples, total.work.num_steps, total.work.flops.total) == (40, 3, 4000)
    assert total.work.flops.by_component == {"student_train": 4000}
    assert "summed over 4 ranks" in total.work.flops.source
    assert total.duration_s == 5.0 and total.partial == []
    nodes = total.breakdown["energy_by_node"]
    assert [(n["node_rank"], n["measured_by_rank"], n["num_gpus"]) for n in nodes] == [(0, 0, 2), (1, 2, 2)]
    assert nodes[1]["energy_kwh"] == pytest.approx(0.03 + 0.004 + 2 * 0.1)  # 3.6e5 J = 0.1 kWh per GPU
    gpus = total.breakdown["energy_by_gpu"]
    assert [(g["rank"], g["node_rank"], g["nvml_index"]) for g in gpus] == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    assert {s[1] for s in total.gpu.power_samples} == {"n0-gpu0", "n0-gpu1", "n1-gpu0", "n1-gpu1"}
    assert "local rank 0 of each node (2 node(s))" in total.breakdown["energy_meters"]["cpu"]


def test_a_rank_without_its_gpu_reading_marks_the_sum_partial() -> None:
    readings = [_reading(0, carbon=_carbon(0.01, 0.002)), _reading(1, gpu_j=None)]
    total = combine(readings, Dist(rank=0, world_size=2, local_world_size=2, backend="nccl"), missing=[])
    assert total.gpu.energy_j == pytest.approx(3.6e5) and total.partial == ["gpu"]
    assert "rank 1: GPU is lost" in total.gpu.error


def test_a_missing_node_marks_cpu_ram_and_gpu_partial() -> None:
    """Node 1 (ranks 2, 3) never answered: its CPU, RAM and GPUs are missing from the sums, and the record says so."""
    readings = [_reading(0, carbon=_carbon(0.01, 0.002)), _reading(1)]
    total = combine(readings, TWO_NODES, missing=[2, 3])
    assert total.partial == ["cpu", "ram", "gpu"] and total.breakdown["ranks_missing"] == [2, 3]


def test_a_missing_rank_on_a_cpu_run_leaves_energy_whole() -> None:
    """CPU only, one node: local rank 0's codecarbon measured the whole machine; rank 1 had no GPU to miss."""
    readings = [_reading(0, carbon=_carbon(0.01, 0.002), gpu_j=None)]
    readings = [RankReading(**{**readings[0].__dict__, "gpu": GpuReading.unavailable("no-gpu", "NVML found no GPU")})]
    total = combine(readings, Dist(rank=0, world_size=2, local_world_size=2, backend="gloo"), missing=[1])
    assert total.partial == [] and total.carbon.cpu_energy_kwh == 0.01 and total.gpu.energy_j is None


def test_evaluation_steps_are_summed_training_steps_are_not() -> None:
    readings = [_reading(0, carbon=_carbon(0.01, 0.002)), _reading(1)]
    two = Dist(rank=0, world_size=2, local_world_size=2, backend="gloo")
    assert combine(readings, two, missing=[]).work.num_steps == 3
    assert combine(readings, two, missing=[], sum_steps=True).work.num_steps == 6


def test_a_rank_that_ran_no_step_adds_zero_flops_not_unknown() -> None:
    readings = [_reading(0, carbon=_carbon(0.01, 0.002)),
                RankReading(**{**_reading(1).__dict__, "work": Work(
                    num_examples=0, num_tokens=0, num_padded_tokens=0, num_steps=0, flops_analytic=0.0,
                    flops=FlopFigures(total=None, source="unavailable:no-steps"))})]
    total = combine(readings, Dist(rank=0, world_size=2, local_world_size=2, backend="gloo"), missing=[])
    assert total.work.flops.total == 1000


def test_sources_of_a_sum() -> None:
    assert combine_sources(["measured:rapl", "measured:rapl"]) == "measured:rapl"
    assert combine_sources(["measured:rapl", "measured:powermetrics"]) == "measured:powermetrics+rapl"
    assert combine_sources(["measured:rapl", "estimated:tdp-load-model"]) == "estimated:tdp-load-model+rapl"


def test_distributed_record_adds_up(tmp_path: Path) -> None:
    """The record's total is CPU + RAM + GPU over nodes and ranks; CO2 = kWh x intensity x PUE."""
    readings = [_reading(0, carbon=_carbon(0.01, 0.002)), _reading(1),
                _reading(2, carbon=_carbon(0.03, 0.004)), _reading(3)]
    run = make_run(tmp_path)
    record, power_samples = compose_record(window=Window("distill", "distill", "student"), run=run, status="ok",
                                           error=None, started_at=runlog.utc_now(), readings=readings, dist=TWO_NODES)
    assert list(record) == list(FIELD_NAMES)  # the power samples are returned beside the record, not in it
    assert {s[1] for s in power_samples} == {"n0-gpu0", "n0-gpu1", "n1-gpu0", "n1-gpu1"} and len(power_samples) == 8
    assert record["energy_kwh"] == pytest.approx(0.04 + 0.006 + 0.4)
    assert record["energy_kwh"] == pytest.approx(sum(n["energy_kwh"] for n in record["energy_by_node"]))
    assert record["co2_kg"] == pytest.approx(record["energy_kwh"] * run.pue * run.intensity_g_per_kwh / 1000)
    assert (record["world_size"], record["num_nodes"], record["ddp_backend"]) == (4, 2, "nccl")
    assert record["num_examples"] == sum(r["num_examples"] for r in record["by_rank"]) == 40
    assert record["energy_incomplete"] == [] and record["ranks_missing"] == []
