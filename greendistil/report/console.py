"""Plain-text tables for the terminal: `greendistil bench`'s summary and `greendistil runs`'s record list.

They return strings; `greendistil.cli` prints them.
"""

from __future__ import annotations

import pandas as pd

from greendistil.report.markdown import fmt_number
from greendistil.report.provenance import energy_kinds
from greendistil.report.reference import DISTILBERT
from greendistil.report.serving import InputsMismatchError, benchmark_summary, throughput_ratios

__all__ = ["bench_text", "runs_table"]


def bench_text(records: list[dict]) -> str:
    """The `greendistil bench` summary: one row per role and batch size, the student/teacher ratios, flags."""
    rows = benchmark_summary(records)
    headers = ("role", "batch", "p50 ms", "p95 ms", "examples/s", "J/1k ex", "FLOPs/ex", "GFLOP/s", "passes")
    body = [[str(r["role"]), str(r["batch_size"]), fmt_number(r["latency_ms_p50"]), fmt_number(r["latency_ms_p95"]),
             f"{fmt_number(r['examples_per_s'])} ± {fmt_number(r['examples_per_s_std'], 2)}",
             fmt_number(r["energy_j_per_1k_examples"]), fmt_number(r["flops_per_example"]),
             fmt_number(r["gflops_per_s"]), str(r["passes"])] for r in rows]
    widths = [max(len(str(line[i])) for line in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)) for line in [headers, *body]]
    try:
        for ratio in throughput_ratios(rows):
            lines.append(f"batch {ratio['batch_size']}: student/teacher throughput {fmt_number(ratio['speedup'])}x, "
                         f"energy per 1k examples {fmt_number(ratio['energy_per_1k_ratio'])}x "
                         f"({DISTILBERT.student_name}/{DISTILBERT.teacher_name}, paper: "
                         f"{DISTILBERT.inference_speedup:.2f}x on CPU at batch 1)")
    except InputsMismatchError as err:
        lines.append(f"no student/teacher ratio: {err}")
    lines += [f"{r['stage']}: {flag}" for r in rows for flag in r["flags"]]
    lines += [f"{role}: {model}" for role, model in dict((r["role"], r["model"]) for r in rows).items()]
    fast_paths = sorted({str(r["fast_path"]) for r in rows})
    kinds = sorted({kind for r in rows for kind in r["energy_kinds"]}) or ["not available"]
    lines.append(f"fast path: {', '.join(fast_paths)}; energy ({' + '.join(kinds)}) per 1k examples = window energy "
                 "/ examples in it")
    return "\n".join(lines)


def runs_table(frame: pd.DataFrame) -> str:
    """`greendistil runs`: one line per record; estimated energy marked ' (est.)'."""
    suite = "task" in frame and (frame["task"].nunique(dropna=False) > 1 or frame["task"].isna().any())
    # A suite's table keeps one score per model (the task's GLUE score) beside a task column: each task has
    # metrics of its own, and all of them would make the table as wide as the tasks' union.
    endings = (".score",) if suite else (".accuracy", ".score", ".mcc", ".f1", ".pearson", ".spearman")
    metric_columns = [c for c in frame.columns if c.startswith("metric.") and c.endswith(endings)]
    columns = ["run_id", *(["task"] if suite else []), "stage", "role", "status", "duration_s", "flops", "energy_kwh",
               "co2_kg", *metric_columns]
    table = frame[[c for c in columns if c in frame.columns]].copy()
    if suite:
        table["task"] = table["task"].fillna("shared")
    kinds = frame.apply(lambda row: energy_kinds(row.to_frame().T), axis=1)  # ' (est.)': never a bare estimate
    for column, fmt in (("duration_s", "{:.1f}"), ("flops", "{:.3g}"), ("energy_kwh", "{:.3g}"), ("co2_kg", "{:.3g}")):
        if column in table:
            table[column] = table[column].map(lambda v, f=fmt: "-" if v is None or v != v else f.format(v))
    for column in ("energy_kwh", "co2_kg"):
        if column in table:
            table[column] = table[column] + kinds.where(table[column] != "-", "")
    for column in metric_columns:
        table[column] = table[column].map(lambda v: "-" if v is None or v != v else f"{v:.4f}")
    table.columns = [c.removeprefix("metric.") for c in table.columns]
    return table.to_string(index=False)
