"""`run.precision`: bf16 autocast where a GPU supports it, fp32 elsewhere, TF32 for fp32 matmuls on Ampere
and newer; refused by name where bf16 cannot run; the record says which precision ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from builders import read_records_strict
from conftest import write_sst2, write_tiny_config
from greendistil.cli import main
from greendistil.runtime.precision import resolve_precision

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("setting, device, bf16_ok, capability, expected", [
    ("auto", torch.device("cpu"), False, None, ("fp32", "ieee")),
    ("fp32", torch.device("cpu"), False, None, ("fp32", "ieee")),
    ("auto", CUDA, True, (9, 0), ("bf16", "tf32")),  # H100/H200
    ("auto", CUDA, False, (7, 0), ("fp32", "ieee")),  # V100: no bf16, no TF32
    ("fp32", CUDA, True, (8, 0), ("fp32", "tf32")),  # A100 in fp32: its matmuls in TF32
    ("bf16", CUDA, True, (8, 6), ("bf16", "tf32")),
])
def test_precision_is_resolved_for_the_device(setting: str, device: torch.device, bf16_ok: bool,
                                              capability: tuple[int, int] | None, expected: tuple[str, str]) -> None:
    precision = resolve_precision(setting, device, bf16_ok=bf16_ok, capability=capability)
    assert (precision.name, precision.float32_matmul) == expected


def test_bf16_autocast_computes_a_linear_layer_in_bf16_and_fp32_leaves_it() -> None:
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    bf16 = resolve_precision("bf16", torch.device("cpu"), bf16_ok=True)  # CPU autocast, to test the context alone
    with bf16.autocast():
        assert layer(x).dtype == torch.bfloat16
    with resolve_precision("fp32", torch.device("cpu")).autocast():
        assert layer(x).dtype == torch.float32


def test_bf16_where_it_cannot_run_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"))  # pins run.device = "cpu"
    assert main(["run", str(config), "--set", "run.precision=bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run.precision: 'bf16' needs a CUDA GPU with bf16 support; this run computes on cpu" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
    assert main(["run", str(config), "--set", "run.precision=bf17"]) == 2
    assert "valid: 'auto', 'fp32', 'bf16'" in capsys.readouterr().err


def test_the_record_says_which_precision_ran(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"run": {"report": False}})
    assert main(["run", str(config), "--no-progress", "--run-id", "p"]) == 0
    for record in read_records_strict(tmp_path / "runs" / "p"):
        assert (record["hardware"]["precision"], record["hardware"]["float32_matmul"]) == ("fp32", "ieee")


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs a bf16 GPU")
def test_auto_trains_in_bf16_on_a_gpu_that_has_it(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, write_sst2(tmp_path / "glue"), {"run": {"device": "cuda", "report": False}})
    assert main(["run", str(config), "--no-progress", "--run-id", "g"]) == 0
    records = read_records_strict(tmp_path / "runs" / "g")
    assert {r["hardware"]["precision"] for r in records} == {"bf16"}
    assert all(r["status"] == "ok" and r["flops"] > 0 for r in records)
