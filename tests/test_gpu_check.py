"""benchmarks/gpu_check.py: its dry run end to end on the CPU (every step but the CUDA ones), and its energy
checks on records and power samples as a GPU run writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from builders import load_benchmark, subprocess_env
from conftest import write_sst2, write_tiny_config

REPO = Path(__file__).resolve().parents[1]


def gpu_check() -> ModuleType:
    return load_benchmark("gpu_check")


def test_the_dry_run_runs_everything_but_the_cuda_parts(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"stages": [
        {"kind": "finetune", "role": "teacher"}, {"kind": "distill"}, {"kind": "evaluate"},
        {"kind": "benchmark", "batch_sizes": [1, 4], "num_examples": 8, "repeats": 1, "min_window_s": 0.1}]})
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--config",
                           str(config), "--out", str(tmp_path / "out")], env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[PASS] packages" in done.stdout and "[PASS] run: exit code 0" in done.stdout
    assert "[SKIP] distill: NVML counter vs power samples: dry run: no GPU" in done.stdout
    assert "batch 1: teacher" in done.stdout and "student/teacher" in done.stdout
    assert "precision fp32" in done.stdout and "gpu check passed (dry run" in done.stdout


def _record(gpu_kwh: float, codecarbon_kwh: float | None, duration_s: float = 10.0) -> dict:
    return {"stage": "distill", "kind": "distill", "status": "ok", "duration_s": duration_s, "gpu_energy_kwh": gpu_kwh,
            "gpu_energy_source": "measured:nvml-counter", "codecarbon": {"gpu_energy_kwh": codecarbon_kwh}}


def test_the_energy_checks_pass_within_their_limits_and_name_what_failed() -> None:
    module = gpu_check()
    samples = {"distill": [(t / 10, 0, 360.0) for t in range(0, 101)]}  # 360 W for 10 s = 3600 J = 1e-3 kWh
    good = module.energy_checks([_record(1.02e-3, 1.08e-3)], samples, dry_run=False)
    assert [c.ok for c in good] == [True, True]
    assert "2.0% apart" in good[0].detail
    bad = module.energy_checks([_record(1.10e-3, None)], samples, dry_run=False)
    assert [c.ok for c in bad] == [False, False]
    assert "9.1% apart (limit 5%)" in bad[0].detail and "codecarbon None" in bad[1].detail
    gap = module.energy_checks([_record(1.0e-3, 1.0e-3)], {"distill": [(0.0, 0, 360.0), (9.0, 0, 360.0)]}, dry_run=False)
    assert gap[0].ok is False and "gap" in gap[0].detail
