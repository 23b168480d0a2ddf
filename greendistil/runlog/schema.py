"""The record schema: the one table of every field a stage record holds.

A record is one JSON line of `records.jsonl`, written by `measure()` when a window closes. This table is the
only list of its fields: `measure.window.compose_record` fills exactly these keys (`new_record` refuses
any other), `runlog.frame.combine_segments` sums the fields marked `additive` over a resumed stage's
segments, the report finds every column it reads here, and the tests build records through `new_record`.

Units are in the names (`_s`, `_kwh`, `_kg`, `_w`, `_g_per_kwh`); every energy figure has a `*_source`
provenance (`measured:...`, `estimated:...`, `unavailable:<reason>`); an absent figure is null, never 0.
Bump `SCHEMA_VERSION` when a field changes meaning or is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 5  # 5: `seed` (run.seeds); 4: status stopped-budget, `budget`, `forecast`; 3: `task` is null for a suite's shared stage;
# 2: the field table (power samples in power.csv)


@dataclass(frozen=True)
class Field:
    """One record field: its unit ('' for none), whether it adds up across resumed segments, whether its
    value is a table (flattened to `<name>.<key>` columns by `load_runs`; an additive table adds entry by
    entry), and what it is."""

    name: str
    unit: str
    additive: bool
    table: bool
    doc: str


def _f(name: str, unit: str = "", doc: str = "", *, additive: bool = False, table: bool = False) -> Field:
    return Field(name=name, unit=unit, additive=additive, table=table, doc=doc)


FIELDS: tuple[Field, ...] = (
    # what the record is
    _f("schema_version", doc="version of this table the record follows"),
    _f("run_id", doc="the run directory's name"),
    _f("task", doc="the GLUE task the stage served; null for a suite's shared (corpus) stage, which served every "
                   "task of the run"),
    _f("seed", doc="the seed of run.seeds whose replicate the stage is; null in a single-seed run (its seed is "
                   "run.seed) and for a stage every seed shares (a shared teacher's training, run.share_teacher)"),
    _f("stage", doc="the window's name: the stage's, or <stage>.<role>.bs<batch size> for a benchmark window"),
    _f("kind", doc="pretrain | finetune | distill | evaluate | benchmark"),
    _f("role", doc="teacher | student | general_student, or several joined by + (evaluate)"),
    _f("status", doc="ok | failed | interrupted | stopped-budget (a budget stopped it: see `budget`)"),
    _f("segment", doc="1 for the first attempt at a stage, 2, 3, ... for each --resume"),
    _f("resumed_from_step", doc="the checkpoint step this segment continued, or null"),
    _f("num_checkpoints", "checkpoints", "training-state checkpoints written in this segment", additive=True),
    _f("error_type", doc="the exception's type when status is not ok"),
    _f("error_message", doc="the exception's message when status is not ok"),
    _f("started_at", "ISO 8601 UTC", "when the window opened"),
    _f("ended_at", "ISO 8601 UTC", "when the window closed"),
    _f("duration_s", "s", "wall time of the window", additive=True),
    # the work
    _f("model", doc="where the measured model came from"),
    _f("num_params", "parameters", "parameters of the measured model"),
    _f("num_examples", "examples", "examples processed (summed over DDP ranks)", additive=True),
    _f("num_tokens", "tokens", "real (unpadded) tokens processed", additive=True),
    _f("num_padded_tokens", "tokens", "tokens computed on, padding included", additive=True),
    _f("num_steps", "steps", "optimizer steps (training) or batches (evaluation, benchmark)", additive=True),
    _f("flops", "FLOP", "counted FLOPs, extrapolated from sampled steps by padded tokens", additive=True),
    _f("flops_source", doc="provenance of flops"),
    _f("flops_by_component", "FLOP", "flops by component, e.g. teacher_forward, student_train", additive=True,
       table=True),
    _f("flops_analytic", "FLOP", "6N per training token + 2N per forward token (Kaplan et al.)", additive=True),
    _f("flops_analytic_source", doc="provenance of flops_analytic"),
    # the energy
    _f("energy_kwh", "kWh", "cpu + gpu + ram energy of the window (the components that were available)",
       additive=True),
    _f("energy_components", doc="which components energy_kwh adds, e.g. cpu+ram"),
    _f("cpu_energy_kwh", "kWh", "CPU energy (codecarbon)", additive=True),
    _f("cpu_energy_source", doc="provenance of cpu_energy_kwh"),
    _f("gpu_energy_kwh", "kWh", "GPU energy (NVML counter or integrated power samples)", additive=True),
    _f("gpu_energy_source", doc="provenance of gpu_energy_kwh"),
    _f("ram_energy_kwh", "kWh", "RAM energy (codecarbon's model)", additive=True),
    _f("ram_energy_source", doc="provenance of ram_energy_kwh"),
    _f("facility_energy_kwh", "kWh", "energy_kwh x pue", additive=True),
    _f("co2_kg", "kg CO2eq", "energy_kwh x pue x intensity_g_per_kwh / 1000", additive=True),
    _f("intensity_g_per_kwh", "g CO2eq/kWh", "the grid's carbon intensity"),
    _f("intensity_source", doc="provenance of intensity_g_per_kwh"),
    _f("pue", "ratio", "data-centre power usage effectiveness applied to the energy"),
    _f("country_iso_code", doc="ISO 3166-1 alpha-3 code of the grid"),
    _f("tracking_mode", doc="codecarbon's CPU/RAM attribution: machine (the whole machine) or process (this "
                            "process's share); null when codecarbon did not measure"),
    _f("cpu_power_w", "W", "codecarbon's last CPU power figure"),
    _f("ram_power_w", "W", "codecarbon's RAM power figure"),
    _f("gpu_power_mean_w", "W", "mean of the NVML power samples, summed over devices"),
    _f("gpu_flags", doc="what the GPU meter noticed (e.g. a window shorter than the counter's update)"),
    _f("gpu_devices", doc="the GPUs measured: index, name, uuid, energy and its source"),
    _f("energy_incomplete", doc="components that should have been measured and were not (or only in part)"),
    # distributed breakdown (one process: world_size 1)
    _f("world_size", "processes", "DDP processes that ran the window"),
    _f("num_nodes", "nodes", "machines that ran the window"),
    _f("ddp_backend", doc="gloo | nccl, or null for one process"),
    _f("energy_meters", doc="which meter supplied each component, in words", table=True),
    _f("energy_by_node", doc="per node: CPU, RAM, GPU and total kWh with their sources"),
    _f("energy_by_gpu", doc="per GPU: rank, NVML index, name and kWh"),
    _f("by_rank", doc="per rank: examples, tokens, steps, FLOPs, duration"),
    _f("ranks_missing", doc="ranks whose readings did not reach rank 0"),
    _f("codecarbon", "kWh, kg CO2eq", "codecarbon's own figures, kept as a cross-check", additive=True,
       table=True),
    _f("measurement_errors", doc="meter -> what went wrong (the meter's figures are null)", table=True),
    # results and context
    _f("metrics", doc="dev metrics, benchmark latencies and rates, MLM figures", table=True),
    _f("details", doc="stage-specific: losses, layers, hyperparameters, checkpoints", table=True),
    _f("artifacts", doc="role -> model folder the stage wrote, relative to the run directory", table=True),
    _f("budget", doc="the budgets in force (limit.<config key>), what was spent before the window, which one "
                     "stopped it (stopped_by, spent_at_stop) and the provenance of the energy checked", table=True),
    _f("forecast", "s, kWh, kg CO2eq", "the segment's duration, energy and CO2 as forecast while it ran, at "
       "fractions of the stage's steps (at_<fraction>.<figure>; method: its provenance), with the whole run's "
       "(at_<fraction>.run_<figure>; run_total_method), and the plan's forecast of the window (plan.<figure>)",
       table=True),
    _f("hardware", doc="platform, CPU (count, model, family/model, torch's kernel ISA), device, threads, GPU names",
       table=True),
    _f("config_hash", doc="hash of the resolved config (not the run's name or folder, nor its budgets)"),
    _f("git_sha", doc="greendistil's own commit, '-dirty' when modified"),
    _f("versions", doc="python and package versions", table=True),
    _f("data_sources", doc="split -> the TSV file or hub dataset it was read from", table=True),
    _f("command", doc="the exact command line, for reproduction"),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
# Flattened column names of additive fields (a table additive field adds each of its entries).
ADDITIVE_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.additive and not f.table)
ADDITIVE_PREFIXES: tuple[str, ...] = tuple(f"{f.name}." for f in FIELDS if f.additive and f.table)
# The fields that are one column each in `load_runs` (tables become `<name>.<key>` columns; `metrics` become
# `metric.<name>`).
SCALAR_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if not f.table)


def is_additive(column: str) -> bool:
    """Whether a (flattened) column adds up over a stage's segments: energy, CO2, FLOPs, time and counts do;
    everything else is taken from the last segment."""
    return column in ADDITIVE_FIELDS or column.startswith(ADDITIVE_PREFIXES)


def new_record(values: dict[str, Any]) -> dict[str, Any]:
    """A record with every field of the table, in table order: `values` where given, null elsewhere.

    Raises KeyError naming a key that is not in the table (a field must be added here first).
    """
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise KeyError(f"not record fields: {', '.join(unknown)}; add them to runlog.schema.FIELDS first")
    return {name: values.get(name) for name in FIELD_NAMES}


def describe() -> str:
    """The table as markdown (field, unit, adds over segments, meaning), for people reading run logs."""
    rows = ["| field | unit | adds over segments | meaning |", "|---|---|---|---|"]
    rows += [f"| `{f.name}` | {f.unit or ''} | {'yes' if f.additive else ''} | {f.doc} |" for f in FIELDS]
    return "\n".join(rows)
