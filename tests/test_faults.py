"""Faults in the measurement itself never stop training: each is injected into a real (tiny) run.

In every case the run exits 0 with every stage `ok` and fully trained, the affected fields are null (never
a made-up 0), and `measurement_errors` says why. Also: a full disk is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from greendistil import pipeline, preflight
from greendistil.measure import flops as flops_module
from greendistil.measure import nvml as nvml_module
from greendistil.cli import main
from greendistil.measure.carbon import CarbonMeter
from greendistil.measure.nvml import NvmlMeter
from conftest import write_tiny_config
from fakes import FakeNvml

pytestmark = pytest.mark.slow


def run_tiny(tmp_path: Path, glue_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    config = write_tiny_config(tmp_path, glue_dir)
    code = main(["run", str(config), "--no-progress", "--run-id", "fault"])
    lines = (tmp_path / "runs" / "fault" / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return code, [json.loads(line) for line in lines]


def assert_trained_completely(code: int, records: list[dict[str, Any]]) -> None:
    assert code == 0
    assert [(r["stage"], r["status"]) for r in records] == [("finetune", "ok"), ("distill", "ok"), ("evaluate", "ok")]
    assert [r["num_steps"] for r in records[:2]] == [4, 4]  # 64 examples, batch 16: nothing cut short
    assert "teacher.accuracy" in records[2]["metrics"] and "student.accuracy" in records[2]["metrics"]


def wrap_stage(monkeypatch: pytest.MonkeyPatch, kind: str, before: Callable[[Any], None]) -> None:
    """Run `before(ctx)` inside `kind`'s window, just before the stage itself."""
    original = pipeline.RUNNERS[kind]

    def runner(ctx: Any, cfg: Any, open_window: Any) -> None:
        @contextlib.contextmanager
        def opening(spec: Any) -> Iterator[Any]:
            with open_window(spec) as window:
                before(ctx)
                yield window
        opening.is_done = open_window.is_done  # type: ignore[attr-defined]
        original(ctx, cfg, opening)

    monkeypatch.setitem(pipeline.RUNNERS, kind, runner)


def test_nvml_library_missing(tmp_path: Path, glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml_module, "_pynvml", None)  # the module object every meter holds: nvidia-ml-py gone
    code, records = run_tiny(tmp_path, glue_dir)
    assert_trained_completely(code, records)
    for record in records:
        assert record["gpu_energy_kwh"] is None and record["gpu_energy_source"] == "unavailable:no-pynvml"
        assert record["energy_kwh"] == pytest.approx(record["cpu_energy_kwh"] + record["ram_energy_kwh"])


class AdvancingNvml(FakeNvml):
    """A fake GPU whose energy counter advances 500 J per read."""

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        value = super().nvmlDeviceGetTotalEnergyConsumption(handle)
        self.energy_mj[handle] += 500_000
        return value


def test_nvml_errors_mid_run(tmp_path: Path, glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU is lost after the first stage: the first stage has its GPU energy, the later ones null + why."""
    fake = AdvancingNvml()
    monkeypatch.setattr(pipeline, "NvmlMeter", lambda **kwargs: NvmlMeter(nvml=fake, visible_devices=None, **kwargs))

    def lose_gpu(ctx: Any) -> None:
        fake.counter_error = fake.power_error = FakeNvml.NVMLError_GpuIsLost("GPU is lost")

    wrap_stage(monkeypatch, "distill", lose_gpu)
    code, records = run_tiny(tmp_path, glue_dir)
    assert_trained_completely(code, records)
    finetune, distill, evaluate = records
    assert finetune["gpu_energy_kwh"] > 0 and finetune["gpu_energy_source"] == "measured:nvml-counter"
    for record in (distill, evaluate):
        assert record["gpu_energy_kwh"] is None, record["stage"]
        assert "GPU is lost" in record["measurement_errors"]["gpu"], record["stage"]
        assert record["cpu_energy_kwh"] > 0  # the other meters carry on


def test_codecarbon_fails_to_start(tmp_path: Path, glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import codecarbon

    class BrokenTracker:
        def __init__(self, **kwargs: Any) -> None:
            raise RuntimeError("no CPU power source available")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", BrokenTracker)
    code, records = run_tiny(tmp_path, glue_dir)
    assert_trained_completely(code, records)
    for record in records:
        assert record["energy_kwh"] is None and record["co2_kg"] is None
        assert record["cpu_energy_kwh"] is None and record["ram_energy_kwh"] is None
        assert record["cpu_energy_source"] == "unavailable:codecarbon-error"
        assert "no CPU power source available" in record["measurement_errors"]["carbon"]
        assert set(record["energy_incomplete"]) == {"cpu", "ram"}
        assert record["flops"] > 0  # FLOPs do not depend on codecarbon


def test_codecarbon_cannot_write_its_csv(tmp_path: Path, glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """emissions.csv turned into a folder mid-run: codecarbon cannot write its row, but what it measured is
    still in the record (from its in-memory totals), and the record says the row is missing."""
    wrap_stage(monkeypatch, "distill", lambda ctx: (ctx.run_dir / "emissions.csv").unlink() or
               (ctx.run_dir / "emissions.csv").mkdir())
    code, records = run_tiny(tmp_path, glue_dir)
    assert_trained_completely(code, records)
    finetune, distill, evaluate = records
    assert "carbon" not in finetune["measurement_errors"]
    for record in (distill, evaluate):
        assert "no row written" in record["measurement_errors"]["carbon"], record["stage"]
        assert record["cpu_energy_kwh"] > 0 and record["ram_energy_kwh"] > 0
        assert record["energy_kwh"] == pytest.approx(record["cpu_energy_kwh"] + record["ram_energy_kwh"])


def test_codecarbon_output_folder_removed_mid_window(tmp_path: Path) -> None:
    meter = CarbonMeter(output_dir=tmp_path / "out", run_id="r", country_iso_code="USA", measure_power_s=1)
    meter.start("w")
    shutil.rmtree(tmp_path / "out")
    reading = meter.stop()
    assert reading.ram_energy_kwh is not None and reading.ram_energy_kwh > 0
    assert "no row written" in (reading.error or "")


def test_flop_counter_fails_on_an_op(tmp_path: Path, glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter raises inside a counted step (e.g. a FLOP formula that cannot handle an op): the step is
    redone uncounted with clean gradients, counting stops, and FLOPs are null with the reason."""
    calls = {"n": 0}

    def failing_count(fn: Callable[[], Any]) -> Any:
        calls["n"] += 1
        raise RuntimeError("no FLOP formula for aten::unsupported_op")

    monkeypatch.setattr(flops_module, "count_flops", failing_count)
    code, records = run_tiny(tmp_path, glue_dir)
    assert_trained_completely(code, records)
    for record in records:
        assert record["flops"] is None and record["flops_source"] == "unavailable:flop-counter-failed"
        assert "aten::unsupported_op" in record["measurement_errors"]["flops"]
        assert record["energy_kwh"] > 0
    assert records[0]["flops_analytic"] > 0 and records[1]["flops_analytic"] > 0
    assert calls["n"] == 3  # once per stage: after the first failure a stage stops counting


def test_flop_counter_failure_leaves_the_same_model(tmp_path: Path, glue_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The redone step trains exactly like an uncounted one: same metrics as a run whose counter works."""
    _, healthy = run_tiny(tmp_path / "a", glue_dir)

    def failing_count(fn: Callable[[], Any]) -> Any:
        fn()  # fails after the step ran forward and backward: the gradients must not count twice
        raise RuntimeError("counter failed after the step")

    monkeypatch.setattr(flops_module, "count_flops", failing_count)
    _, faulty = run_tiny(tmp_path / "b", glue_dir)
    assert faulty[2]["metrics"] == healthy[2]["metrics"]
    assert faulty[0]["details"]["mean_loss"] == pytest.approx(healthy[0]["details"]["mean_loss"])


def test_full_disk_is_refused_before_anything_is_written(tmp_path: Path, glue_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=10 << 20))
    config = write_tiny_config(tmp_path, glue_dir)
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GiB free" in err and "run.output_dir" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
