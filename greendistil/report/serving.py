"""Serving cost: what answering requests costs per model, from `benchmark` records.

A benchmark record holds one model at one batch size in one window (see `greendistil.stages.benchmark`).
Energy per 1,000 examples is the window's energy / the examples it processed × 1000: the window only knows
its energy when it closes, so it is derived here, from the records. Student / teacher ratios are computed
only between records whose inputs were the same token ids (`details.inputs_hash`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from greendistil.errors import GreendistilError
from greendistil.report.plots import ROLE_COLORS, save_figure
from greendistil.report.provenance import KIND_MARKS
from greendistil.report.markdown import NOT_AVAILABLE, fmt_number, fmt_ratio, table
from greendistil.report.reference import DISTILBERT
from greendistil.runtime.units import J_PER_KWH

BENCHMARK_KIND = "benchmark"


_METRICS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_mean", "latency_ms_std", "examples_per_s",
            "examples_per_s_std", "tokens_per_s", "flops_per_example", "gflops_per_s")


class InputsMismatchError(GreendistilError):
    """Teacher and student were benchmarked on different inputs: a ratio between them would mean nothing."""


def benchmark_summary(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per benchmark record: its timing metrics and the per-1,000-example energy, CO2 derived from
    the window's energy and examples. A window whose energy is missing or 0 gets None (never 0), flagged."""
    rows = []
    for record in records:
        if record.get("kind") != BENCHMARK_KIND:
            continue
        metrics, details = record.get("metrics") or {}, record.get("details") or {}
        row: dict[str, Any] = {
            "run_id": record.get("run_id"), "stage": record.get("stage"), "role": record.get("role"),
            "model": record.get("model"), "status": record.get("status"),
            "batch_size": metrics.get("batch_size", details.get("batch_size")),
            "num_examples": metrics.get("num_examples"), "passes": details.get("passes"),
            "fast_path": details.get("fast_path"), "inputs_hash": details.get("inputs_hash"),
            **{name: metrics.get(name) for name in _METRICS},
        }
        row.update(_per_1k(record))
        row["energy_kinds"] = sorted({str(record.get(f"{c}_energy_source") or "").split(":", 1)[0]
                                      for c in ("cpu", "gpu", "ram") if record.get(f"{c}_energy_kwh") is not None})
        flags = [details["energy_resolution_flag"]] if details.get("energy_resolution_flag") else []
        flags += list(record.get("gpu_flags") or [])
        if row["energy_kwh_per_1k_examples"] is None:
            flags.append("energy not resolved (missing or 0): per-1k energy left out")
        row["flags"] = flags
        rows.append(row)
    return rows


def _per_1k(record: Mapping[str, Any]) -> dict[str, float | None]:
    examples, energy_kwh, co2_kg = record.get("num_examples"), record.get("energy_kwh"), record.get("co2_kg")
    if not examples or energy_kwh is None or energy_kwh <= 0:
        return {"energy_kwh_per_1k_examples": None, "energy_j_per_1k_examples": None, "co2_kg_per_1k_examples": None}
    kwh = energy_kwh / examples * 1000.0
    return {"energy_kwh_per_1k_examples": kwh, "energy_j_per_1k_examples": kwh * J_PER_KWH,
            "co2_kg_per_1k_examples": None if co2_kg is None else co2_kg / examples * 1000.0}


def throughput_ratios(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Student against teacher per (run, benchmark stage, batch size), from `benchmark_summary` rows.

    `speedup` = student examples/s ÷ teacher examples/s (DistilBERT's 1.63× is this, on CPU at batch 1);
    `latency_p50_ratio` = teacher p50 ÷ student p50; `energy_per_1k_ratio` = student J ÷ teacher J.
    Raises InputsMismatchError when a pair was run on different inputs. Records not ok are left out.
    """
    pairs: dict[tuple[Any, str, Any], dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("role") not in ("teacher", "student"):
            continue
        prefix = str(row.get("stage")).rsplit(".", 2)[0]  # "benchmark.teacher.bs32" -> "benchmark"
        pairs.setdefault((row.get("run_id"), prefix, row.get("batch_size")), {})[str(row["role"])] = row
    ratios = []
    for (run_id, prefix, batch_size), pair in pairs.items():
        if set(pair) != {"teacher", "student"}:
            continue
        teacher, student = pair["teacher"], pair["student"]
        if not teacher.get("inputs_hash") or teacher.get("inputs_hash") != student.get("inputs_hash"):
            raise InputsMismatchError(
                f"{run_id} {prefix} batch size {batch_size}: teacher and student ran on different inputs "
                f"(inputs_hash {str(teacher.get('inputs_hash'))[:12]} vs {str(student.get('inputs_hash'))[:12]}; "
                "different tokenizers?): no ratio between them; benchmark both with the same tokenizer")
        ratios.append({
            "run_id": run_id, "stage": prefix, "batch_size": batch_size, "inputs_hash": teacher["inputs_hash"],
            "speedup": _ratio(student.get("examples_per_s"), teacher.get("examples_per_s")),
            "latency_p50_ratio": _ratio(teacher.get("latency_ms_p50"), student.get("latency_ms_p50")),
            "energy_per_1k_ratio": _ratio(student.get("energy_j_per_1k_examples"),
                                          teacher.get("energy_j_per_1k_examples")),
        })
    return ratios


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


# --- report section and figure ---------------------------------------------------------------------------

def serving_section(records_by_run: Iterable[tuple[str, list[Mapping[str, Any]]]]) -> str:
    """'## Serving cost': per run, each model at each batch size, then the speed-up beside DistilBERT's."""
    parts = ["## Serving cost",
             "Inference on the first dev sentences of the task, the same token ids for both models (checked "
             "by hash), after warm-up, in one measurement window per model and batch size. Latency is per "
             "batch (model forward only); throughput and its spread (± std) are over the timed passes; energy "
             "and CO2eq per 1,000 examples are the window's energy ÷ the examples it processed. Energy carries "
             "the provenance of the window's meters (see the cost table): on a machine without RAPL or NVML it "
             f"is an estimate. {DISTILBERT.student_name}'s published speed-up over {DISTILBERT.teacher_name} "
             f"({DISTILBERT.inference_speedup:.2f}×, {DISTILBERT.inference_setup}) is set beside the measured one."]
    for run_id, records in records_by_run:  # (run id, that run's records)
        rows = benchmark_summary(records)
        if not rows:
            continue
        parts += [f"### {run_id}", _models_table(rows)]
        try:
            parts.append(_ratios_table(throughput_ratios(rows)))
        except InputsMismatchError as err:
            parts.append(f"No student / teacher ratio: {err}")
        flags = sorted({f"{row['stage']}: {flag}" for row in rows for flag in row["flags"]})
        if flags:
            parts.append("Flags:\n\n" + "\n".join(f"- {flag}" for flag in flags))
    return "\n\n".join(parts)


def _models_table(rows: list[dict[str, Any]]) -> str:
    headers = ("role", "batch", "status", "p50 ms", "p95 ms", "examples/s", "tokens/s", "FLOPs / example",
               "GFLOP/s", "J / 1k examples", "kg CO2eq / 1k examples", "passes", "fast path")
    body = [[str(r["role"]), str(r["batch_size"]), str(r["status"]), fmt_number(r["latency_ms_p50"]),
             fmt_number(r["latency_ms_p95"]), _with_std(r["examples_per_s"], r["examples_per_s_std"]),
             fmt_number(r["tokens_per_s"]), fmt_number(r["flops_per_example"]), fmt_number(r["gflops_per_s"]),
             _marked(r["energy_j_per_1k_examples"], r), _marked(r["co2_kg_per_1k_examples"], r),
             str(r["passes"] if r["passes"] is not None else NOT_AVAILABLE), str(r["fast_path"] or NOT_AVAILABLE)]
            for r in sorted(rows, key=lambda r: (r["batch_size"] or 0, r["role"] != "teacher"))]
    return table(headers, body, right_align_from=1)


def _marked(number: float | None, row: dict[str, Any]) -> str:
    """A per-1k energy or CO2 figure with the kinds of the energy behind it: '83.1 (est.)'."""
    kinds = [KIND_MARKS[k] for k in row.get("energy_kinds", []) if k in ("measured", "estimated")]
    text = fmt_number(number)
    return text + (f" ({'+'.join(kinds)})" if kinds and number is not None else "")


def _ratios_table(ratios: list[dict[str, Any]]) -> str:
    paper = DISTILBERT
    body = [[str(r["batch_size"]), fmt_ratio(r["speedup"]), fmt_ratio(r["latency_p50_ratio"]),
             fmt_ratio(r["energy_per_1k_ratio"]), f"{fmt_ratio(paper.inference_speedup)} (CPU, batch 1)"]
            for r in sorted(ratios, key=lambda r: r["batch_size"] or 0)]
    headers = ("batch", "speed-up (student ÷ teacher examples/s)", "p50 latency teacher ÷ student",
               "energy / 1k student ÷ teacher", f"{paper.student_name} vs {paper.teacher_name} (paper)")
    return table(headers, body, right_align_from=1)


def _energy_label(rows: list[dict[str, Any]]) -> str:
    kinds = sorted({kind for row in rows for kind in row["energy_kinds"]})
    return "energy per 1,000 examples (J" + (f", {' + '.join(kinds)})" if kinds else ")")


def _with_std(mean: float | None, std: float | None) -> str:
    return fmt_number(mean) if std is None or mean is None else f"{fmt_number(mean)} ± {fmt_number(std, 2)}"


def plot_serving(rows: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    return save_figure(draw_serving(rows, title=title), path)


def draw_serving(rows: list[dict[str, Any]], *, title: str) -> Figure:
    """Throughput and J per 1,000 examples, a teacher and a student bar per batch size (missing: not drawn)."""
    fig = Figure(figsize=(8.0, 5.0), dpi=100)
    axes = fig.subplots(1, 2)
    batch_sizes = sorted({r["batch_size"] for r in rows if r["batch_size"] is not None})
    width = 0.38
    for ax, field, label in ((axes[0], "examples_per_s", "throughput (examples/s)"),
                             (axes[1], "energy_j_per_1k_examples", _energy_label(rows))):
        for offset, role in ((-width / 2, "teacher"), (width / 2, "student")):
            for i, batch_size in enumerate(batch_sizes):
                found = [r.get(field) for r in rows if r["role"] == role and r["batch_size"] == batch_size
                         and r.get(field) is not None]
                if not found:
                    ax.text(i + offset, 0, "n/a", ha="center", va="bottom", fontsize=7, color="grey")
                    continue
                ax.bar(i + offset, found[-1], width=width, color=ROLE_COLORS[role])
                ax.text(i + offset, found[-1], fmt_number(found[-1]), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
        ax.set_ylabel(label)
        ax.margins(y=0.12)
    handles = [Patch(color=ROLE_COLORS[r], label=r) for r in ("teacher", "student")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(f"Serving cost — {title}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
