"""NvmlMeter against a fake NVML on a fake clock (no sleeping), plus the real library on this machine."""

from __future__ import annotations

import time
from typing import Any

import pytest

from greendistil.measure.nvml import (
    SOURCE_COUNTER,
    SOURCE_POWER_SAMPLES,
    GpuReading,
    NvmlMeter,
    parse_visible_devices,
)
from greendistil.runtime.units import joules_to_kwh

from fakes import FakeClock, FakeNvml


def make_meter(nvml: FakeNvml, clock: FakeClock, **kwargs: Any) -> NvmlMeter:
    kwargs.setdefault("visible_devices", None)
    meter = NvmlMeter(sample_interval_s=0, nvml=nvml, clock=clock, **kwargs)  # type: ignore[arg-type]
    if kwargs["visible_devices"] is None:
        meter._visible_devices = None  # ignore the test runner's own CUDA_VISIBLE_DEVICES
    return meter


def test_counter_gives_exact_joules() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    meter = make_meter(nvml, clock)
    meter.start()
    clock.advance(10.0)
    nvml.energy_mj[0] += 2_500_500  # 2500.5 J
    reading = meter.stop()
    assert reading.energy_j == 2500.5
    assert reading.source == SOURCE_COUNTER
    assert reading.error is None and reading.flags == ()
    assert reading.duration_s == 10.0
    assert reading.devices == (
        {"index": 0, "name": "Fake H200", "uuid": nvml.uuids[0], "energy_j": 2500.5, "source": SOURCE_COUNTER, "error": None},
    )
    # Samples at both edges, mW -> W.
    assert reading.power_samples == ((0.0, 0, 100.0), (10.0, 0, 100.0))


def test_power_samples_trapezoid_without_counter() -> None:
    nvml, clock = FakeNvml(has_counter=False), FakeClock()
    meter = make_meter(nvml, clock)
    meter.start()  # sample at 0 s: 100 W
    for power_w in (200, 200):
        clock.advance(1.0)
        nvml.power_mw[0] = power_w * 1000
        meter._sample_once()
    clock.advance(1.0)
    nvml.power_mw[0] = 100_000
    reading = meter.stop()  # sample at 3 s: 100 W
    # 150 + 200 + 150 J
    assert reading.energy_j == 500.0
    assert reading.source == SOURCE_POWER_SAMPLES
    assert reading.flags == () and reading.error is None
    assert [s[2] for s in reading.power_samples] == [100.0, 200.0, 200.0, 100.0]


def test_zero_counter_on_short_window_falls_back_to_samples_and_flags() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    meter = make_meter(nvml, clock)
    meter.start()
    clock.advance(0.05)  # counter not yet updated
    reading = meter.stop()
    assert reading.energy_j == pytest.approx(5.0)  # 100 W x 0.05 s
    assert reading.source == SOURCE_POWER_SAMPLES
    assert len(reading.flags) == 1 and reading.flags[0].startswith("window-shorter-than-counter-update")
    assert "used power samples" in reading.flags[0]


def test_repeated_windows_init_once_and_close_shuts_down() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    meter = make_meter(nvml, clock)
    energies = []
    for joules in (10, 20):
        meter.start()
        clock.advance(5.0)
        nvml.energy_mj[0] += joules * 1000
        energies.append(meter.stop().energy_j)
    assert energies == [10.0, 20.0]
    assert nvml.num_init_calls == 1
    meter.close()
    assert nvml.num_shutdown_calls == 1


def test_sums_devices_from_visible_indices() -> None:
    nvml, clock = FakeNvml(num_devices=4), FakeClock()
    meter = make_meter(nvml, clock, visible_devices="0, 2")
    meter.start()
    clock.advance(2.0)
    for i, joules in enumerate((1, 2, 4, 8)):
        nvml.energy_mj[i] += joules * 1000
    reading = meter.stop()
    assert [d["index"] for d in reading.devices] == [0, 2]
    assert reading.energy_j == 5.0


def test_visible_uuids_and_prefixes_map_to_nvml_indices() -> None:
    nvml, clock = FakeNvml(num_devices=4), FakeClock()
    meter = make_meter(nvml, clock, visible_devices=f"{nvml.uuids[3]},GPU-11")
    meter.start()
    reading = meter.stop()
    assert [d["index"] for d in reading.devices] == [3, 1]


def test_device_indices_are_cuda_ordinals_within_visible_devices() -> None:
    nvml, clock = FakeNvml(num_devices=4), FakeClock()
    meter = make_meter(nvml, clock, visible_devices="2,3", device_indices=[1])  # DDP rank 1 -> NVML GPU 3
    meter.start()
    assert [d["index"] for d in meter.stop().devices] == [3]


@pytest.mark.parametrize(
    ("visible", "reason"),
    [("7", "bad-visible-devices"), ("GPU-nope", "bad-visible-devices"), ("", "no-visible-devices"), ("-1", "no-visible-devices")],
)
def test_bad_or_empty_visible_devices_are_unavailable(visible: str, reason: str) -> None:
    meter = make_meter(FakeNvml(num_devices=2), FakeClock(), visible_devices=visible)
    meter.start()
    reading = meter.stop()
    assert reading.energy_j is None and reading.source == f"unavailable:{reason}" and reading.error


def test_parse_visible_devices_follows_cuda() -> None:
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("0,2") == [0, 2]
    assert parse_visible_devices("1,-1,2") == [1]  # CUDA stops at the first invalid entry
    assert parse_visible_devices("GPU-abc, 3") == ["GPU-abc", 3]


def test_init_failure_is_unavailable_without_raising() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    nvml.init_error = FakeNvml.NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    meter = make_meter(nvml, clock)
    meter.start()
    reading = meter.stop()
    assert reading.energy_j is None
    assert reading.source == "unavailable:no-nvml-library"
    assert "NVML Shared Library Not Found" in (reading.error or "")
    meter.start()  # the failure is remembered, not retried
    assert meter.stop().source == "unavailable:no-nvml-library"
    assert nvml.num_init_calls == 1
    meter.close()
    assert nvml.num_shutdown_calls == 0


def test_stop_without_start_is_unavailable() -> None:
    reading = make_meter(FakeNvml(), FakeClock()).stop()
    assert reading.energy_j is None and reading.source == "unavailable:not-started"


def test_counter_lost_mid_window_uses_covering_samples_and_records_error() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    meter = make_meter(nvml, clock)
    meter.start()
    clock.advance(1.0)
    meter._sample_once()
    clock.advance(1.0)
    nvml.counter_error = FakeNvml.NVMLError_GpuIsLost("GPU is lost")
    reading = meter.stop()
    assert reading.energy_j == 200.0  # 100 W over 2 s from samples
    assert reading.source == SOURCE_POWER_SAMPLES
    assert "GPU is lost" in (reading.error or "")
    assert any(f.startswith("counter-read-failed") for f in reading.flags)


def test_everything_lost_mid_window_is_unavailable_without_raising() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    meter = make_meter(nvml, clock)
    meter.start()
    nvml.counter_error = nvml.power_error = FakeNvml.NVMLError_GpuIsLost("GPU is lost")
    clock.advance(60.0)
    meter._sample_once()
    reading = meter.stop()
    assert reading.energy_j is None
    assert reading.source == "unavailable:device-read-failed"
    assert "GPU is lost" in (reading.error or "")


def test_unexpected_exception_in_nvml_never_escapes() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    nvml.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    meter = make_meter(nvml, clock)
    meter.start()
    reading = meter.stop()
    assert reading.energy_j is None and "boom" in (reading.error or "")


def test_background_thread_samples_and_stops() -> None:
    nvml = FakeNvml(has_counter=False)
    meter = NvmlMeter(sample_interval_s=0.005, nvml=nvml, visible_devices="0")  # type: ignore[arg-type]
    meter.start()
    time.sleep(0.05)
    reading = meter.stop()
    assert len(reading.power_samples) >= 4
    assert reading.energy_j == pytest.approx(100.0 * (reading.duration_s or 0.0), rel=1e-6)
    assert all(not t.name.startswith("greendistil-nvml") for t in __import__("threading").enumerate())


def test_joules_to_kwh() -> None:
    assert joules_to_kwh(3.6e6) == 1.0
    assert joules_to_kwh(None) is None


def test_real_library_without_gpu_is_unavailable() -> None:
    pytest.importorskip("pynvml")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    meter = NvmlMeter()
    meter.start()
    reading = meter.stop()
    meter.close()
    assert isinstance(reading, GpuReading)
    assert reading.energy_j is None and reading.source.startswith("unavailable") and reading.error


@pytest.mark.gpu
def test_real_counter_measures_a_matmul_loop() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    meter = NvmlMeter(device_indices=[torch.cuda.current_device()])
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    meter.start()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for _ in range(20):
            x = torch.tanh(x @ x)
        torch.cuda.synchronize()
    reading = meter.stop()
    meter.close()
    assert reading.energy_j is not None and reading.energy_j > 0, reading
    assert reading.source.startswith("measured:nvml")
    assert reading.power_samples
