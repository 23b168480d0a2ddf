"""GPU energy over a measurement window, read from NVML.

Two methods, as in Zeus and codecarbon:
- ``measured:nvml-counter``: the driver's energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since
  driver load, Volta and newer). Energy = counter(stop) - counter(start).
- ``measured:nvml-power-samples``: trapezoid integral of power samples (``nvmlDeviceGetPowerUsage``, mW),
  for GPUs without the counter, and as the fallback when the counter reads 0 J (a window shorter than the
  counter's update period) or fails at stop.
Power is sampled in a daemon thread in every window, so each reading also carries a power time series.

A meter never raises from ``start()``/``stop()``: anything unavailable or broken gives a ``GpuReading``
with ``energy_j=None``, ``source="unavailable:<reason>"`` and ``error`` saying why. Never a fake 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


try:
    import pynvml as _pynvml
except ImportError:  # no nvidia-ml-py: every reading says unavailable:no-pynvml
    _pynvml = None

from greendistil.measure.gpu_reading import GpuReading, integrate_power, parse_visible_devices

logger = logging.getLogger(__name__)

SOURCE_COUNTER = "measured:nvml-counter"
SOURCE_POWER_SAMPLES = "measured:nvml-power-samples"
# The counter updates every ~100 ms on recent GPUs, slower on some. A 0 J delta over a window shorter
# than this is "not updated yet", not "no energy used": fall back to samples and flag it.
SHORT_WINDOW_S = 1.0
# Flags that mean something failed mid-window: they go into GpuReading.error even when energy was measured.
_FAILURE_FLAGS = ("counter-read-failed", "power-sample-errors", "sampler-thread-did-not-stop")
# (reason, attribute of the nvml module) for nvmlInit failures; checked in order, default nvml-init-failed.
_INIT_FAILURE_REASONS = (
    ("no-nvml-library", "NVMLError_LibraryNotFound"),
    ("no-gpu-driver", "NVMLError_DriverNotLoaded"),
    ("nvml-no-permission", "NVMLError_NoPermission"),
)


class _Unavailable(Exception):
    """Internal: NVML cannot measure the requested devices; carries the short reason for ``source``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Device:
    index: int  # NVML index (PCI bus order), not necessarily the CUDA ordinal
    handle: Any
    name: str
    uuid: str


@dataclass
class _Window:
    """Mutable state of one start()/stop() window; the sampler thread appends under ``lock``."""

    t0: float | None = None
    unavailable: _Unavailable | None = None
    counters_start_mj: dict[int, int | None] = field(default_factory=dict)
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    num_sample_errors: int = 0
    first_sample_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # old pynvml returns bytes


class NvmlMeter:
    """Measures GPU energy per window: ``start()``, run the stage, ``stop() -> GpuReading``; repeatable.

    NVML is initialised lazily on the first ``start()`` and only once (a failure is remembered, not retried);
    ``close()`` shuts it down. Devices follow ``visible_devices`` (default: env CUDA_VISIBLE_DEVICES; integer
    NVML indices or GPU UUIDs, unset = all). ``device_indices`` narrows that to CUDA ordinals, i.e.
    positions in the visible list as ``torch.cuda`` numbers them: a DDP rank passes ``[local_rank]``.
    ``sample_interval_s=0`` disables the sampler thread (tests then call ``_sample_once()`` themselves);
    the start and stop edges are always sampled.
    """

    def __init__(
        self,
        *,
        sample_interval_s: float = 0.1,
        nvml: ModuleType | None = None,
        clock: Callable[[], float] = time.monotonic,
        visible_devices: str | None = None,
        device_indices: Sequence[int] | None = None,
    ) -> None:
        if sample_interval_s < 0:
            raise ValueError(f"sample_interval_s must be >= 0 (0 disables the sampler thread), got {sample_interval_s}")
        self._sample_interval_s = sample_interval_s
        self._nvml = nvml if nvml is not None else _pynvml
        self._clock = clock
        if visible_devices is None:
            visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._visible_devices = visible_devices
        self._device_indices = None if device_indices is None else tuple(device_indices)
        # Samples may be this far apart (and from the window's edges) before the integral is rejected.
        self._max_gap_s = max(10.0 * sample_interval_s, 2.0)
        self._initialized = False
        self._init_failure: _Unavailable | None = None
        self._devices: tuple[_Device, ...] = ()
        self._device_flags: tuple[str, ...] = ()
        self._window: _Window | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open a window: read the counters, take the first power sample, start sampling. Never raises."""
        try:
            if self._window is not None:
                logger.warning("NvmlMeter.start() while a window is open: the open window is discarded")
                self._halt_sampler(self._window)
            self._window = self._open_window()
        except Exception as error:  # meters never raise
            logger.warning("GPU energy meter failed to start: %s", _describe(error))
            self._window = _Window(unavailable=_Unavailable("start-failed", _describe(error)))

    def stop(self) -> GpuReading:
        """Close the window and return its reading. Never raises."""
        window, self._window = self._window, None
        if window is None:
            return GpuReading.unavailable("not-started", "NvmlMeter.stop() called without start()")
        if window.unavailable is not None:
            return GpuReading.unavailable(window.unavailable.reason, str(window.unavailable), flags=tuple(window.flags))
        try:
            return self._close_window(window)
        except Exception as error:  # meters never raise
            logger.warning("GPU energy meter failed to stop: %s", _describe(error))
            self._halt_sampler(window)
            return GpuReading.unavailable("stop-failed", _describe(error))

    def energy_so_far_j(self) -> float | None:
        """The open window's GPU energy until now (J): counter deltas, else the power samples integrated so
        far; None when nothing is measured. For live figures only: the record takes `stop()`'s. Never raises."""
        window = self._window
        if window is None or window.unavailable is not None or window.t0 is None:
            return None
        try:
            elapsed_s = self._clock() - window.t0
            with window.lock:
                samples = tuple(window.samples)
            total_j = 0.0
            for device in self._devices:
                start_mj, now_mj = window.counters_start_mj.get(device.index), self._read_counter_mj(device, window, "now")
                if start_mj is not None and now_mj is not None and now_mj > start_mj:
                    total_j += (now_mj - start_mj) / 1000.0
                    continue
                own = [(t, p) for t, i, p in samples if i == device.index]
                integrated_j, _ = integrate_power(own, max(elapsed_s, own[-1][0] if own else 0.0), self._max_gap_s)
                if integrated_j is None:
                    return None
                total_j += integrated_j
            return total_j if self._devices else None
        except Exception as error:  # meters never raise
            logger.debug("live GPU energy reading failed: %s", _describe(error))
            return None

    def close(self) -> None:
        """Stop any open window and shut NVML down. A later ``start()`` initialises again. Never raises."""
        if self._window is not None:
            self._halt_sampler(self._window)
            self._window = None
        if self._initialized:
            try:
                self._nvml.nvmlShutdown()
            except Exception as error:
                logger.warning("nvmlShutdown failed: %s", _describe(error))
        self._initialized, self._init_failure, self._devices, self._device_flags = False, None, (), ()

    def __enter__(self) -> NvmlMeter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- NVML setup ------------------------------------------------------------------------------
    def _ensure_initialized(self) -> _Unavailable | None:
        """Initialise NVML and pick the devices once; return the remembered failure, if any."""
        if self._initialized or self._init_failure is not None:
            return self._init_failure
        nvml = self._nvml
        if nvml is None:
            self._init_failure = _Unavailable("no-pynvml", "the pynvml module (package nvidia-ml-py) is not installed")
            return self._init_failure
        try:
            nvml.nvmlInit()
        except Exception as error:
            reasons = (r for r, attr in _INIT_FAILURE_REASONS if _is_instance(error, getattr(nvml, attr, None)))
            reason = next(reasons, "nvml-init-failed")
            self._init_failure = _Unavailable(reason, f"nvmlInit failed: {_describe(error)}")
            level = logging.INFO if reason == "no-nvml-library" else logging.WARNING
            logger.log(level, "GPU energy unavailable: %s", self._init_failure)
            return self._init_failure
        self._initialized = True
        try:
            self._devices = self._select_devices()
        except _Unavailable as failure:
            self._init_failure = failure
        except Exception as error:
            self._init_failure = _Unavailable("device-query-failed", _describe(error))
        if self._init_failure is not None:
            logger.warning("GPU energy unavailable: %s", self._init_failure)
        else:
            logger.info("GPU energy meter: NVML devices %s", [(d.index, d.name) for d in self._devices])
        return self._init_failure

    def _select_devices(self) -> tuple[_Device, ...]:
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            raise _Unavailable("no-gpu", "NVML found no GPU")
        every: list[_Device] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name, uuid = _as_text(nvml.nvmlDeviceGetName(handle)), _as_text(nvml.nvmlDeviceGetUUID(handle))
                every.append(_Device(index, handle, name, uuid))
            except nvml.NVMLError as error:  # e.g. a GPU outside this container's cgroup
                logger.warning("NVML device %d is not accessible: %s", index, _describe(error))
        entries = parse_visible_devices(self._visible_devices)
        visible = every if entries is None else [self._lookup(entry, every, count) for entry in entries]
        if self._device_indices is not None:
            bad = [i for i in self._device_indices if not 0 <= i < len(visible)]
            if bad:
                message = f"device_indices {bad} out of range: {len(visible)} visible GPU(s)"
                raise _Unavailable("bad-device-indices", message)
            visible = [visible[i] for i in self._device_indices]
        unique = list({d.index: d for d in visible}.values())  # a GPU listed twice is measured once
        if not unique:
            message = f"no GPU is visible (CUDA_VISIBLE_DEVICES={self._visible_devices!r})"
            raise _Unavailable("no-visible-devices", message)
        uses_ordinals = any(isinstance(e, int) for e in entries) if entries is not None else self._device_indices is not None
        if uses_ordinals and len({d.name for d in every}) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            # CUDA numbers GPUs fastest-first by default, NVML by PCI bus: with mixed GPUs they can differ.
            self._device_flags = ("cuda-device-order: mixed GPUs and CUDA_DEVICE_ORDER is not PCI_BUS_ID; "
                                  "a CUDA index may name a different NVML device",)
        return tuple(unique)

    def _lookup(self, entry: int | str, every: list[_Device], count: int) -> _Device:
        """One CUDA_VISIBLE_DEVICES entry -> device: an NVML index, a full UUID, or a unique UUID prefix."""
        if isinstance(entry, int):
            match = [d for d in every if d.index == entry]
            if not match:
                accessible = [d.index for d in every]
                message = f"CUDA_VISIBLE_DEVICES names GPU {entry}, NVML has {count} (accessible: {accessible})"
                raise _Unavailable("bad-visible-devices", message)
            return match[0]
        try:
            uuid = _as_text(self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByUUID(entry)))
        except self._nvml.NVMLError:
            uuid = entry  # not a full UUID: CUDA also accepts a unique prefix
        match = [d for d in every if d.uuid == uuid] or [d for d in every if d.uuid.startswith(entry)]
        if len(match) != 1:
            why = f"{len(match)} GPUs match"
            if entry.startswith("MIG-"):
                why = "MIG devices are not supported (NVML reports power for the whole GPU)"
            raise _Unavailable("bad-visible-devices", f"CUDA_VISIBLE_DEVICES entry {entry!r}: {why}")
        return match[0]

    # ---- one window ------------------------------------------------------------------------------
    def _open_window(self) -> _Window:
        failure = self._ensure_initialized()
        if failure is not None:
            return _Window(unavailable=failure)
        window = _Window(flags=list(self._device_flags))
        for device in self._devices:
            window.counters_start_mj[device.index] = self._read_counter_mj(device, window, "start")
        window.t0 = self._clock()
        self._window = window
        self._sample_once()  # the start edge, so the integral covers the whole window
        if self._sample_interval_s > 0:
            window.thread = threading.Thread(
                target=self._sample_loop, args=(window,), name="greendistil-nvml-sampler", daemon=True
            )
            window.thread.start()
        return window

    def _sample_loop(self, window: _Window) -> None:
        while not window.stop_event.wait(self._sample_interval_s):
            self._sample_once(window)

    def _sample_once(self, window: _Window | None = None) -> None:
        """Append one power sample per device to the open window. Never raises (errors are counted)."""
        window = window if window is not None else self._window
        if window is None or window.t0 is None:
            return
        for device in self._devices:
            try:
                power_w = self._nvml.nvmlDeviceGetPowerUsage(device.handle) / 1000.0  # mW -> W
                elapsed_s = self._clock() - window.t0
            except Exception as error:
                with window.lock:
                    window.num_sample_errors += 1
                    if window.first_sample_error is None:
                        window.first_sample_error = f"device {device.index}: {_describe(error)}"
                continue
            with window.lock:
                window.samples.append((elapsed_s, device.index, power_w))

    def _halt_sampler(self, window: _Window) -> None:
        window.stop_event.set()
        if window.thread is not None and window.thread is not threading.current_thread():
            window.thread.join(timeout=max(1.0, 5.0 * self._sample_interval_s))
            if window.thread.is_alive():
                window.flags.append("sampler-thread-did-not-stop: an NVML call hung")

    def _read_counter_mj(self, device: _Device, window: _Window, edge: str) -> int | None:
        """The energy counter in mJ, or None: not supported (expected before Volta) or failed (flagged)."""
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle))
        except Exception as error:
            if not _is_instance(error, getattr(self._nvml, "NVMLError_NotSupported", None)):
                window.flags.append(f"counter-read-failed: device {device.index} at {edge}: {_describe(error)}")
            return None

    def _close_window(self, window: _Window) -> GpuReading:
        self._halt_sampler(window)
        self._sample_once(window)  # the stop edge
        counters_stop_mj = {d.index: self._read_counter_mj(d, window, "stop") for d in self._devices}
        duration_s = self._clock() - (window.t0 or 0.0)
        with window.lock:
            samples = tuple(window.samples)
        if window.num_sample_errors:
            window.flags.append(
                f"power-sample-errors: {window.num_sample_errors} failed reads (first: {window.first_sample_error})"
            )
        devices = tuple(
            self._device_energy(d, window, counters_stop_mj[d.index], samples, duration_s) for d in self._devices
        )
        errors = [f"device {d['index']}: {d['error']}" for d in devices if d["error"]]
        failures = [f for f in window.flags if f.startswith(_FAILURE_FLAGS)]
        common = dict(duration_s=duration_s, devices=devices, power_samples=samples, flags=tuple(window.flags))
        if errors:
            return GpuReading.unavailable("device-read-failed", "; ".join(errors + failures), **common)
        all_counter = all(d["source"] == SOURCE_COUNTER for d in devices)
        return GpuReading(
            energy_j=sum(d["energy_j"] for d in devices),
            source=SOURCE_COUNTER if all_counter else SOURCE_POWER_SAMPLES,
            error="; ".join(failures) or None,
            **common,
        )

    def _device_energy(
        self,
        device: _Device,
        window: _Window,
        stop_mj: int | None,
        samples: Sequence[tuple[float, int, float]],
        duration_s: float,
    ) -> dict[str, Any]:
        """Energy of one device: the counter delta if it is sound, else the integrated power samples."""
        result: dict[str, Any] = {"index": device.index, "name": device.name, "uuid": device.uuid}
        start_mj = window.counters_start_mj.get(device.index)
        own_samples = [(t, p) for t, i, p in samples if i == device.index]
        integrated_j, why_not = integrate_power(own_samples, duration_s, self._max_gap_s)
        fallback = "used power samples" if integrated_j is not None else f"no usable power samples ({why_not})"
        if start_mj is not None and stop_mj is not None:
            delta_j = (stop_mj - start_mj) / 1000.0  # mJ -> J
            if delta_j > 0:
                return result | {"energy_j": delta_j, "source": SOURCE_COUNTER, "error": None}
            if delta_j == 0 and duration_s < SHORT_WINDOW_S:
                problem = f"window-shorter-than-counter-update: device {device.index}: counter read 0 J"
            elif delta_j == 0:
                problem = f"counter-read-zero: device {device.index}: counter read 0 J"
            else:
                problem = f"counter-went-backwards: device {device.index}: counter read {delta_j:.6g} J"
            window.flags.append(f"{problem} over {duration_s:.3g} s; {fallback}")
        if integrated_j is not None:
            return result | {"energy_j": integrated_j, "source": SOURCE_POWER_SAMPLES, "error": None}
        error = f"no sound counter reading and {why_not}"
        return result | {"energy_j": None, "source": "unavailable:no-sound-reading", "error": error}


def _is_instance(error: BaseException, cls: object) -> bool:
    return isinstance(cls, type) and isinstance(error, cls)
