"""Distributed runs: each stage's energy per node and per GPU, and the work each rank did.

A distributed stage's record holds its figures twice: the stage's totals (`energy_kwh`, `num_examples`,
`flops`, as in the cost table) and their parts: `energy_by_node` (each node's CPU and RAM, metered once per
node by one rank, plus the GPUs on it), `energy_by_gpu` (each GPU, read through NVML by the rank that drove
it) and `by_rank` (each rank's share of the work). This section shows the parts and checks that they add up
to the totals. It appears only for stages with more than one process, or with a GPU (a single-GPU run gets
its per-GPU table too); records written before these fields existed, and single-process CPU runs, have no
parts worth showing, so their report is unchanged.

A resumed stage's totals are summed over its segments (`runlog.combine_segments`) while its lists are the last
segment's alone (a list of per-node readings is not summed): such a stage is shown but not checked, and a
footnote says why.
"""

from __future__ import annotations

from typing import Any, Iterator

import pandas as pd

from greendistil.report.frame import iter_runs, number, value
from greendistil.report.markdown import NOT_AVAILABLE, code, fmt_count, fmt_number, table
from greendistil.report.provenance import footnote_label, footnotes, kinds_suffix, mark, source_kind
from greendistil.report.tables import cost_footnote_sources

# Parts and total are computed in floating point from the same readings: anything beyond rounding is a bug.
RELATIVE_TOLERANCE = 1e-6
RESUMED_LABEL = "distributed-resumed"
_GPU_METHODS = {"measured:nvml-counter": "NVML energy counter", "measured:nvml-power-samples": "NVML power samples"}

_NODE_HEADERS = ("run", "stage", "node", "measured by", "CPU kWh", "RAM kWh", "GPU kWh", "node kWh",
                 "stage kWh (record)", "check")
_GPU_HEADERS = ("run", "stage", "rank", "node", "NVML index", "GPU", "GPU kWh", "source", "error")
_RANK_HEADERS = ("run", "stage", "rank", "node", "examples", "tokens", "steps", "FLOPs", "duration (s)", "check")


def shows_parts(row: pd.Series) -> bool:
    """True for a stage run by several processes, or on a GPU: the stages this section shows."""
    world_size = number(row, "world_size")
    return (world_size is not None and world_size > 1) or bool(_entries(row, "energy_by_gpu"))


def distributed_section(frame: pd.DataFrame) -> str:
    """'## Energy per node and per GPU' for the stages `shows_parts` picks; "" when there is none.

    Meant to follow the cost section: it refers to the footnotes that section defines and adds only the
    ones it lacks.
    """
    rows = [row for records in iter_runs(frame) for _, row in records.iterrows() if shows_parts(row)]
    if not rows:
        return ""
    parts = ["## Energy per node and per GPU",
             "Distributed and GPU stages broken down. Each node's CPU and RAM are metered once, by one of its "
             "ranks (so nothing is counted twice); each GPU is read through NVML by the rank that drove it. A "
             "node's kWh is its CPU + RAM + GPUs, and the nodes add up to the stage's kWh in the cost table. "
             "Each rank trains on its own shard, so examples are counted once and FLOPs add up over ranks. "
             "Each energy figure is marked measured (meas.) or estimated (est.); n/a is never counted as 0.",
             "### Per node", table(_NODE_HEADERS, [r for row in rows for r in _node_rows(row)], right_align_from=4),
             "### Per GPU", _gpu_block(rows),
             "### Work per rank", table(_RANK_HEADERS, [r for row in rows for r in _rank_rows(row)],
                                        right_align_from=4),
             "### Meters", _meters_block(rows), _footnotes_block(frame, rows)]
    return "\n\n".join(p for p in parts if p)


# --- per node --------------------------------------------------------------------------------------------

def _node_rows(row: pd.Series) -> list[list[str]]:
    """One row per node, then the stage's row: the nodes' sums beside the record's total, checked."""
    nodes = sorted(_entries(row, "energy_by_node"), key=lambda n: _order(n.get("node_rank")))
    gpus = _entries(row, "energy_by_gpu")
    run, stage = _run_stage(row)
    if not nodes:
        return [[run, stage, "no per-node figures recorded", "", "", "", "", "", _stage_kwh(row), ""]]
    rows = []
    for node in nodes:
        gpu_sources = [g.get("gpu_energy_source") for g in gpus if g.get("node_rank") == node.get("node_rank")]
        rows.append([run, stage, _node_label(node), f"rank {_text(node.get('measured_by_rank'))}",
                     _figure_cell(node.get("cpu_energy_kwh"), node.get("cpu_energy_source")),
                     _figure_cell(node.get("ram_energy_kwh"), node.get("ram_energy_source")),
                     _node_gpu_cell(node, gpu_sources, row),
                     _sum_cell(_float(node.get("energy_kwh")), list(_node_sources(node, gpu_sources, row))), "", ""])
    rows.append(_nodes_total_row(row, nodes, gpus))
    return rows


def _nodes_total_row(row: pd.Series, nodes: list[dict[str, Any]], gpus: list[dict[str, Any]]) -> list[str]:
    gpu_sources = [g.get("gpu_energy_source") for g in gpus]
    sources = {"cpu": [n.get("cpu_energy_source") for n in nodes], "ram": [n.get("ram_energy_source") for n in nodes],
               "gpu": gpu_sources or [value(row, "gpu_energy_source")]}
    # A node without GPUs has no GPU figure to miss: only GPU nodes count towards "n/a in k node(s)".
    gpu_nodes = [n for n in nodes if n.get("num_gpus") or _float(n.get("gpu_energy_kwh")) is not None]

    def summed(entries: list[dict[str, Any]], component: str) -> str:
        total, num_missing = _total(entries, f"{component}_energy_kwh")
        return _sum_cell(total, sources[component], num_missing, what="node(s)")

    cells = [summed(nodes, "cpu"), summed(nodes, "ram"), summed(gpu_nodes, "gpu") if gpu_nodes else "— (no GPU)"]
    nodes_kwh, num_missing = _total(nodes, "energy_kwh")
    all_sources = [s for c in ("cpu", "ram", "gpu") for s in sources[c]]
    check = _check(row, [("kWh", nodes_kwh, number(row, "energy_kwh"))])
    return [*_run_stage(row), f"**all {len(nodes)} node(s)**", "", *cells,
            _sum_cell(nodes_kwh, all_sources, num_missing, what="node(s)"), _stage_kwh(row), check]


def _node_gpu_cell(node: dict[str, Any], gpu_sources: list[Any], row: pd.Series) -> str:
    if _float(node.get("gpu_energy_kwh")) is None and not node.get("num_gpus"):
        return "— (no GPU)"
    return _sum_cell(_float(node.get("gpu_energy_kwh")), gpu_sources or [value(row, "gpu_energy_source")])


def _node_sources(node: dict[str, Any], gpu_sources: list[Any], row: pd.Series) -> Iterator[Any]:
    """The sources of the components a node's kWh is made of (the ones it has a figure for)."""
    for component in ("cpu", "ram"):
        if _float(node.get(f"{component}_energy_kwh")) is not None:
            yield node.get(f"{component}_energy_source")
    if _float(node.get("gpu_energy_kwh")) is not None:
        yield from gpu_sources or [value(row, "gpu_energy_source")]


def _stage_kwh(row: pd.Series) -> str:
    sources = [value(row, f"{c}_energy_source") for c in ("cpu", "ram", "gpu")
               if number(row, f"{c}_energy_kwh") is not None]
    return _sum_cell(number(row, "energy_kwh"), sources)


# --- per GPU ---------------------------------------------------------------------------------------------

def _gpu_block(rows: list[pd.Series]) -> str:
    """The per-GPU table, and a line naming the stages that ran without a GPU."""
    body, cpu_only = [], []
    for row in rows:
        gpus = sorted(_entries(row, "energy_by_gpu"), key=lambda g: _order(g.get("rank")))
        body += [_gpu_row(row, gpu) for gpu in gpus]
        if not gpus:
            cpu_only.append(" ".join(_run_stage(row)))
    parts = [table(_GPU_HEADERS, body, right_align_from=4)] if body else []
    if cpu_only:
        parts.append(f"No GPU in {', '.join(cpu_only)}: CPU and RAM only, no per-GPU figures.")
    return "\n\n".join(parts)


def _gpu_row(row: pd.Series, gpu: dict[str, Any]) -> list[str]:
    source = gpu.get("gpu_energy_source")
    method = _GPU_METHODS.get(str(source).split("(", 1)[0], code(source))
    return [*_run_stage(row), f"{_text(gpu.get('rank'))} (local {_text(gpu.get('local_rank'))})", _node_label(gpu),
            _text(gpu.get("nvml_index")), _text(gpu.get("name")), _figure_cell(gpu.get("gpu_energy_kwh"), source),
            method, f"⚠ {gpu['error']}" if gpu.get("error") else "—"]


# --- per rank --------------------------------------------------------------------------------------------

def _rank_rows(row: pd.Series) -> list[list[str]]:
    """One row per rank, then the ranks' sums beside the record's examples and FLOPs, checked."""
    ranks = sorted(_entries(row, "by_rank"), key=lambda r: _order(r.get("rank")))
    run, stage = _run_stage(row)
    if not ranks:
        return [[run, stage, "no per-rank figures recorded", "", "", "", "", "", "", ""]]
    # by_rank names a rank's node by number only: its host name is in energy_by_node.
    hosts = {n.get("node_rank"): n.get("hostname") for n in _entries(row, "energy_by_node")}
    rows = [[run, stage, f"{_text(r.get('rank'))} (local {_text(r.get('local_rank'))})",
             _node_label({"hostname": hosts.get(r.get("node_rank")), **r}),
             fmt_count(_float(r.get("num_examples"))), fmt_count(_float(r.get("num_tokens"))),
             fmt_count(_float(r.get("num_steps"))), _figure_cell(r.get("flops"), r.get("flops_source")),
             fmt_number(_float(r.get("duration_s"))), ""] for r in ranks]
    examples, flops = _total(ranks, "num_examples")[0], _total(ranks, "flops")[0]
    check = _check(row, [("examples", examples, number(row, "num_examples")), ("FLOPs", flops, number(row, "flops"))])
    flops_cell = _sum_cell(flops, [r.get("flops_source") for r in ranks])
    rows.append([run, stage, f"**all {len(ranks)} rank(s)**", "", fmt_count(examples),
                 fmt_count(_total(ranks, "num_tokens")[0]), "", flops_cell, "", check])
    return rows


# --- meters, warnings, footnotes -------------------------------------------------------------------------

def _meters_block(rows: list[pd.Series]) -> str:
    """Which meter supplied each component, per run and set of stages that share them; missing ranks."""
    groups: dict[tuple[str, str], list[str]] = {}
    warnings = []
    for row in rows:
        run, stage = _run_stage(row)
        groups.setdefault((run, _setup(row)), []).append(stage)
        missing = value(row, "ranks_missing")
        if isinstance(missing, list) and missing:
            warnings.append(f"- ⚠ {run} {stage}: the readings of rank(s) {', '.join(map(str, missing))} could not "
                            "be gathered: the node, GPU and stage figures above lack them.")
    lines = [f"- {run} {', '.join(stages)}: {setup}" for (run, setup), stages in groups.items()]
    return "\n".join(lines + warnings)


def _setup(row: pd.Series) -> str:
    """'4 process(es) on 2 node(s), backend `nccl`. CPU: ...; RAM: ...; GPU: ...'."""
    meters = [f"{name}: {value(row, f'energy_meters.{key}') or 'not recorded'}"
              for key, name in (("cpu", "CPU"), ("ram", "RAM"), ("gpu", "GPU"))]
    backend = value(row, "ddp_backend")
    return (f"{fmt_count(number(row, 'world_size'))} process(es) on {fmt_count(number(row, 'num_nodes'))} node(s)"
            f"{f', backend {code(backend)}' if backend else ', no process group'}. {'; '.join(meters)}.")


def _footnotes_block(frame: pd.DataFrame, rows: list[pd.Series]) -> str:
    """The footnotes this section refers to that the cost section has not defined already."""
    defined = {footnote_label(s) for s in cost_footnote_sources(frame)}
    used = [s for row in rows for s in _section_sources(row)]
    notes = [footnotes([s for s in used if footnote_label(s) not in defined])] if used else []
    if any((number(row, "num_segments") or 1) > 1 for row in rows):
        notes.append(f"[^{RESUMED_LABEL}]: a resumed stage's totals are summed over its segments, but its per-node, "
                     "per-GPU and per-rank figures are its last segment's alone: they are shown, not checked against "
                     "the totals.")
    return "\n".join(n for n in notes if n)


def _section_sources(row: pd.Series) -> Iterator[Any]:
    for node in _entries(row, "energy_by_node"):
        yield from (node.get("cpu_energy_source"), node.get("ram_energy_source"))
    yield from (g.get("gpu_energy_source") for g in _entries(row, "energy_by_gpu"))
    yield from (r.get("flops_source") for r in _entries(row, "by_rank"))


# --- cells and small readers -----------------------------------------------------------------------------

def _check(row: pd.Series, pairs: list[tuple[str, float | None, float | None]]) -> str:
    """'✓ adds up', or '⚠ kWh does not add up (...)' for each (name, sum of parts, record's total) that differs."""
    segments = number(row, "num_segments")
    if segments is not None and segments > 1:
        return f"not checked: resumed, last of {int(segments)} segments[^{RESUMED_LABEL}]"
    problems, num_checked = [], 0
    for name, parts, whole in pairs:
        if parts is None or whole is None:
            if parts is not None or whole is not None:
                problems.append(f"{name}: {'parts' if parts is None else 'record'} n/a, cannot check")
            continue
        num_checked += 1
        if abs(parts - whole) > RELATIVE_TOLERANCE * max(abs(parts), abs(whole)):
            problems.append(f"{name} does not add up ({fmt_number(parts, 6)} vs record {fmt_number(whole, 6)})")
    if problems:
        return "⚠ " + "; ".join(problems)
    return "✓ adds up" if num_checked else NOT_AVAILABLE


def _figure_cell(figure: Any, source: str | None) -> str:
    """One reading (kWh, FLOPs) with its provenance: '0.25 (meas.)[^measured-nvml-counter]'; n/a when absent."""
    figure = _float(figure)
    if figure is None:
        # 'n/a[^unavailable-no-nvml-library]': the footnote says why it is missing.
        return mark("", source) if source_kind(source) == "unavailable" else NOT_AVAILABLE
    return mark(fmt_number(figure), source)


def _sum_cell(total: float | None, sources: list[Any], num_missing: int = 0, *, what: str = "part(s)") -> str:
    """A sum with the kinds of its parts: '1.2 (meas.+est.)', plus how many parts lacked a figure."""
    if total is None:
        return NOT_AVAILABLE
    return fmt_number(total) + kinds_suffix(sources) + (f", n/a in {num_missing} {what}" if num_missing else "")


def _total(entries: list[dict[str, Any]], key: str) -> tuple[float | None, int]:
    """(sum of the known figures or None, how many entries lacked one): missing is never 0."""
    known = [f for f in (_float(e.get(key)) for e in entries) if f is not None]
    return (sum(known) if known else None), len(entries) - len(known)


def _entries(row: pd.Series, column: str) -> list[dict[str, Any]]:
    """A list-of-dicts field of the record; [] for an old record without it."""
    found = value(row, column)
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _run_stage(row: pd.Series) -> tuple[str, str]:
    return str(value(row, "run_id")), str(value(row, "stage"))


def _node_label(entry: dict[str, Any]) -> str:
    host = entry.get("hostname")
    return _text(entry.get("node_rank")) + (f" ({code(host)})" if host else "")


def _float(found: Any) -> float | None:
    if isinstance(found, bool) or not isinstance(found, (int, float)):
        return None
    return None if found != found else float(found)  # NaN != NaN


def _order(found: Any) -> float:
    return _float(found) if _float(found) is not None else float("inf")


def _text(found: Any) -> str:
    return NOT_AVAILABLE if found is None else str(found)
