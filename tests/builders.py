"""Shared builders: runs and records with known numbers, and readers for the report's markdown.

Every record is built through `greendistil.runlog.schema.new_record`, so it has exactly the schema's fields
in table order, and a builder that names a field the schema lacks fails at once (KeyError) instead of
writing a record the package would never write. Test modules import these (and `fakes`), never each other.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file

import greendistil
from greendistil.measure.window import RunInfo
from greendistil.runlog.schema import FIELD_NAMES, SCHEMA_VERSION, new_record
from greendistil.runlog.store import append_record
from greendistil.testing import faults

from conftest import OFFLINE_ENV

PUE, INTENSITY = 1.5, 400.0  # every built run's: CO2 = kWh x PUE x INTENSITY / 1000


# ---- the run a window belongs to ---------------------------------------------------------------------


def make_run(run_dir: Path) -> RunInfo:
    """A run's shared facts for `measure()` and `compose_record()`: PUE 1.5, 400 g/kWh, a CPU machine."""
    return RunInfo(run_id="r1", run_dir=run_dir, config_hash="abc", git_sha=None, versions={"python": "3"},
                   hardware={"cpu_count": 2}, country_iso_code="USA", pue=PUE, intensity_g_per_kwh=INTENSITY,
                   intensity_source="configured:test")


# ---- records ----------------------------------------------------------------------------------------


def record(**values: Any) -> dict[str, Any]:
    """A record of the current schema: `values` where given, null elsewhere (KeyError on a non-field)."""
    return new_record({"schema_version": SCHEMA_VERSION, **values})


def stage_record(run_id: str, stage: str, kind: str, role: str, *, cpu: float | None, gpu: float | None,
                 ram: float | None, flops: float | None, num_examples: int, **extra: Any) -> dict[str, Any]:
    """A finished stage's record with known numbers: energy = the known parts of cpu + gpu + ram (null when
    none is known), CO2 = kWh x PUE x intensity; task sst2. `extra` sets (or overrides) any other field."""
    known = [v for v in (cpu, gpu, ram) if v is not None]
    energy = sum(known) if known else None
    components = "+".join(name for name, v in (("cpu", cpu), ("gpu", gpu), ("ram", ram)) if v is not None)
    values: dict[str, Any] = {
        "run_id": run_id, "task": "sst2", "stage": stage, "kind": kind, "role": role, "status": "ok", "segment": 1,
        "error_type": None, "error_message": None, "started_at": "2026-11-25T05:00:00.000+00:00",
        "ended_at": "2026-11-25T05:01:40.000+00:00", "duration_s": 100.0, "model": f"{role}-model",
        "num_params": None, "num_examples": num_examples, "num_steps": 10, "flops": flops,
        "flops_source": "counted:torch-flop-counter(3/10 steps sampled, extrapolated by padded tokens)"
        if flops is not None else "unavailable:not-counted", "flops_by_component": {},
        "energy_kwh": energy, "energy_components": components,
        "cpu_energy_kwh": cpu, "cpu_energy_source": "estimated:tdp-load-model",
        "gpu_energy_kwh": gpu, "gpu_energy_source": "measured:nvml-counter" if gpu is not None
        else "unavailable:no-nvml-library", "ram_energy_kwh": ram, "ram_energy_source": "estimated:ram-model",
        "facility_energy_kwh": energy * PUE if energy is not None else None,
        "co2_kg": energy * PUE * INTENSITY / 1000 if energy is not None else None,
        "intensity_g_per_kwh": INTENSITY, "intensity_source": "configured:carbon.intensity_g_per_kwh",
        "pue": PUE, "country_iso_code": "USA", "cpu_power_w": 10.0, "ram_power_w": 5.0, "gpu_power_mean_w": None,
        "metrics": {}, "details": {}, "hardware": {"cpu_model": "Test CPU", "cpu_count": 4, "device": "cpu"},
        "config_hash": "cafe1234", "git_sha": "abc1234", "versions": {"python": "3.11", "torch": "2.13.0"},
        "command": f"greendistil run configs/{run_id}.toml",
    }
    return record(**{**values, **extra})


def without(rec: dict[str, Any], *fields: str) -> dict[str, Any]:
    """`rec` as a writer from before `fields` existed left it: those keys absent, not null. Each must be a
    schema field (so a renamed field cannot leave this quietly dropping nothing)."""
    unknown = sorted(set(fields) - set(FIELD_NAMES))
    assert not unknown, f"not record fields: {unknown}"
    return {name: value for name, value in rec.items() if name not in fields}


# ---- run directories --------------------------------------------------------------------------------


def write_run(root: Path, run_id: str, task: str, records: list[dict[str, Any]]) -> Path:
    """`<root>/<run_id>` with a config.toml naming the run and task, and `records` in its run log."""
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(f'[run]\nname = "{run_id}"\n\n[task]\nname = "{task}"\n', encoding="utf-8")
    for rec in records:
        append_record(run_dir, rec)
    return run_dir


def full_run(root: Path, run_id: str, task: str = "sst2", *, scale: float = 1.0, teacher_score: float = 0.9,
             student_score: float = 0.87) -> Path:
    """Teacher 100M params, student 50M; finetune 1.0 kWh, distill 0.6 kWh, evaluate 0.1 kWh (× scale)."""
    finetune = stage_record(run_id, "finetune", "finetune", "teacher", cpu=0.3 * scale, gpu=0.5 * scale,
                            ram=0.2 * scale, flops=6e14 * scale, num_examples=1000, num_params=100_000_000, task=task,
                            flops_by_component={"teacher_train": 6e14 * scale})
    distill = stage_record(run_id, "distill", "distill", "student", cpu=0.2 * scale, gpu=0.3 * scale,
                           ram=0.1 * scale, flops=4.5e14 * scale, num_examples=1000, num_params=50_000_000, task=task,
                           flops_by_component={"teacher_forward": 2e14 * scale, "student_train": 2.5e14 * scale},
                           details={"teacher_num_params": 100_000_000, "student_num_params": 50_000_000},
                           started_at="2026-11-25T05:01:40.000+00:00")
    metrics = {"teacher.accuracy": teacher_score, "teacher.score": teacher_score,
               "student.accuracy": student_score, "student.score": student_score,
               "retention.accuracy": student_score / teacher_score, "retention.score": student_score / teacher_score}
    evaluate = stage_record(run_id, "evaluate", "evaluate", "teacher+student", cpu=0.05 * scale, gpu=None,
                            ram=0.05 * scale, flops=3e12, num_examples=200, metrics=metrics, task=task,
                            flops_by_component={"teacher_forward": 2e12, "student_forward": 1e12},
                            details={"teacher": {"num_params": 100_000_000}, "student": {"num_params": 50_000_000}},
                            started_at="2026-11-25T05:03:20.000+00:00", duration_s=10.0)
    return write_run(root, run_id, task, [finetune, distill, evaluate])


def suite_run(root: Path, run_id: str, scores: dict[str, dict[str, dict[str, float]]], *,
              shared_kwh: float | None = None) -> Path:
    """A suite run: per task (in `scores`' order) a teacher finetune (1.0 kWh), a distill (0.6 kWh), a
    general-student finetune (0.2 kWh) when that role has scores, and an evaluate (0.1 kWh) holding
    `scores[task][role]` (metric -> value, `score` included); `shared_kwh`: pretrain + general distillation
    records with no task, before the tasks. Every kWh is half CPU, half RAM."""
    def stage(name: str, kind: str, role: str, kwh: float, task: str | None, **extra: Any) -> dict[str, Any]:
        return stage_record(run_id, name, kind, role, cpu=kwh / 2, gpu=None, ram=kwh / 2, flops=kwh * 1e15,
                            num_examples=100, task=task, **extra)

    records = []
    if shared_kwh is not None:
        records += [stage("pretrain", "pretrain", "teacher", shared_kwh / 2, None, details={"train": "head"}),
                    stage("distill-general", "distill", "general_student", shared_kwh / 2, None,
                          details={"objective": "mlm"})]
    for task, by_role in scores.items():
        records += [stage("finetune", "finetune", "teacher", 1.0, task),
                    stage("distill", "distill", "student", 0.6, task, details={"objective": "task"},
                          flops_by_component={"teacher_forward": 2e14, "student_train": 4e14})]
        if "general_student" in by_role:
            records.append(stage("finetune-general", "finetune", "general_student", 0.2, task))
        metrics = {f"{role}.{key}": v for role, values in by_role.items() for key, v in values.items()}
        for role in (r for r in by_role if r != "teacher"):
            prefix = "retention." if role == "student" else f"retention.{role}."
            metrics[f"{prefix}score"] = by_role[role]["score"] / by_role["teacher"]["score"]
        records.append(stage("evaluate", "evaluate", "+".join(by_role), 0.1, task, metrics=metrics,
                             flops_by_component={f"{role}_forward": 1e12 if role == "teacher" else 5e11
                                                 for role in by_role}))
    return write_run(root, run_id, next(iter(scores)), records)


# ---- reading the report -----------------------------------------------------------------------------


def section_of(markdown: str, heading: str) -> str:
    """The text from `heading` to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(heading)
    body = start + len(heading)
    following = re.search(rf"^#{{1,{len(level)}}} ", markdown[body:], re.M)
    return markdown[start:body + following.start()] if following else markdown[start:]


_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def markdown_tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every table in `markdown`, in order: its rows as dicts keyed by the header's text (a blank header is
    ""). A row whose cell count differs from its header's fails the test: a cell could not be found by name."""
    lines = markdown.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()):
            header = _cells(lines[i])
            assert len(set(header)) == len(header), f"repeated header in {lines[i]!r}"
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == len(header), f"{len(cells)} cells under {len(header)} headers: {lines[i]!r}"
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of every table in `markdown`, in order, keyed by their table's headers."""
    return [row for table in markdown_tables(markdown) for row in table]


def table_row(markdown: str, first_cell: str) -> dict[str, str]:
    """The first table row whose first cell starts with `first_cell`, keyed by its table's headers."""
    for row in table_rows(markdown):
        if next(iter(row.values())).startswith(first_cell):
            return row
    raise AssertionError(f"no row starting with {first_cell!r} in:\n{markdown}")


def merged_row(markdown: str, first_cell: str) -> dict[str, str]:
    """The cells of every table row whose first cell starts with `first_cell`, merged: one stage's row of the
    cost section's work table and of its energy table, as one dict."""
    merged: dict[str, str] = {}
    for row in table_rows(markdown):
        if next(iter(row.values())).startswith(first_cell):
            merged.update(row)
    if not merged:
        raise AssertionError(f"no row starting with {first_cell!r} in:\n{markdown}")
    return merged


def pick(row: dict[str, str], *headers: str) -> list[str]:
    """The cells of `row` under `headers`, in that order (KeyError naming a header the table lacks)."""
    return [row[header] for header in headers]


# ---- real runs in subprocesses ------------------------------------------------------------------------

def subprocess_env(signal_at: str | None = None) -> dict[str, str]:
    """The environment of a `python -m greendistil` subprocess: offline, this checkout's code first, and
    (`signal_at`) a fault point where the run signals itself."""
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(greendistil.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    env.pop(faults.ENV_VAR, None)
    if signal_at:
        env[faults.ENV_VAR] = signal_at
    return env


def read_records_strict(run_dir: Path) -> list[dict[str, Any]]:
    """Every line must parse: a kill must never leave a torn record behind."""
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()]


def student_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "distill" / "model.safetensors")


def load_benchmark(name: str) -> ModuleType:
    """`benchmarks/<name>.py` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
