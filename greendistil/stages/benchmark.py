"""`benchmark`: inference latency, throughput, FLOPs and energy of the teacher and the student.

DistilBERT's headline is speed: "60% faster" than BERT-base (1.63x on CPU, Sanh et al. 2019, Table 3).
This stage measures that for greendistil's own pair, with energy. The protocol:

- Inputs: the first `num_examples` sentences of the task's (first) dev split, in file order, tokenized
  without padding, cut into batches in that order and padded per batch, then moved to the device. Every
  model sees the same batches; `details.inputs_hash` (sha256 of the token ids) proves it, and ratios are
  only computed between records with the same hash (`report.serving.throughput_ratios`).
- One measurement window per (role, batch size), so each record holds one model's energy. For each batch
  size the teacher runs, then the student: interleaved, so slow drift (thermals, other load) hits both.
- Before the window opens: `warmup_batches` untimed batches, then one batch under the FLOP counter.
- In the window: `repeats` timed passes over all batches, and more passes until the timed work lasts
  `min_window_s` (a window shorter than the energy meter's resolution would read ~0 J). Each batch is timed
  alone, with the device synchronized before every clock read. Only the model's forward is timed:
  tokenization, padding and host-to-device copies happen before the window.
- The device's fast path: `torch.inference_mode()` always, bf16 autocast on a GPU (`details.fast_path`).

Energy per 1,000 examples needs the window's energy, known only once it closes: it is derived from the
records by `greendistil.report.serving.benchmark_summary`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from greendistil.config import BenchmarkStage
from greendistil.data.batching import Batch, EncodedSplit, collate, encode
from greendistil.data.glue import GlueExamples
from greendistil.measure.flops import COUNTER_NAME, count_flops
from greendistil.measure.window import Clock, Window
from greendistil.models.inputs import model_inputs
from greendistil.models.sources import LoadedModel, count_params
from greendistil.runtime.device import synchronize
from greendistil.runtime.precision import Precision
from greendistil.stages.context import OpenWindow, StageContext

logger = logging.getLogger(__name__)

MAX_PASSES = 100_000  # a safety stop for min_window_s; reaching it flags the record


@dataclass(frozen=True, kw_only=True)
class BenchInputs:
    """One model's batches for one batch size: on the device, model inputs only, in file order."""

    batches: list[Batch]
    num_examples: int  # per pass
    num_tokens: int  # real (unpadded) tokens per pass
    num_padded_tokens: int  # what the model computes on, per pass
    inputs_hash: str


@dataclass(frozen=True, kw_only=True)
class TimedPasses:
    """Wall-clock seconds of each timed batch and each pass (a pass = all batches once)."""

    batch_s: list[float]
    pass_s: list[float]
    window_s: float  # from the first timed batch to the last

    @property
    def num_passes(self) -> int:
        return len(self.pass_s)


class ScaledFlops:
    """FLOPs of the timed passes: one batch counted outside the window, scaled by padded tokens. The
    window reads it as its `FlopFigureSource` (`total_flops`, `source`, `by_component`).
    """

    def __init__(self, component: str, counted_flops: int, counted_padded_tokens: int, error: str | None = None) -> None:
        self.component, self.counted_flops, self.counted_padded_tokens = component, counted_flops, counted_padded_tokens
        self.timed_padded_tokens = 0
        self.error = error  # the counter raised: no FLOP figure, and the record says why

    def total_flops(self) -> int | None:
        if self.counted_flops <= 0 or self.counted_padded_tokens <= 0 or self.timed_padded_tokens <= 0:
            return None
        return round(self.counted_flops * self.timed_padded_tokens / self.counted_padded_tokens)

    def source(self) -> str:
        if self.counted_flops <= 0:
            return "unavailable:flop-count-failed"
        return f"counted:{COUNTER_NAME}(1 batch per model and batch size, extrapolated by padded tokens)"

    def by_component(self) -> dict[str, int]:
        total = self.total_flops()
        return {} if total is None else {self.component: total}


def run_benchmark(ctx: StageContext, cfg: BenchmarkStage, open_window: OpenWindow) -> None:
    """Benchmark each role at each batch size, one window each (`cfg.windows()`); windows measured before
    an interruption (`--resume`) are not repeated. Models are the run's latest (`ctx.load`)."""
    pending = [spec for spec in cfg.windows() if not open_window.is_done(spec)]
    if ctx.benchmark_examples is None:
        raise ValueError("no benchmark examples: the preflight reads them for a benchmark stage (a bug)")
    examples = ctx.benchmark_examples.head(cfg.num_examples)
    models = {role: ctx.load(role) for role in dict.fromkeys(spec.role for spec in pending)}
    encoded: dict[str, EncodedSplit] = {}
    for role, loaded in models.items():
        loaded.model.to(ctx.device).eval()
        encoded[role] = encode(examples, loaded.tokenizer, ctx.config.task.max_seq_length)
    with _threads(_num_threads(ctx, cfg)):
        for spec in pending:  # interleaved: teacher then student at each batch size
            loaded, batch_size = models[spec.role], int(spec.batch_size or 1)
            inputs = make_inputs(encoded[spec.role], batch_size=batch_size, model=loaded.model,
                                 pad_token_id=loaded.tokenizer.pad_token_id, device=ctx.device)
            with fast_path_context(ctx.precision):
                warm_up(loaded.model, inputs.batches, cfg.warmup_batches, ctx.device)
                flops = _count_one_batch(loaded.model, inputs.batches[0], f"{spec.role}_forward")
            with open_window(spec) as window:
                _measure_window(ctx, cfg, window, loaded, inputs, flops, batch_size, examples)


def _measure_window(ctx: StageContext, cfg: BenchmarkStage, window: Window, loaded: LoadedModel,
                    inputs: BenchInputs, flops: ScaledFlops, batch_size: int, examples: GlueExamples) -> None:
    counters = window.counters
    counters.model, counters.num_params = loaded.source, count_params(loaded.model)
    counters.flop_sampler = flops
    counters.details.update({
        "batch_size": batch_size, "fast_path": fast_path(ctx.precision), "device": str(ctx.device),
        "torch_threads": torch.get_num_threads(), "warmup_batches": cfg.warmup_batches,
        "min_window_s": cfg.min_window_s, "inputs_hash": inputs.inputs_hash,
        "split": examples.split, "data_source": examples.source,
        "timing": "model forward only; inputs tokenized, padded and on the device before the window",
    })
    with fast_path_context(ctx.precision):
        timed = time_passes(loaded.model, inputs.batches, repeats=cfg.repeats, min_window_s=cfg.min_window_s,
                            device=ctx.device, clock=ctx.clock)
    _fill_counters(window, cfg, batch_size, inputs, timed, flops)
    logger.info("%s: %.1f examples/s over %d passes", window.stage,
                counters.metrics.get("examples_per_s", float("nan")), timed.num_passes)


def _num_threads(ctx: StageContext, cfg: BenchmarkStage) -> int:
    """The stage's threads. Under torchrun each process has 1 thread (OMP_NUM_THREADS) and rank 0 benchmarks
    while the others wait: on a CPU it gets the cores a single process would have, so its figures compare."""
    if ctx.job_world_size > 1 and ctx.device.type == "cpu" and cfg.num_threads == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cfg.num_threads


def inputs_hash(encoded: EncodedSplit) -> str:
    """sha256 of the token ids (and token types), in order: equal hashes mean the same inputs."""
    payload = json.dumps([encoded.input_ids, encoded.token_type_ids], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def make_inputs(encoded: EncodedSplit, *, batch_size: int, model: torch.nn.Module, pad_token_id: int,
                device: torch.device) -> BenchInputs:
    """Batches of `batch_size` in file order (the last may be short), padded per batch, on `device`."""
    if len(encoded) == 0:
        raise ValueError("benchmark: no examples to run")
    batches, num_tokens, num_padded = [], 0, 0
    for start in range(0, len(encoded), batch_size):
        batch = collate([encoded[i] for i in range(start, min(start + batch_size, len(encoded)))], pad_token_id)
        num_tokens += int(batch["attention_mask"].sum())
        num_padded += batch["input_ids"].numel()
        batches.append({k: v.to(device) for k, v in model_inputs(batch, model).items()})
    return BenchInputs(batches=batches, num_examples=len(encoded), num_tokens=num_tokens,
                       num_padded_tokens=num_padded, inputs_hash=inputs_hash(encoded))


def fast_path(precision: Precision) -> str:
    """The name of the benchmark's fast path, as the record states it."""
    return "inference_mode+bf16-autocast" if precision.name == "bf16" else "inference_mode"


@contextlib.contextmanager
def fast_path_context(precision: Precision) -> Iterator[None]:
    """torch.inference_mode(), in the run's precision (bf16 autocast where it computes in bf16)."""
    with torch.inference_mode(), precision.autocast():
        yield


def warm_up(model: torch.nn.Module, batches: list[Batch], num_batches: int, device: torch.device) -> None:
    """Untimed forwards (kernel selection, allocator, caches) before the window opens."""
    for index in range(num_batches):
        model(**batches[index % len(batches)])
    synchronize(device)


def time_passes(model: torch.nn.Module, batches: list[Batch], *, repeats: int, min_window_s: float,
                device: torch.device, clock: Clock = time.perf_counter) -> TimedPasses:
    """At least `repeats` timed passes over `batches`, more until they last `min_window_s` in all, on `clock`."""
    batch_s: list[float] = []
    pass_s: list[float] = []
    synchronize(device)
    first = clock()
    while len(pass_s) < MAX_PASSES and (len(pass_s) < repeats or clock() - first < min_window_s):
        pass_start = clock()
        for batch in batches:
            start = clock()
            model(**batch)
            synchronize(device)  # queued GPU work belongs to this batch's time
            batch_s.append(clock() - start)
        pass_s.append(clock() - pass_start)
    return TimedPasses(batch_s=batch_s, pass_s=pass_s, window_s=clock() - first)


def latency_stats(batch_s: list[float]) -> dict[str, float]:
    """p50, p95, mean and standard deviation of per-batch latency, in milliseconds."""
    ms = np.asarray(batch_s, dtype=np.float64) * 1e3
    return {"latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p95": float(np.percentile(ms, 95)),
            "latency_ms_mean": float(ms.mean()), "latency_ms_std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0}


def throughput_stats(timed: TimedPasses, inputs: BenchInputs, flops_per_pass: float | None) -> dict[str, float]:
    """Per-pass rates, averaged over passes; the spread is the standard deviation across passes."""
    seconds = np.asarray(timed.pass_s, dtype=np.float64)
    examples_per_s = inputs.num_examples / seconds
    stats = {
        "examples_per_s": float(examples_per_s.mean()),
        "examples_per_s_std": float(examples_per_s.std(ddof=1)) if len(seconds) > 1 else 0.0,
        "tokens_per_s": float((inputs.num_tokens / seconds).mean()),
    }
    if flops_per_pass:
        stats["flops_per_example"] = flops_per_pass / inputs.num_examples
        stats["gflops_per_s"] = float((flops_per_pass / seconds).mean()) / 1e9
    return stats


@contextlib.contextmanager
def _threads(num_threads: int) -> Iterator[None]:
    """Pin torch's intra-op threads for the benchmark (0: leave them), and restore them afterwards."""
    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _count_one_batch(model: torch.nn.Module, batch: Batch, component: str) -> ScaledFlops:
    try:
        _, flops = count_flops(lambda: model(**batch))
    except Exception as err:  # a counter fault must not stop the benchmark
        logger.warning("FLOP counting failed for %s: %s", component, err)
        return ScaledFlops(component, 0, batch["input_ids"].numel(), error=f"{component}: {type(err).__name__}: {err}")
    return ScaledFlops(component, flops, batch["input_ids"].numel())


def _fill_counters(window: Window, cfg: BenchmarkStage, batch_size: int, inputs: BenchInputs, timed: TimedPasses,
                   flops: ScaledFlops) -> None:
    counters, passes = window.counters, timed.num_passes
    counters.num_examples = inputs.num_examples * passes
    counters.num_tokens = inputs.num_tokens * passes
    counters.num_padded_tokens = inputs.num_padded_tokens * passes
    counters.num_steps = len(timed.batch_s)
    flops.timed_padded_tokens = counters.num_padded_tokens
    total = flops.total_flops()
    flops_per_pass = total / passes if total else None
    counters.metrics.update({
        **latency_stats(timed.batch_s), **throughput_stats(timed, inputs, flops_per_pass),
        "batch_size": batch_size, "num_examples": inputs.num_examples,
        "repeats": cfg.repeats,
    })
    counters.details.update({"passes": passes, "timed_s": timed.window_s, "num_batches": len(inputs.batches)})
    if timed.window_s < cfg.min_window_s:
        counters.details["energy_resolution_flag"] = (
            f"timed work lasted {timed.window_s:.3f} s < min_window_s={cfg.min_window_s} after {passes} passes: "
            "the energy meter may not resolve this window")
