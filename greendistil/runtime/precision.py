"""The numeric precision a run computes in (`run.precision`): bf16 autocast on GPUs that support it, fp32
elsewhere, and TF32 matmuls for fp32 work on Ampere and newer.

FLOPs do not depend on it: the counter counts operations, whatever their width. Energy and time do, which is
why the record says which precision ran (`hardware.precision`, `hardware.float32_matmul`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ContextManager, Literal

import torch

PrecisionName = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Precision:
    """What the run's forward and backward passes compute in."""

    name: PrecisionName
    device_type: str  # "cuda" or "cpu"
    float32_matmul: Literal["tf32", "ieee"]  # how the fp32 matmuls that remain are computed

    def autocast(self) -> ContextManager[None]:
        """The context the model's forward (and the loss) runs in: bf16 autocast, or nothing for fp32."""
        if self.name == "bf16":
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, str]:
        return {"precision": self.name, "float32_matmul": self.float32_matmul}


FP32_CPU = Precision(name="fp32", device_type="cpu", float32_matmul="ieee")


def bf16_supported(device: torch.device, cuda: Callable[[], bool] | None = None) -> bool:
    """Whether `device` runs bf16 natively: a CUDA GPU of compute capability 8 (Ampere) or newer. torch's
    `is_bf16_supported()` also says yes where bf16 is only emulated (V100, T4), and asks the current device."""
    if device.type != "cuda":
        return False
    if cuda is not None:
        return bool(cuda())
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(setting: str, device: torch.device, *, bf16_ok: bool | None = None,
                      capability: tuple[int, int] | None = None) -> Precision:
    """`run.precision` on `device`: "auto" is bf16 where supported, else fp32; "bf16" where it is not
    supported raises ValueError (the preflight turns it into a config error). `bf16_ok` and `capability`
    (the GPU's compute capability) are asked of torch unless given (tests)."""
    ok = bf16_supported(device) if bf16_ok is None else bf16_ok
    if setting == "bf16" and not ok:
        raise ValueError(f"'bf16' needs a CUDA GPU with bf16 support; this run computes on {device.type}; use "
                         "'auto' (bf16 where supported, else fp32) or 'fp32'")
    name: PrecisionName = "bf16" if setting == "bf16" or (setting == "auto" and ok) else "fp32"
    if device.type != "cuda":
        return Precision(name=name, device_type=device.type, float32_matmul="ieee")
    major = (capability or torch.cuda.get_device_capability(device))[0]
    return Precision(name=name, device_type="cuda", float32_matmul="tf32" if major >= 8 else "ieee")


def apply_matmul_precision(precision: Precision) -> None:
    """TF32 for the fp32 matmuls on Ampere and newer (torch's process-wide setting: set once per run)."""
    if precision.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision.float32_matmul == "tf32"
        torch.backends.cudnn.allow_tf32 = precision.float32_matmul == "tf32"
