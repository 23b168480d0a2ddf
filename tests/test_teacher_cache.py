"""Teacher-output caching in multi-epoch distillation: the cache's round trip, a tiny 3-epoch distillation with
dropout in the student whose every step's loss terms equal the uncached run's, the FLOPs it saved equal to
the forwards it skipped, `auto`'s choice, and a resumed stage refilling its cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from builders import read_records_strict
from conftest import write_sst2, write_tiny_config
from greendistil.cli import main
from greendistil.train.teacher_cache import CacheShape, TeacherCache

EPOCHS = 3


def test_the_cache_gives_back_what_it_stored_padded_to_the_new_batch() -> None:
    lengths = [3, 5, 2]
    parts = ("hidden:2", "query:1")
    cache = TeacherCache(CacheShape(num_examples=3, num_real_tokens=10, num_labels=2, hidden_size=4, logits=True,
                                    token_parts=parts), lengths, torch.device("cpu"))
    hidden, query = torch.randn(2, 5, 4), torch.randn(2, 5, 4)  # examples 0 and 1 in one batch, padded to 5
    logits = torch.randn(2, 2)
    cache.store(torch.tensor([0, 1]), logits, {"hidden:2": hidden, "query:1": query})
    assert cache.lookup(torch.tensor([1, 2]), torch.ones(2, 5)) is None  # example 2 not seen yet
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # now 1 first, then 0, padded to 5
    got_logits, got = cache.lookup(torch.tensor([1, 0]), mask)
    assert torch.equal(got_logits, logits[[1, 0]]) and list(got) == list(parts)
    for name, stored in (("hidden:2", hidden), ("query:1", query)):
        assert torch.equal(got[name][0], stored[1]) and torch.equal(got[name][1, :3], stored[0, :3])
        assert torch.count_nonzero(got[name][1, 3:]) == 0  # padding: zeros, never read by the loss
    assert (cache.num_stored, cache.num_served) == (1, 1)
    assert CacheShape(num_examples=3, num_real_tokens=10, num_labels=2, hidden_size=4, logits=True).num_bytes == 3 * 2 * 4
    assert CacheShape(num_examples=3, num_real_tokens=10, num_labels=2, hidden_size=4, logits=False,
                      token_parts=parts).num_bytes == 10 * 4 * 2 * 4


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# The intermediate terms on top of the triple loss: hidden-state MSE (embeddings too), attention and value
# relations (MiniLM), Q/K/V relations (MiniLMv2), each reading parts of the teacher that the cache must hold.
INTERMEDIATE = {"alpha_hidden": 1.0, "hidden_embeddings": True, "alpha_attn": 1.0, "alpha_value": 1.0,
                "alpha_qkv": 1.0, "relation_heads": 2}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    """The tiny distillation over 3 epochs, logged every step, with the cache off and on: the triple loss
    (keys False, True) and with every intermediate term ("inner", False / True)."""
    root = tmp_path_factory.mktemp("cache")
    glue = write_sst2(root / "glue")
    runs: dict[Any, Any] = {}
    for terms, extra in (("", {}), ("inner", INTERMEDIATE)):
        for setting in (False, True):
            config = write_tiny_config(root, glue, {
                "run": {"tensorboard": True, "report": False},
                "stages": [{"kind": "finetune", "role": "teacher", "batch_size": 16},
                           {"kind": "distill", "batch_size": 16, "epochs": EPOCHS, "log_every_steps": 1,
                            "cache_teacher": setting, **extra}]}, name=f"cache-{terms}{setting}.toml")
            run_id = f"cache-{terms}{str(setting).lower()}"
            assert main(["run", str(config), "--no-progress", "--run-id", run_id]) == 0
            run_dir = root / "runs" / run_id
            runs[(terms, setting) if terms else setting] = {
                "dir": run_dir, "distill": read_records_strict(run_dir)[-1], "scalars": scalars(run_dir)}
    return runs


@pytest.mark.parametrize("terms", ["", "inner"])
def test_every_steps_loss_terms_equal_the_uncached_runs(distilled: dict[Any, Any], terms: str) -> None:
    key = (lambda setting: (terms, setting)) if terms else (lambda setting: setting)
    plain, cached = distilled[key(False)]["scalars"], distilled[key(True)]["scalars"]
    names = ["loss", "loss_ce", "loss_task", "loss_cos"] + (
        ["loss_hidden", "loss_attn", "loss_value", "loss_qkv"] if terms else [])
    for term in names:
        a, b = plain[f"distill/loss/{term}"], cached[f"distill/loss/{term}"]
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) == EPOCHS * 4  # 64 examples / 16, per epoch
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-5, term
    served = distilled[key(True)]["distill"]["details"]["teacher_cache"]
    assert (served["num_batches_stored"], served["num_batches_served"]) == (4, 8)


def test_the_cache_holds_the_parts_the_intermediate_terms_read(distilled: dict[Any, Any]) -> None:
    """The tiny teacher has 2 layers; the student copies layer 0 (default map: student 0 -> teacher 0, so
    hidden_states[1]; the embeddings hidden_states[0]); the relations read the last layers (teacher 1)."""
    cache = distilled[("inner", True)]["distill"]["details"]["teacher_cache"]
    assert cache["parts"] == ["hidden:2", "hidden:0", "hidden:1", "query:1", "key:1", "value:1"]
    record = distilled[("inner", True)]["distill"]
    assert record["details"]["intermediate"]["hidden_layer_map"] == [[0, 0]]
    plain = distilled[("inner", False)]["distill"]
    assert plain["details"]["teacher_cache"]["used"] is False
    assert record["flops_by_component"]["teacher_forward"] < plain["flops_by_component"]["teacher_forward"] / 2


def test_the_saved_flops_are_the_skipped_forwards(distilled: dict[Any, Any]) -> None:
    plain, cached = distilled[False]["distill"], distilled[True]["distill"]
    details = cached["details"]["teacher_cache"]
    assert details["used"] is True and details["setting"] is True
    assert (details["num_batches_stored"], details["num_batches_served"]) == (4, 8)  # epoch 1 fills, 2-3 read
    assert plain["details"]["teacher_cache"]["used"] is False
    assert plain["num_padded_tokens"] == cached["num_padded_tokens"]  # the same batches
    served = details["num_padded_tokens_served"]
    assert 0 < served < cached["num_padded_tokens"]
    rate = plain["flops_by_component"]["teacher_forward"] / plain["num_padded_tokens"]  # FLOPs per padded token
    teacher = cached["flops_by_component"]["teacher_forward"]
    assert teacher == pytest.approx(rate * (cached["num_padded_tokens"] - served), rel=1e-6)
    assert cached["flops_by_component"]["student_train"] == plain["flops_by_component"]["student_train"]
    saved_analytic = plain["flops_analytic"] - cached["flops_analytic"]
    teacher_params = plain["details"]["teacher_num_params"]  # every parameter; the analytic count skips embeddings
    assert 0 < saved_analytic < 2 * teacher_params * served


def test_auto_caches_only_what_repeats_and_fits(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue")
    cases = {"one-epoch": {"epochs": 1}, "too-big": {"epochs": 2, "teacher_cache_max_mb": 0.001},
             "auto": {"epochs": 2}}
    for name, stage in cases.items():
        config = write_tiny_config(tmp_path, glue, {
            "run": {"report": False},
            "stages": [{"kind": "finetune", "role": "teacher"}, {"kind": "distill", "batch_size": 16, **stage}]},
            name=f"{name}.toml")
        assert main(["run", str(config), "--no-progress", "--run-id", name]) == 0
    chosen = {name: read_records_strict(tmp_path / "runs" / name)[-1]["details"]["teacher_cache"] for name in cases}
    assert not chosen["one-epoch"]["used"] and "one epoch or less" in chosen["one-epoch"]["reason"]
    assert not chosen["too-big"]["used"] and "teacher_cache_max_mb" in chosen["too-big"]["reason"]
    assert chosen["auto"]["used"] and chosen["auto"]["num_batches_served"] == 4


def test_a_resumed_stage_refills_its_cache(tmp_path: Path) -> None:
    import subprocess
    import sys

    from builders import subprocess_env

    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {
        "run": {"report": False},
        "stages": [{"kind": "finetune", "role": "teacher"},
                   {"kind": "distill", "epochs": EPOCHS, "batch_size": 16, "checkpoint_every_steps": 1}]})
    killed = subprocess.run([sys.executable, "-m", "greendistil", "run", str(config), "--run-id", "k", "--no-progress"],
                            env=subprocess_env("step:distill:6:SIGTERM"), capture_output=True, text=True, timeout=300)
    assert killed.returncode == 143, killed.stderr[-2000:]
    assert main(["run", "--resume", str(tmp_path / "runs" / "k"), "--no-progress"]) == 0
    first, second = [r for r in read_records_strict(tmp_path / "runs" / "k") if r["stage"] == "distill"]
    assert first["details"]["teacher_cache"]["num_batches_served"] == 2  # steps 5-6: epoch 2 from the cache
    resumed = second["details"]["teacher_cache"]
    assert resumed["used"] and "refilled" in resumed["on_resume"]
    # The forecasts' served steps: from epoch 2 (step 4) at first; resumed mid-epoch (step 5), the refilled
    # cache serves from the epoch after the next at the earliest (step 12: none of this stage's).
    assert first["forecast"]["cached_steps_from"] == 4 and second["forecast"]["cached_steps_from"] == 12
    # From the checkpoint on (step 5: the kill came before step 6's), the rest of epoch 2 refills the cache,
    # and an epoch-3 batch is served only when all its examples were seen since the resume.
    left = EPOCHS * 4 - second["resumed_from_step"]
    assert resumed["num_batches_stored"] + resumed["num_batches_served"] == left == 7
    assert resumed["num_batches_stored"] >= 3


@pytest.mark.parametrize("stage, message", [
    ({"cache_teacher": "yes"}, "stages.1.cache_teacher: 'yes' is not valid; valid: 'auto', true or false"),
    ({"teacher_cache_max_mb": 0}, "stages.1.teacher_cache_max_mb: 0.0 is out of range; valid: > 0 (MB)"),
    ({"objective": "mlm", "cache_teacher": True}, "stages.1.cache_teacher: True is out of range; valid: false or"),
])
def test_bad_cache_keys_are_one_line_and_exit_2(tmp_path: Path, stage: dict[str, Any], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {
        "stages": [{"kind": "finetune", "role": "teacher"}, {"kind": "distill", **stage}]})
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_overhead_benchmark_runs_both_sides_on_a_tiny_config(tmp_path: Path) -> None:
    """benchmarks/overhead.py end to end on the tiny config (one pair), so that it cannot rot: the measured
    side writes a record with counted FLOPs, the unmeasured side none."""
    import subprocess
    import sys

    from builders import subprocess_env

    repo = Path(__file__).resolve().parents[1]
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "overhead.py"), "--config", str(config),
                           "--repeats", "1", "--flop-pairs", "1", "--part-repeats", "2"], env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          cwd=repo)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pair 1: on" in done.stdout and "ratio of the sums" in done.stdout
    assert re.search(r"FLOP-counted steps per measured run: \d+/\d+", done.stdout)
    assert re.search(r"CPU time on/off: .*\(90% bootstrap interval [0-9.]+ - [0-9.]+", done.stdout)
    assert re.search(r"a counted step costs [0-9.]+x a plain one", done.stdout)
    assert re.search(r"accounted overhead: \d+ ms of the stage's [0-9.]+ s unmeasured = [0-9.]+%", done.stdout)
    assert "per-step forecaster and budget check" in done.stdout
    bad = subprocess.run([sys.executable, str(repo / "benchmarks" / "overhead.py"), "--config", str(config),
                          "--stage", "evaluate"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a training stage" in bad.stderr


def test_auto_does_not_cache_under_ddp() -> None:
    from types import SimpleNamespace

    from greendistil.config import DistillStage
    from greendistil.stages.distill import teacher_cache

    teacher = SimpleNamespace(config=SimpleNamespace(num_labels=2, hidden_size=8, num_hidden_layers=2))
    split = type("Split", (), {"num_tokens": 40, "lengths": [4] * 10, "__len__": lambda self: 10})()
    for world_size, used in ((1, True), (2, False)):
        ctx = SimpleNamespace(dist=SimpleNamespace(world_size=world_size), device=torch.device("cpu"), resuming=False)
        cache, details = teacher_cache(ctx, DistillStage(epochs=2), teacher, split)
        assert (cache is not None, details["used"]) == (used, used)
    assert "DDP over 2 ranks" in details["reason"]
    forced, _ = teacher_cache(ctx, DistillStage(epochs=2, cache_teacher=True), teacher, split)
    assert forced is not None  # asked for: cached, even where it serves little
