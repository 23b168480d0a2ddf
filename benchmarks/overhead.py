"""What measuring costs: one training stage with every meter on vs with measurement off, side by side.

    GLUE_DIR=../shared/glue python benchmarks/overhead.py [--config configs/quick.toml] [--stage distill]
        [--repeats 5] [--set KEY=VALUE ...]

The stages before `--stage` run once, measured as usual (the teacher the stage distils from). Then the stage
runs 2 x `--repeats` times on the same data from the same seed, alternating which side goes first:
- on: as `greendistil run` runs it: its measurement window (codecarbon, NVML, the run log read for budgets
  and forecasts, the in-run forecaster at every step, a record written), FLOPs counted on the stage's
  sampled steps, codecarbon flushed at each checkpoint;
- off: the same runner and loop in a bare window (no meter, no record, no forecast) and no step
  FLOP-counted. This switch exists only here: `greendistil run` always measures.
Checkpoints are written on both sides (they are training state, not measurement). An untimed warm-up run
goes first (tokenization, first-use costs). Printed: each pair's wall times, the median of the pairs'
on/off ratios with their range and the ratio of the summed times, the share of steps FLOP-counted, and the
load average (what else was running). Target: <= 1.01 on configs/quick.toml's distill stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from greendistil.config import WindowSpec, load_config, suite_steps
from greendistil.distributed import SINGLE
from greendistil.measure.window import Window
from greendistil.pipeline import Contexts, RunRequest, WindowOpener, execute, start_run
from greendistil.preflight import preflight
from greendistil.runlog.progress import RunProgress
from greendistil.runlog.store import create_run_dir, open_run_dir, read_records
from greendistil.runtime.rng import seed_everything
from greendistil.stages import RUNNERS


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
    parser.add_argument("--repeats", type=int, default=5, help="pairs of runs (default 5)")
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
    artifacts = {role: path for (task, _), found in done.artifacts.items() for role, path in found.items()}
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {"on": [], "off": []}
    try:
        # One untimed run first: the split's tokenization (cached for every later run), the allocator's and
        # codecarbon's first-use costs (its hardware probe runs once per process) fall on neither side.
        seed_everything(step.torch_seed)
        RUNNERS[step.stage.kind](dataclasses.replace(base, artifacts=dict(artifacts)), step.stage,
                                 Unmeasured(step.stage.kind))
        for repeat in range(args.repeats):
            for side in (("on", "off") if repeat % 2 == 0 else ("off", "on")):
                ctx = dataclasses.replace(base, artifacts=dict(artifacts), count_flops=side == "on")
                opener = (WindowOpener(step.stage, dataclasses.replace(run, task=step.task), meters, RunProgress(),
                                       time.perf_counter) if side == "on" else Unmeasured(step.stage.kind))
                seed_everything(step.torch_seed)
                start_s = time.perf_counter()
                RUNNERS[step.stage.kind](ctx, step.stage, opener)
                walls[side].append(time.perf_counter() - start_s)
            print(f"pair {repeat + 1}: on {walls['on'][-1]:.2f} s, off {walls['off'][-1]:.2f} s, "
                  f"ratio {walls['on'][-1] / walls['off'][-1]:.4f}", flush=True)
    finally:
        meters.gpu.close()
        lock.release()
    ratios = [on / off for on, off in zip(walls["on"], walls["off"])]
    records = [r for r in read_records(run_dir) if r.get("stage") == step.stage.name]
    sampled = [re.search(r"\((\d+)/(\d+) steps sampled", str(r.get("flops_source"))) for r in records]
    counted = [f"{m.group(1)}/{m.group(2)}" for m in sampled if m] or [str(records[-1].get("flops_source"))]
    print(f"stage {step.stage.name!r} of {args.config}: {records[-1].get('num_steps')} steps, "
          f"{args.repeats} pairs, order alternating")
    print(f"wall time on/off: median of the pairs' ratios {statistics.median(ratios):.4f} (range {min(ratios):.4f} - "
          f"{max(ratios):.4f}); ratio of the sums {sum(walls['on']) / sum(walls['off']):.4f}; median on "
          f"{statistics.median(walls['on']):.2f} s, off {statistics.median(walls['off']):.2f} s")
    print(f"FLOP-counted steps per measured run: {', '.join(dict.fromkeys(counted))}")
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
