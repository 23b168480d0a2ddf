"""Shared fakes: a window opener without meters, a fake clock. Test modules import these, never each other."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from greendistil.config import WindowSpec
from greendistil.measure.carbon import CarbonReading
from greendistil.measure.gpu_reading import GpuReading
from greendistil.measure.window import Window


class FakeClock:
    """A clock that advances only when told (`advance`), or by `step_s` on every read: timing without sleeping."""

    def __init__(self, start_s: float = 100.0, step_s: float = 0.0) -> None:
        self.now_s, self.step_s = start_s, step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class PlainWindows:
    """An `OpenWindow` that opens bare `Window`s (no meters, no record) and keeps them, to run a stage's
    runner in-process and read its counters; `done` names windows to report as already measured."""

    def __init__(self, kind: str = "stage", done: tuple[str, ...] = ()) -> None:
        self.kind, self.done = kind, set(done)
        self.opened: list[Window] = []

    def is_done(self, spec: WindowSpec) -> bool:
        return spec.name in self.done

    @contextlib.contextmanager
    def __call__(self, spec: WindowSpec) -> Iterator[Window]:
        window = Window(spec.name, self.kind, spec.role)
        self.opened.append(window)
        yield window

    @property
    def window(self) -> Window:
        (only,) = self.opened
        return only


def attrs(**values: Any) -> Any:
    """A plain object with the given attributes."""
    return type("Attrs", (), values)()


class FakeCarbon:
    """A codecarbon meter that returns a fixed reading and remembers its windows."""

    def __init__(self, reading: CarbonReading) -> None:
        self.reading, self.started, self.stopped = reading, [], 0

    def start(self, window_name: str) -> None:
        self.started.append(window_name)

    def flush(self) -> None:
        pass

    def stop(self) -> CarbonReading:
        self.stopped += 1
        return self.reading


class FakeGpu:
    """An NVML meter that returns a fixed reading and counts its windows."""

    def __init__(self, reading: GpuReading) -> None:
        self.reading, self.started, self.stopped = reading, 0, 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> GpuReading:
        self.stopped += 1
        return self.reading

    def close(self) -> None:
        pass


class FakeNvml:
    """The slice of pynvml the meter uses. Handles are the NVML indices; tests set mJ and mW per device."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    class NVMLError_NotFound(NVMLError):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    def __init__(self, num_devices: int = 1, *, has_counter: bool = True) -> None:
        self.uuids = [f"GPU-{i}{i}aa0000-0000-0000-0000-00000000000{i}" for i in range(num_devices)]
        self.energy_mj = [1_000_000] * num_devices
        self.power_mw = [100_000] * num_devices
        self.has_counter = has_counter
        self.init_error: Exception | None = None
        self.counter_error: Exception | None = None
        self.power_error: Exception | None = None
        self.num_init_calls = 0
        self.num_shutdown_calls = 0

    def nvmlInit(self) -> None:
        self.num_init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.num_shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        if uuid not in self.uuids:
            raise self.NVMLError_NotFound("Not Found")
        return self.uuids.index(uuid)

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake H200"  # old pynvml returned bytes: the meter decodes

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.uuids[handle]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.has_counter:
            raise self.NVMLError_NotSupported("Not Supported")
        if self.counter_error is not None:
            raise self.counter_error
        return self.energy_mj[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if self.power_error is not None:
            raise self.power_error
        return self.power_mw[handle]
