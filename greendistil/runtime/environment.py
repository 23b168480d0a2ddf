"""What a record says about where it ran: greendistil's commit, the library versions, the hardware."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("greendistil", "torch", "transformers", "tokenizers", "datasets", "codecarbon", "nvidia-ml-py",
            "numpy", "pandas", "scikit-learn", "scipy")


def git_sha() -> str | None:
    """The commit of greendistil's own code (None when installed from a wheel); '-dirty' if modified."""
    package_dir = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True,
                             cwd=package_dir)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5, cwd=package_dir).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Python's and each of `PACKAGES`' installed version."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def hardware(device: torch.device) -> dict[str, Any]:
    """The platform, CPU count and identity, torch threads and the device (GPU names on CUDA).

    `cpu_capability` is the instruction set torch's CPU kernels dispatch to (AVX512, AVX2, ...) and
    `cpu_family_model` the CPU's family/model from /proc/cpuinfo: a virtual machine may name its CPU only
    "AMD EPYC", and two such CPUs of other generations round fp32 sums differently and run at other speeds."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_family_model": _cpu_family_model(),
        "torch_threads": torch.get_num_threads(), "device": str(device), "gpu_count": 0,
    }
    if device.type == "cuda":
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_family_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """'<vendor> family <f> model <m>' of the first CPU listed, e.g. 'AuthenticAMD family 25 model 17'; None
    where /proc/cpuinfo is missing (not Linux) or lacks the fields."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    vendor, family, model = fields.get("vendor_id"), fields.get("cpu family"), fields.get("model")
    return f"{vendor} family {family} model {model}" if vendor and family and model else None
