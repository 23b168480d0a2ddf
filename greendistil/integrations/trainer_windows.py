"""The measurement side of the Trainer callback: one run directory, its meters, and the one open window.

`TrainerSession` opens a greendistil measurement window (`measure.window.measure`, so exactly one record in
the same schema) when a `Trainer` starts training, evaluating or predicting, and closes it, however that
call ends: normally, by an exception, or by SIGINT/SIGTERM, whose handlers are ours only while a window is
open (a signal writes the window's record, then goes on to the handler that was there before). A forward
pre-hook on the model counts examples and padded tokens, and real tokens on the device (read once, when
the window closes), so no step waits for the host.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from greendistil import distributed
from greendistil.config.tables import CarbonSection
from greendistil.data.grid import grid_intensity
from greendistil.errors import RunInterrupted, StageError
from greendistil.measure.carbon import CarbonMeter
from greendistil.measure.flops import FlopSampler, count_nonembedding_params, new_flop_counter
from greendistil.measure.nvml import NvmlMeter
from greendistil.measure.window import Clock, Meters, RunInfo, Window, measure
from greendistil.runlog.store import RunLock, check_writable, node_emissions_file, read_records
from greendistil.runtime.environment import git_sha, hardware, versions

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class OpenWindow:
    """The window being measured and what its forward passes added up to so far."""

    name: str
    kind: str  # finetune | distill (a train() call) | evaluate (evaluate() or predict())
    context: AbstractContextManager[Window]
    window: Window
    num_nonembedding_params: int = 0
    real_tokens: torch.Tensor | None = None  # summed on the model's device; read when the window closes
    step_padded_tokens: int = 0  # padded tokens of the current optimizer step (its micro-batches)
    flop_counter: Any = None  # a FlopCounterMode while a sampled step runs
    num_eval_examples: int = 0  # evaluation forwards inside train(): in its time and energy, not its FLOPs
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def training(self) -> bool:
        return self.kind != "evaluate"


class TrainerSession:
    """A run directory measured by the callback: meters made on the first window, one window at a time."""

    def __init__(self, run_dir: Path, *, carbon: CarbonSection, task: str | None, command: str | None,
                 config_hash: str, flop_sample_steps: int = 3, flop_sample_every: int = 200,
                 clock: Clock = time.perf_counter, nvml: Any = None) -> None:
        self.run_dir, self.carbon, self.task, self.clock = run_dir, carbon, task, clock
        self.flop_sample_steps, self.flop_sample_every = flop_sample_steps, flop_sample_every
        self._command, self._config_hash, self._nvml = command, config_hash, nvml
        self.open: OpenWindow | None = None
        self._run: RunInfo | None = None
        self._meters: Meters | None = None
        self._lock: RunLock | None = None
        self._names: dict[str, int] = {}
        self._previous_handlers: dict[int, Any] = {}

    # ---- windows ---------------------------------------------------------------------------------
    def begin(self, base_name: str, *, kind: str, role: str, model: torch.nn.Module | None) -> OpenWindow:
        """Open the next window (`train`, `train-2`, ...); one still open is first closed as failed."""
        if self.open is not None:
            self.end(StageError(f"{self.open.name}: the Trainer call ended without telling its callbacks "
                                "(it raised, and the exception was caught)"))
        run, meters = self._start(_device_of(model))
        name = self._next_name(base_name)
        context = measure(stage=name, kind=kind, role=role, meters=meters, run=run, clock=self.clock)
        window = context.__enter__()
        self.open = OpenWindow(name=name, kind=kind, context=context, window=window,
                               num_nonembedding_params=count_nonembedding_params(model) if model is not None else 0)
        window.counters.flop_sampler = FlopSampler(sample_steps=self.flop_sample_steps,
                                                   sample_every=self.flop_sample_every)
        if model is not None:
            window.counters.model = type(model).__name__
            window.counters.num_params = sum(p.numel() for p in model.parameters())
        self._hold_signals()
        return self.open

    def end(self, error: BaseException | None = None) -> dict[str, Any] | None:
        """Close the open window (ok, or with `error`'s status) and return its record. Never raises."""
        current, self.open = self.open, None
        if current is None:
            return None
        self._release_signals()
        try:
            _settle(current)
            if error is None:
                current.context.__exit__(None, None, None)
            else:
                current.context.__exit__(type(error), error, error.__traceback__)
        except Exception as err:  # the tracker never breaks training
            logger.warning("greendistil: closing window %r failed: %s: %s", current.name, type(err).__name__, err)
        return current.window.record

    def live_scalars(self) -> dict[str, float]:
        return self.open.window.live_scalars() if self.open is not None else {}

    def close(self) -> None:
        """Close any open window (as failed: the process is ending without the Trainer having finished it),
        then the meters and the lock."""
        if self.open is not None:
            self.end(StageError(f"{self.open.name}: the process ended while the Trainer call was running"))
        if self._meters is not None:
            self._meters.gpu.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---- counting --------------------------------------------------------------------------------
    def count_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: this batch's examples and tokens go to the open window."""
        current = self.open
        if current is None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
            return
        training_forward = module.training and torch.is_grad_enabled()
        if current.training and not training_forward:  # an evaluation inside train()
            current.num_eval_examples += int(ids.shape[0])
            return
        counters = current.window.counters
        padded = int(ids.numel())
        counters.num_examples += int(ids.shape[0])
        counters.num_padded_tokens += padded
        counters.flops_analytic += (6.0 if current.training else 2.0) * current.num_nonembedding_params * padded
        mask = kwargs.get("attention_mask")
        real = mask.detach().sum() if isinstance(mask, torch.Tensor) else torch.tensor(padded)
        current.real_tokens = real if current.real_tokens is None else current.real_tokens + real
        if current.training:
            current.step_padded_tokens += padded
            return
        counters.num_steps += 1
        current.step_padded_tokens = padded
        sampler = counters.flop_sampler
        if isinstance(sampler, FlopSampler) and sampler.should_count(counters.num_steps - 1):
            self._start_counter(current, sampler)

    def forward_done(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                     output: Any) -> None:
        """Forward hook: an evaluation batch is done; it goes to the FLOP sampler."""
        current = self.open
        if current is None or current.training:
            return
        self.end_step_flops()
        self._sample(current, "forward")

    def begin_step(self, step_index: int) -> None:
        """A training step starts: count its FLOPs when the sampler picks it."""
        current = self.open
        if current is None or not current.training:
            return
        sampler = current.window.counters.flop_sampler
        if isinstance(sampler, FlopSampler) and sampler.should_count(step_index):
            self._start_counter(current, sampler)

    def _start_counter(self, current: OpenWindow, sampler: FlopSampler) -> None:
        try:
            counter = new_flop_counter()
            counter.__enter__()
            current.flop_counter = counter
        except Exception as err:
            sampler.fail(f"FlopCounterMode failed to start: {type(err).__name__}: {err}")

    def end_step_flops(self) -> None:
        """Forward and backward are done (before the optimizer step): stop counting this step."""
        current = self.open
        if current is None or current.flop_counter is None:
            return
        counter, current.flop_counter = current.flop_counter, None
        sampler = current.window.counters.flop_sampler
        try:
            counter.__exit__(None, None, None)
            current.details["counted_flops"] = int(counter.get_total_flops())
        except Exception as err:
            if isinstance(sampler, FlopSampler):
                sampler.fail(f"FlopCounterMode failed: {type(err).__name__}: {err}")

    def end_step(self) -> None:
        """One optimizer step is over: it goes to the FLOP sampler with its padded tokens."""
        current = self.open
        if current is None or not current.training:
            return
        self.end_step_flops()
        self._sample(current, "train")
        current.window.counters.num_steps += 1

    @staticmethod
    def _sample(current: OpenWindow, component: str) -> None:
        """The step (or batch) just done, counted or not, with its padded tokens."""
        sampler = current.window.counters.flop_sampler
        flops = current.details.pop("counted_flops", None)
        if isinstance(sampler, FlopSampler):
            if flops is not None:
                sampler.add_counted(component, flops, current.step_padded_tokens)
            else:
                sampler.add_uncounted(component, current.step_padded_tokens)
        current.step_padded_tokens = 0

    # ---- setup -----------------------------------------------------------------------------------
    def _start(self, device: torch.device) -> tuple[RunInfo, Meters]:
        """The run's description and meters, on the first window (the device: where the model computes)."""
        if self._run is not None and self._meters is not None:
            return self._run, self._meters
        dist = distributed.init("auto", device_choice=device.type) if "WORLD_SIZE" in os.environ else distributed.SINGLE
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.run_dir)
            check_writable(self.run_dir)
            self._names = _used_names(self.run_dir)
        intensity, source = grid_intensity(self.carbon.country_iso_code, self.carbon.intensity_g_per_kwh)
        self._run = RunInfo(
            run_id=self.run_dir.name, run_dir=self.run_dir, config_hash=self._config_hash, git_sha=git_sha(),
            versions=versions(), hardware=hardware(device), country_iso_code=self.carbon.country_iso_code,
            pue=self.carbon.pue, intensity_g_per_kwh=intensity, intensity_source=source, command=self._command,
            task=self.task)
        self._meters = Meters(
            carbon=CarbonMeter(output_dir=self.run_dir, run_id=self.run_dir.name,
                               country_iso_code=self.carbon.country_iso_code,
                               measure_power_s=self.carbon.measure_power_s,
                               intensity_g_per_kwh=self.carbon.intensity_g_per_kwh,
                               output_file=node_emissions_file(dist.node_rank),
                               tracking_mode=self.carbon.tracking_mode) if dist.is_node_leader else None,
            gpu=NvmlMeter(sample_interval_s=self.carbon.gpu_sample_interval_s, nvml=self._nvml,
                          device_indices=[device.index or 0] if device.type == "cuda" else None),
            dist=dist)
        return self._run, self._meters

    def _next_name(self, base: str) -> str:
        count = self._names.get(base, 0) + 1
        self._names[base] = count
        return base if count == 1 else f"{base}-{count}"

    # ---- signals ---------------------------------------------------------------------------------
    def _hold_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in HANDLED_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _release_signals(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, number: int, frame: Any) -> None:
        """Write the open window's record as interrupted, then let the signal do what it did before."""
        name = signal.Signals(number).name
        self.end(RunInterrupted(f"{name} received while the Trainer ran"))
        os.kill(os.getpid(), number)  # to the handler that was in place before ours (default: terminate)


def _device_of(model: torch.nn.Module | None) -> torch.device:
    """Where the model's parameters are (the Trainer has placed it by then); the CPU without a model."""
    if model is not None:
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def _settle(current: OpenWindow) -> None:
    """Finish the window's counts: the real tokens (one host read), a step left half-counted."""
    counters = current.window.counters
    if current.flop_counter is not None:
        try:
            current.flop_counter.__exit__(None, None, None)
        except Exception:
            pass
        current.flop_counter = None
    if current.real_tokens is not None:
        counters.num_tokens = int(current.real_tokens.item())  # CPU-GPU sync point, once per window
    if current.num_eval_examples:
        counters.details["eval_examples_inside_train"] = current.num_eval_examples
        counters.details["eval_inside_train_note"] = ("evaluation inside train() is in this window's duration "
                                                      "and energy, not in its FLOPs")


def _used_names(run_dir: Path) -> dict[str, int]:
    """How often each window name was used by earlier scripts writing this run directory."""
    names: dict[str, int] = {}
    for record in read_records(run_dir):
        base, _, number = str(record.get("stage", "")).rpartition("-")
        if base and number.isdigit():
            names[base] = max(names.get(base, 0), int(number))
        else:
            stage = str(record.get("stage", ""))
            names[stage] = max(names.get(stage, 0), 1)
    return names


def command_line() -> str:
    return " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
