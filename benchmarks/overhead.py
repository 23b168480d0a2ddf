"""What measuring costs: one training stage with every meter on vs with measurement off, side by side.

    GLUE_DIR=../shared/glue python benchmarks/overhead.py [--config configs/quick.toml] [--stage distill]
        [--repeats 10] [--flop-pairs 2] [--set KEY=VALUE ...]

The stages before `--stage` run once, measured as usual (the teacher the stage distils from). Then the stage
runs 2 x `--repeats` times on the same data from the same seed, alternating which side goes first:
- on: as `greendistil run` runs it: its measurement window (codecarbon, NVML, the run log read for budgets
  and forecasts, the in-run forecaster at every step, a record written), FLOPs counted on the stage's
  sampled steps, codecarbon flushed at each checkpoint;
- off: the same runner and loop in a bare window (no meter, no record, no forecast) and no step
  FLOP-counted. This switch exists only here: `greendistil run` always measures.
Checkpoints are written on both sides (they are training state, not measurement). An untimed warm-up run
goes first (tokenization, first-use costs). Printed: each pair's wall times; for wall and process CPU time
the median of the pairs' ratios with their range and the ratio of the summed times with a 90% bootstrap
interval over the pairs; the share of steps FLOP-counted; and the load average (what else was running).
Target: <= 1.01 on configs/quick.toml's distill stage.

A shared machine's pace drifts by several per cent between runs, more than the effect measured, so
`--flop-pairs` also times the stage unmeasured with every step FLOP-counted vs none: the difference per step
is a counted step's extra cost, far above the noise, and at the stage's own sampling it gives FLOP
counting's share of the stage's time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from greendistil.config import TrainingStage, WindowSpec, load_config, suite_steps
from greendistil.data.batching import PlannedSteps
from greendistil.distributed import SINGLE
from greendistil.measure.window import Window
from greendistil.pipeline import Contexts, RunRequest, WindowOpener, execute, start_run
from greendistil.preflight import preflight
from greendistil.runlog.progress import RunProgress
from greendistil.runlog.store import create_run_dir, open_run_dir, read_records
from greendistil.runtime.rng import seed_everything
from greendistil.stages import RUNNERS
from greendistil.stages.context import StageContext


class Unmeasured:
    """An opener of bare windows: no meters, no record, no forecast (the benchmark's off side)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def is_done(self, spec: WindowSpec) -> bool:
        return False

    @contextlib.contextmanager
    def __call__(self, spec: WindowSpec) -> Iterator[Window]:
        yield Window(spec.name, self.kind, spec.role)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quick.toml")
    parser.add_argument("--stage", default="distill", help="the training stage to time (default: distill)")
    parser.add_argument("--repeats", type=int, default=10, help="pairs of runs (default 10)")
    parser.add_argument("--flop-pairs", type=int, default=2,
                        help="pairs of unmeasured runs, every step FLOP-counted vs none (default 2; 0 skips)")
    parser.add_argument("--part-repeats", type=int, default=20,
                        help="repeats of each part of measuring timed alone (default 20; 0 skips)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="greendistil-overhead-"))
    config = load_config(args.config, [*args.set, f"run.output_dir={str(workdir)!r}", "run.report=false"])
    steps = [s for s in suite_steps(config)]
    at = next((i for i, s in enumerate(steps) if s.stage.name == args.stage), None)
    if at is None or steps[at].stage.kind not in ("finetune", "distill", "pretrain"):
        print(f"overhead: --stage {args.stage!r} is not a training stage of {args.config}; training stages: "
              f"{', '.join(s.stage.name for s in steps if s.stage.kind in ('finetune', 'distill', 'pretrain'))}",
              file=sys.stderr)
        return 2
    step = steps[at]
    setup = dataclasses.replace(config, stages=config.stages[:step.index])
    setup_dir = execute(RunRequest(config=setup, run_id="setup", show_progress=False)) if setup.stages else None
    done = RunProgress.from_records(setup_dir, read_records(setup_dir)) if setup_dir else RunProgress()
    checked = preflight(config)
    # The measured windows' records go to the setup run's log: its models are what the stage starts from.
    run_dir, lock = (setup_dir, open_run_dir(setup_dir)) if setup_dir else create_run_dir(workdir, "measured")
    run, meters, device = start_run(config, checked, run_dir, command="benchmarks/overhead.py")
    contexts = Contexts(RunRequest(config=config, show_progress=False), checked, run_dir, device, done, SINGLE)
    base = contexts.get(step.task, step.seed)
    artifacts = dict(base.artifacts)  # this (task, seed)'s models over those its seeds share
    load_before = os.getloadavg()

    def timed(ctx: StageContext, stage: TrainingStage, opener: Any) -> tuple[float, float]:
        """(wall s, this process's CPU s) of one run of the stage from the same seed."""
        seed_everything(step.torch_seed)
        wall_s, cpu = time.perf_counter(), os.times()
        RUNNERS[stage.kind](dataclasses.replace(ctx, artifacts=dict(artifacts)), stage, opener)
        after = os.times()
        return time.perf_counter() - wall_s, (after.user + after.system) - (cpu.user + cpu.system)

    walls: dict[str, list[float]] = {"on": [], "off": []}
    cpus: dict[str, list[float]] = {"on": [], "off": []}
    counted_all: list[tuple[float, float]] = []  # (every step counted, none) wall s
    try:
        # One untimed run first: the split's tokenization (cached for every later run), the allocator's and
        # codecarbon's first-use costs (its hardware probe runs once per process) fall on neither side.
        timed(base, step.stage, Unmeasured(step.stage.kind))
        for repeat in range(args.repeats):
            for side in (("on", "off") if repeat % 2 == 0 else ("off", "on")):
                opener = (WindowOpener(step.stage, dataclasses.replace(run, task=step.task), meters, RunProgress(),
                                       time.perf_counter) if side == "on" else Unmeasured(step.stage.kind))
                wall_s, cpu_s = timed(dataclasses.replace(base, count_flops=side == "on"), step.stage, opener)
                walls[side].append(wall_s)
                cpus[side].append(cpu_s)
            print(f"pair {repeat + 1}: on {walls['on'][-1]:.2f} s, off {walls['off'][-1]:.2f} s, "
                  f"ratio {walls['on'][-1] / walls['off'][-1]:.4f} (CPU time {cpus['on'][-1] / cpus['off'][-1]:.4f})",
                  flush=True)
        # FLOP counting amplified: every step counted vs none, both unmeasured, so that its cost per counted
        # step stands far above the machine's noise; at the stage's own sampling it is then a small share.
        every_step = dataclasses.replace(step.stage, flop_sample_every=1)
        for repeat in range(args.flop_pairs):
            pair = [0.0, 0.0]
            for counted in ((True, False) if repeat % 2 == 0 else (False, True)):
                pair[0 if counted else 1] = timed(dataclasses.replace(base, count_flops=counted), every_step,
                                                  Unmeasured(step.stage.kind))[0]
            counted_all.append((pair[0], pair[1]))
            print(f"flop pair {repeat + 1}: every step counted {pair[0]:.2f} s, none {pair[1]:.2f} s", flush=True)
        summarize(args, step, run_dir, run, meters, walls, cpus, counted_all, workdir)
    finally:
        meters.gpu.close()
        lock.release()
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    return 0


def summarize(args: argparse.Namespace, step: Any, run_dir: Path, run: Any, meters: Any, walls: dict[str, list[float]],
              cpus: dict[str, list[float]], counted_all: list[tuple[float, float]], workdir: Path) -> None:
    """The on/off ratios, FLOP counting amplified, and the parts of measuring timed alone."""
    records = [r for r in read_records(run_dir) if r.get("stage") == step.stage.name]
    num_steps = int(records[-1].get("num_steps") or 0)
    sampled = [re.search(r"\((\d+)/(\d+) steps sampled", str(r.get("flops_source"))) for r in records]
    num_counted = max((int(m.group(1)) for m in sampled if m), default=num_steps)
    print(f"stage {step.stage.name!r} of {args.config}: {num_steps} steps, {args.repeats} pairs, order alternating")
    for label, times in (("wall time", walls), ("CPU time", cpus)):
        ratios = [on / off for on, off in zip(times["on"], times["off"])]
        low, high = bootstrap_interval(times["on"], times["off"])
        print(f"{label} on/off: median of the pairs' ratios {statistics.median(ratios):.4f} (range {min(ratios):.4f} - "
              f"{max(ratios):.4f}); ratio of the sums {sum(times['on']) / sum(times['off']):.4f} (90% bootstrap "
              f"interval {low:.4f} - {high:.4f}); median on {statistics.median(times['on']):.2f} s, "
              f"off {statistics.median(times['off']):.2f} s")
    print(f"FLOP-counted steps per measured run: {num_counted}/{num_steps}")
    if counted_all and num_steps:
        extra_s = statistics.median([(every - none) / num_steps for every, none in counted_all])
        plain_step_s = statistics.median([none / num_steps for _, none in counted_all])
        share = extra_s * num_counted / statistics.median(walls["off"])
        print(f"FLOP counting, amplified ({len(counted_all)} pairs, every step counted vs none): a counted step costs "
              f"{(plain_step_s + extra_s) / plain_step_s:.3f}x a plain one (+{extra_s * 1000:.1f} ms); at "
              f"{num_counted}/{num_steps} counted steps that is {share:.2%} of the stage's unmeasured wall time")
    if args.part_repeats > 0 and walls["off"]:
        parts_dir, parts_lock = create_run_dir(workdir, "parts")  # the parts' records stay out of the stage's log
        opener = WindowOpener(step.stage, dataclasses.replace(run, task=step.task, run_dir=parts_dir), meters,
                              RunProgress(), time.perf_counter)
        spec = step.stage.windows()[0]
        try:
            parts = time_parts(lambda: opener(spec), lambda: Unmeasured(step.stage.kind)(spec), num_steps=num_steps,
                               hold_s=statistics.median(walls["off"]), repeats=args.part_repeats)
        finally:
            parts_lock.release()
        num_checkpoints = int(records[-1].get("num_checkpoints") or 0)
        flop_s = extra_s * num_counted if counted_all and num_steps else None
        print_parts(parts, num_steps=num_steps, num_checkpoints=num_checkpoints, flop_s=flop_s,
                    num_counted=num_counted, off_s=statistics.median(walls["off"]), repeats=args.part_repeats)


@dataclasses.dataclass(frozen=True)
class PartCosts:
    """What each part of measuring adds to one run of the stage, each timed alone, beyond a bare window."""

    window_s: float  # opening and closing a measured window (codecarbon's tracker, NVML, the run log, the record)
    thread_cpu_s: float  # CPU time the meters' sampling threads took while a window was open for `hold_s`
    hold_s: float
    per_step_s: float  # the loop's calls on the window after every step (forecaster, budget check): one step's
    flush_s: float  # one codecarbon flush (the loop flushes at every checkpoint)


def time_parts(measured: Any, bare: Any, *, num_steps: int, hold_s: float, repeats: int) -> PartCosts:
    """Each part of measuring timed alone, amplified by `repeats` (medians), measured window minus bare window:
    on a shared machine the whole stage's on/off ratio drifts by more than these parts add up to.
    `measured()` / `bare()` open a window of the stage; neither trains."""
    def window_s(open_window: Any) -> float:
        times = []
        for _ in range(repeats):
            start_s = time.perf_counter()
            with open_window():
                pass
            times.append(time.perf_counter() - start_s)
        return statistics.median(times)

    def steps_s(open_window: Any) -> float:
        if num_steps == 0:
            return 0.0
        planned = PlannedSteps(rows=[32] * num_steps, tokens=[32 * 20] * num_steps,
                               padded_tokens=[32 * (16 + (i * 7) % 48) for i in range(num_steps)])
        times = []
        for _ in range(max(1, repeats // 4)):
            with open_window() as window:
                start_s = time.perf_counter()
                for step in range(1, num_steps + 1):  # as train/loop.py calls them after each step
                    window.observe_step(step, first_step=0, total_steps=num_steps, planned=planned)
                    window.over_budget(step, 1)
                times.append(time.perf_counter() - start_s)
        return statistics.median(times) / num_steps

    with measured() as window:  # the meters' threads: CPU taken while the window is open and the process idles
        before = os.times()
        time.sleep(hold_s)
        after = os.times()
        flushes = []
        for _ in range(repeats):
            start_s = time.perf_counter()
            window.flush_meters()
            flushes.append(time.perf_counter() - start_s)
    return PartCosts(window_s=window_s(measured) - window_s(bare),
                     thread_cpu_s=(after.user + after.system) - (before.user + before.system), hold_s=hold_s,
                     per_step_s=steps_s(measured) - steps_s(bare), flush_s=statistics.median(flushes))


def print_parts(parts: PartCosts, *, num_steps: int, num_checkpoints: int, flop_s: float | None, num_counted: int,
                off_s: float, repeats: int) -> None:
    """The parts of measuring per run of the stage, and their sum as a share of the stage's unmeasured time."""
    # The threads' CPU seconds count as wall seconds: an upper bound, exact where training fills every core
    # (as here: 2 cores, 2 torch threads), less where a core is idle to run them.
    threads_s = parts.thread_cpu_s * off_s / parts.hold_s
    by_part = {"window open + close": parts.window_s, "meters' sampling threads (CPU s, as wall: an upper bound)": threads_s,
               f"per-step forecaster and budget check ({num_steps} steps)": parts.per_step_s * num_steps,
               f"codecarbon flush at checkpoints ({num_checkpoints})": parts.flush_s * num_checkpoints}
    if flop_s is not None:
        by_part[f"FLOP counting ({num_counted} counted steps)"] = flop_s
    print(f"parts of measuring, each timed alone (medians of {repeats}), per run of the stage:")
    for name, seconds in by_part.items():
        print(f"  {name}: {seconds * 1000:.1f} ms ({seconds / off_s:.2%})")
    total_s = sum(by_part.values())
    print(f"accounted overhead: {total_s * 1000:.0f} ms of the stage's {off_s:.2f} s unmeasured = {total_s / off_s:.2%}"
          f" (ratio {1 + total_s / off_s:.4f}); one codecarbon flush {parts.flush_s * 1000:.1f} ms, the meters' threads "
          f"{parts.thread_cpu_s * 1000:.0f} ms CPU over a {parts.hold_s:.1f} s window")


def bootstrap_interval(on: list[float], off: list[float], *, level: float = 0.90,
                       resamples: int = 2000) -> tuple[float, float]:
    """A percentile bootstrap interval of sum(on) / sum(off), resampling the pairs (fixed seed)."""
    rng = random.Random(0)
    pairs = list(zip(on, off))
    ratios = sorted(sum(a for a, _ in sample) / sum(b for _, b in sample)
                    for sample in ([rng.choice(pairs) for _ in pairs] for _ in range(resamples)))
    tail = (1.0 - level) / 2.0
    return ratios[int(tail * resamples)], ratios[min(resamples - 1, int((1.0 - tail) * resamples))]


if __name__ == "__main__":
    raise SystemExit(main())
