"""Live figures of greendistil's own runs: TensorBoard scalars per log interval, the window's spend so far,
and codecarbon's process tracking mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import write_sst2, write_tiny_config
from fakes import FakeNvml
from greendistil.cli import main
from greendistil.measure.counters import StageCounters
from greendistil.measure.live import LiveReading, read_live
from greendistil.measure.nvml import NvmlMeter
from greendistil.measure.window import Meters


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    tmp_path = tmp_path_factory.mktemp("live")
    glue = write_sst2(tmp_path / "glue", num_train=32, num_dev=8)
    changes = {"run": {"tensorboard": True}, "carbon": {"tracking_mode": "process"},
               "stages": [{"kind": "finetune", "role": "teacher", "batch_size": 8, "epochs": 1, "log_every_steps": 2},
                          {"kind": "distill", "batch_size": 8, "epochs": 1, "log_every_steps": 2}]}
    config = write_tiny_config(tmp_path, glue, changes)
    code = main(["run", str(config), "--no-progress", "--run-id", "live"])
    return {"code": code, "run_dir": tmp_path / "runs" / "live"}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_losses_rate_and_spend_per_log_interval(live_run: dict[str, Any]) -> None:
    assert live_run["code"] == 0
    found = scalars(live_run["run_dir"])
    for stage in ("finetune", "distill"):
        assert [step for step, _ in found[f"{stage}/loss/loss"]] == [2, 4], stage  # 4 steps, logged every 2
        for tag in ("learning_rate", "examples_per_s", "so_far/flops"):
            assert f"{stage}/{tag}" in found, (stage, tag)
    assert {"distill/loss/loss_ce", "distill/loss/loss_cos"} <= set(found)
    flops = [value for _, value in found["distill/so_far/flops"]]
    assert flops[0] > 0 and flops == sorted(flops)


def test_process_tracking_mode_is_recorded_and_reported(live_run: dict[str, Any]) -> None:
    records = [json.loads(line) for line in (live_run["run_dir"] / "records.jsonl").read_text().splitlines()]
    for record in records:
        assert record["tracking_mode"] == "process"
        assert record["energy_meters"]["cpu"].startswith("codecarbon (tracking_mode=process)")
        assert record["cpu_energy_kwh"] > 0
    report = (live_run["run_dir"] / "report" / "report.md").read_text(encoding="utf-8")
    assert "| CPU/RAM attribution | `process`: this process's share" in report


def test_tensorboard_without_the_extra_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import greendistil.preflight

    monkeypatch.setattr(greendistil.preflight, "tensorboard_missing", lambda: "the tensorboard package is not installed")
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"run": {"tensorboard": True}})
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("greendistil: error: run.tensorboard: true needs TensorBoard") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_a_bad_tracking_mode_names_the_key_and_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"carbon": {"tracking_mode": "node"}})
    assert main(["run", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "carbon.tracking_mode" in err and "'node'" in err and "machine" in err and "process" in err


def test_live_reading_adds_gpu_energy_so_far_from_the_counter() -> None:
    clock = [0.0]
    nvml = FakeNvml()
    meter = NvmlMeter(nvml=nvml, sample_interval_s=0, clock=lambda: clock[0], visible_devices="0")
    meter.start()
    nvml.energy_mj[0] += 360_000  # 360 J
    clock[0] = 10.0
    reading = read_live(Meters(carbon=None, gpu=meter), StageCounters(), elapsed_s=10.0)
    assert reading.gpu_energy_kwh == pytest.approx(360 / 3.6e6)
    assert reading.gpu_power_mean_w == pytest.approx(36.0)
    assert reading.cpu_energy_kwh is None and reading.energy_kwh == reading.gpu_energy_kwh
    meter.stop()


def test_live_scalars_leave_out_what_no_meter_has() -> None:
    reading = LiveReading(elapsed_s=2.0, cpu_energy_kwh=1e-3, gpu_energy_kwh=None, ram_energy_kwh=5e-4,
                          cpu_power_w=10.0, ram_power_w=5.0, flops=None)
    found = reading.scalars(pue=1.5, intensity_g_per_kwh=400.0)
    assert found["energy_kwh"] == pytest.approx(1.5e-3)
    assert found["co2_g"] == pytest.approx(1.5e-3 * 1.5 * 400.0)
    assert "gpu_energy_kwh" not in found and "flops" not in found
