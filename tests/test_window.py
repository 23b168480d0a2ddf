"""The measurement window with fake meters: one record per window, energy bookkeeping, status on failure."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from greendistil.errors import RunInterrupted
from greendistil.measure.carbon import CarbonMeter, CarbonReading
from greendistil.measure.gpu_reading import GpuReading
from greendistil.measure.window import Meters, measure
from greendistil.runlog import store as runlog
from greendistil.runlog.schema import FIELD_NAMES, SCHEMA_VERSION

from builders import INTENSITY, PUE, make_run
from fakes import FakeCarbon, FakeClock, FakeGpu


CARBON_OK = CarbonReading(cpu_energy_kwh=0.001, cpu_energy_source="estimated:tdp-load-model",
                          ram_energy_kwh=0.002, ram_energy_source="estimated:ram-model",
                          cpu_power_w=8.0, ram_power_w=20.0)
CARBON_FAILED = CarbonReading(cpu_energy_kwh=None, cpu_energy_source="unavailable:codecarbon-error",
                              ram_energy_kwh=None, ram_energy_source="unavailable:codecarbon-error",
                              error="codecarbon failed to stop: RuntimeError: boom")
GPU_OK = GpuReading(energy_j=3600.0, source="measured:nvml-counter", duration_s=1.0,
                    power_samples=((0.0, 0, 100.0), (1.0, 0, 300.0)))
GPU_NONE = GpuReading.unavailable("no-nvml-library", "nvmlInit failed")


def make_meters(carbon: CarbonReading = CARBON_OK, gpu: GpuReading = GPU_OK) -> Meters:
    return Meters(carbon=FakeCarbon(carbon), gpu=FakeGpu(gpu))  # type: ignore[arg-type]


def only_record(run_dir: Path) -> dict:
    lines = (run_dir / runlog.RECORDS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_one_record_with_energy_by_component_and_co2(tmp_path: Path) -> None:
    meters = make_meters()
    with measure(stage="finetune", kind="finetune", role="teacher", meters=meters, run=make_run(tmp_path)) as window:
        window.counters.num_examples = 10
        window.counters.metrics["teacher.accuracy"] = 0.75
    assert meters.carbon.started == ["finetune"] and meters.carbon.stopped == 1
    assert meters.gpu.started == 1 and meters.gpu.stopped == 1

    record = only_record(tmp_path)
    assert record["status"] == "ok" and record["error_type"] is None and record["error_message"] is None
    assert (record["stage"], record["kind"], record["role"], record["run_id"]) == ("finetune", "finetune", "teacher", "r1")
    assert record["cpu_energy_kwh"] == pytest.approx(0.001)
    assert record["ram_energy_kwh"] == pytest.approx(0.002)
    assert record["gpu_energy_kwh"] == pytest.approx(0.001)  # 3600 J
    assert record["energy_kwh"] == pytest.approx(0.004)
    assert record["energy_kwh"] == pytest.approx(
        record["cpu_energy_kwh"] + record["gpu_energy_kwh"] + record["ram_energy_kwh"])
    assert record["energy_components"] == "cpu+gpu+ram"
    assert record["gpu_energy_source"] == "measured:nvml-counter"
    assert record["cpu_energy_source"] == "estimated:tdp-load-model"
    assert record["ram_energy_source"] == "estimated:ram-model"
    assert record["facility_energy_kwh"] == pytest.approx(0.004 * PUE)
    assert record["co2_kg"] == pytest.approx(0.004 * PUE * INTENSITY / 1000)
    assert record["co2_kg"] == pytest.approx(0.0024)
    assert (record["pue"], record["intensity_g_per_kwh"]) == (PUE, INTENSITY)
    assert record["gpu_power_mean_w"] == pytest.approx(200.0)
    assert record["measurement_errors"] == {}
    assert record["flops"] is None and record["flops_source"].startswith("unavailable:")
    assert record["num_examples"] == 10 and record["metrics"] == {"teacher.accuracy": 0.75}
    assert record["duration_s"] >= 0
    power = (tmp_path / "power.csv").read_text(encoding="utf-8").splitlines()
    assert power[0] == "stage,elapsed_s,device,power_w,source" and len(power) == 3


def test_each_window_appends_one_record(tmp_path: Path) -> None:
    meters, run = make_meters(gpu=GPU_NONE), make_run(tmp_path)
    for stage in ("a", "b", "c"):
        with measure(stage=stage, kind="evaluate", role="teacher", meters=meters, run=run):
            pass
    records = runlog.read_records(tmp_path)
    assert [r["stage"] for r in records] == ["a", "b", "c"]
    assert meters.carbon.started == ["a", "b", "c"]
    assert not (tmp_path / "power.csv").exists()  # no samples, no file


def test_stage_error_is_recorded_then_propagates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad batch"):
        with measure(stage="distill", kind="distill", role="student", meters=make_meters(),
                     run=make_run(tmp_path)) as window:
            window.counters.num_steps = 3
            raise ValueError("bad batch")
    record = only_record(tmp_path)
    assert record["status"] == "failed"
    assert record["error_type"] == "ValueError" and record["error_message"] == "bad batch"
    assert record["num_steps"] == 3  # what was measured before the failure is kept
    assert record["energy_kwh"] == pytest.approx(0.004)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), RunInterrupted(15)], ids=["sigint", "sigterm"])
def test_interrupt_is_recorded_as_interrupted(tmp_path: Path, interrupt: BaseException) -> None:
    with pytest.raises(type(interrupt)):
        with measure(stage="finetune", kind="finetune", role="teacher", meters=make_meters(), run=make_run(tmp_path)):
            raise interrupt
    record = only_record(tmp_path)
    assert record["status"] == "interrupted"
    assert record["error_type"] == type(interrupt).__name__


def test_codecarbon_failure_still_writes_a_record(tmp_path: Path) -> None:
    with measure(stage="finetune", kind="finetune", role="teacher", meters=make_meters(carbon=CARBON_FAILED),
                 run=make_run(tmp_path)):
        pass
    record = only_record(tmp_path)
    assert record["status"] == "ok"
    assert record["cpu_energy_kwh"] is None and record["ram_energy_kwh"] is None
    assert record["cpu_energy_source"].startswith("unavailable:")
    assert "carbon" in record["measurement_errors"] and "boom" in record["measurement_errors"]["carbon"]
    assert record["energy_kwh"] == pytest.approx(0.001)  # only the GPU was measured
    assert record["energy_components"] == "gpu"
    assert record["co2_kg"] == pytest.approx(0.001 * PUE * INTENSITY / 1000)


def test_nothing_measured_gives_null_energy_not_zero(tmp_path: Path) -> None:
    with measure(stage="evaluate", kind="evaluate", role="teacher", meters=make_meters(CARBON_FAILED, GPU_NONE),
                 run=make_run(tmp_path)):
        pass
    record = only_record(tmp_path)
    assert record["energy_kwh"] is None and record["co2_kg"] is None and record["facility_energy_kwh"] is None
    assert record["energy_components"] == ""
    assert set(record["measurement_errors"]) == {"carbon", "gpu"}
    assert record["gpu_energy_source"] == "unavailable:no-nvml-library"


@pytest.mark.parametrize("bad", [math.nan, math.inf, np.float32("nan"), np.float64("-inf")],
                         ids=["nan", "inf", "np.float32-nan", "np.float64-inf"])
def test_non_finite_values_become_null(tmp_path: Path, bad: float) -> None:
    with measure(stage="evaluate", kind="evaluate", role="teacher", meters=make_meters(), run=make_run(tmp_path)) as window:
        window.counters.metrics.update({"teacher.f1": bad, "teacher.accuracy": 0.5})
        window.counters.details["final_loss"] = {"loss": bad}
    text = (tmp_path / runlog.RECORDS_FILE).read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    record = json.loads(text)
    assert record["metrics"] == {"teacher.f1": None, "teacher.accuracy": 0.5}
    assert record["details"]["final_loss"] == {"loss": None}


def test_real_carbon_meter_with_uncreatable_output_dir_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder", encoding="utf-8")
    meter = CarbonMeter(output_dir=blocker / "run", run_id="r1", country_iso_code="USA", measure_power_s=1)
    meter.start("finetune")  # mkdir fails under a regular file: must not raise
    meter.flush()
    reading = meter.stop()
    assert reading.error and "failed to start" in reading.error
    assert reading.cpu_energy_kwh is None and reading.ram_energy_kwh is None
    assert reading.cpu_energy_source.startswith("unavailable:")
    # stop() without start() is not an exception either
    assert CarbonMeter(output_dir=tmp_path, run_id="r1", country_iso_code="USA", measure_power_s=1).stop().error


def test_real_carbon_meter_failure_inside_a_window(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder", encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    meters = Meters(carbon=CarbonMeter(output_dir=blocker / "x", run_id="r1", country_iso_code="USA",
                                       measure_power_s=1), gpu=FakeGpu(GPU_OK))  # type: ignore[arg-type]
    with measure(stage="finetune", kind="finetune", role="teacher", meters=meters, run=make_run(run_dir)):
        pass
    record = only_record(run_dir)
    assert record["status"] == "ok" and "carbon" in record["measurement_errors"]
    assert record["energy_kwh"] == pytest.approx(0.001)


def test_record_flags_a_missing_gpu_reading_on_a_gpu_run(tmp_path: Path) -> None:
    """On a CUDA run, a GPU figure that NVML could not give is flagged, not silently left out of the total."""
    import dataclasses

    for name in ("gpu", "cpu"):
        (tmp_path / name).mkdir()
    gpu_run = dataclasses.replace(make_run(tmp_path / "gpu"), hardware={"device": "cuda"})
    with measure(stage="s", kind="finetune", role="teacher", meters=make_meters(gpu=GPU_NONE), run=gpu_run):
        pass
    assert only_record(gpu_run.run_dir)["energy_incomplete"] == ["gpu"]
    cpu_run = make_run(tmp_path / "cpu")
    with measure(stage="s", kind="finetune", role="teacher", meters=make_meters(gpu=GPU_NONE), run=cpu_run):
        pass
    assert only_record(cpu_run.run_dir)["energy_incomplete"] == []


@pytest.mark.parametrize(("step_s", "inside_s", "expected_s"),
                         [(0.0, 3.5, 3.5), (0.25, 2.0, 2.25), (0.125, 0.0, 0.125)],
                         ids=["advance-only", "advance-and-step", "step-only"])
def test_duration_is_the_injected_clock_s_exactly(tmp_path: Path, step_s: float, inside_s: float,
                                                  expected_s: float) -> None:
    """The window reads its clock once as it opens and once as it closes: with a fake clock that moves by
    `step_s` on each read and `inside_s` inside the block, the duration is exactly `inside_s + step_s`.
    (Binary-exact figures: no rounding, so == and not approx.)"""
    clock = FakeClock(start_s=100.0, step_s=step_s)
    with measure(stage="finetune", kind="finetune", role="teacher", meters=make_meters(), run=make_run(tmp_path),
                 clock=clock) as window:
        clock.advance(inside_s)
    assert window.record is not None and window.record["duration_s"] == expected_s
    assert only_record(tmp_path)["duration_s"] == expected_s  # and so in the run log


def test_a_failed_window_is_timed_by_the_clock_too(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        with measure(stage="distill", kind="distill", role="student", meters=make_meters(), run=make_run(tmp_path),
                     clock=clock):
            clock.advance(7.5)
            raise ValueError("bad batch")
    record = only_record(tmp_path)
    assert record["status"] == "failed" and record["duration_s"] == 7.5


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "failed"])
def test_record_has_exactly_the_schema_fields_in_order(tmp_path: Path, fail: bool) -> None:
    with pytest.raises(ValueError) if fail else contextlib.nullcontext():
        with measure(stage="finetune", kind="finetune", role="teacher", meters=make_meters(),
                     run=make_run(tmp_path), clock=FakeClock()) as window:
            if fail:
                raise ValueError("bad batch")
    record = only_record(tmp_path)
    assert list(record) == list(FIELD_NAMES)  # every field, no other key, table order (JSON keeps it)
    assert list(window.record) == list(FIELD_NAMES)
    assert record["schema_version"] == SCHEMA_VERSION


def test_power_samples_go_to_power_csv_not_into_the_record(tmp_path: Path) -> None:
    with measure(stage="finetune", kind="finetune", role="teacher", meters=make_meters(), run=make_run(tmp_path)):
        pass
    assert (tmp_path / "power.csv").read_text(encoding="utf-8").splitlines() == [
        "stage,elapsed_s,device,power_w,source",
        "finetune,0.000,0,100.000,measured:nvml-power-samples",
        "finetune,1.000,0,300.000,measured:nvml-power-samples",
    ]
    text = (tmp_path / runlog.RECORDS_FILE).read_text(encoding="utf-8")
    record = json.loads(text)
    assert not [key for key in record if "sample" in key]  # no _power_samples, no power_samples
    assert 300.0 not in leaves(record) and [1.0, 0, 300.0] not in leaves(record)  # the samples are nowhere ...
    assert record["gpu_power_mean_w"] == 200.0  # ... in the record, only their mean


def leaves(value: object) -> list[object]:
    """Every value in a JSON document, containers included."""
    if isinstance(value, dict):
        return [value, *(leaf for v in value.values() for leaf in leaves(v))]
    if isinstance(value, list):
        return [value, *(leaf for v in value for leaf in leaves(v))]
    return [value]
