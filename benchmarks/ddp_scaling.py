"""The same run with one process and with `torchrun --nproc-per-node N`, side by side: wall time, each
stage's time and energy, the work done (examples, FLOPs) and the dev metrics, and their ratios.

    GLUE_DIR=../shared/glue python benchmarks/ddp_scaling.py configs/quick.toml [--nproc 2] [--set KEY=VALUE ...]

The point on a CPU machine is correctness (the same examples, the same metric within noise, energy counted
once) as much as speed: N processes share the machine's cores, so expect little gain on 2 cores. Both runs
use the whole machine: one process with torch's default threads (one per core), and N processes with
cores / N threads each (torchrun's OMP_NUM_THREADS=1 on 2 cores). The benchmark stage, if the config has
one, runs on rank 0 alone under torchrun and is left out of the comparison (a latency figure, not training).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from greendistil.runlog.store import read_records

STAGE_FIELDS = ("duration_s", "energy_kwh", "num_examples", "num_steps", "flops")


def run(command: list[str], env: dict[str, str]) -> float:
    """Run `command`; its wall time in seconds. Stops the benchmark if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall_s


def stage_rows(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["stage"]: r for r in read_records(run_dir) if r["kind"] != "benchmark"}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default="runs")
    args = parser.parse_args()
    tag = time.strftime("%Y%m%d-%H%M%S")
    sets = [f"--set={o}" for o in [*args.overrides, f"run.output_dir={args.output_dir}"]]
    cores = os.cpu_count() or 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    base = ["-m", "greendistil", "run", str(args.config), "--no-progress", *sets]
    one_id, ddp_id = f"scaling-1proc-{tag}", f"scaling-{args.nproc}proc-{tag}"
    one_s = run([sys.executable, *base, "--run-id", one_id], env)
    ddp_env = {**env, "OMP_NUM_THREADS": str(max(1, cores // args.nproc))}
    ddp_s = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                 str(args.nproc), *base, "--run-id", ddp_id], ddp_env)
    one, ddp = stage_rows(Path(args.output_dir) / one_id), stage_rows(Path(args.output_dir) / ddp_id)
    print(f"config {args.config} {' '.join(args.overrides)} | {cores} cores | 1 process vs torchrun "
          f"--nproc-per-node {args.nproc} (gloo, {max(1, cores // args.nproc)} thread(s) each)")
    print(f"wall time (whole command, incl. start-up): {one_s:.1f} s vs {ddp_s:.1f} s -> "
          f"{args.nproc}-proc / 1-proc = {ddp_s / one_s:.2f}")
    print(f"\n| stage | field | 1 process | {args.nproc} processes | ratio |\n|---|---|---:|---:|---:|")
    for stage, single in one.items():
        for field in STAGE_FIELDS:
            a, b = single.get(field), ddp.get(stage, {}).get(field)
            print(f"| {stage} | {field} | {a:.4g} | {b:.4g} | {ratio(b, a)} |" if a is not None and b is not None
                  else f"| {stage} | {field} | {a} | {b} | - |")
        for name, value in single["metrics"].items():
            other = ddp.get(stage, {}).get("metrics", {}).get(name)
            shown = f"{other:.4f}" if other is not None else "-"
            print(f"| {stage} | {name} | {value:.4f} | {shown} | {ratio(other, value)} |")
    print(f"\nruns: {Path(args.output_dir) / one_id}, {Path(args.output_dir) / ddp_id}")


if __name__ == "__main__":
    main()
