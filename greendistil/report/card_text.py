"""The body of a model card (`report.model_card`): what the model is, its dev scores, and what it cost.

Every energy figure carries its provenance mark and footnote, as in the run's report; the student's cost
includes the teacher's training it needed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import tomli_w
from huggingface_hub import ModelCardData

from greendistil.report.objectives import objective_words, record_uses_new_objectives
from greendistil.report.costs import cost_totals
from greendistil.report.glue import task_label
from greendistil.report.frame import column_sum, number, value
from greendistil.report.markdown import fmt_count, fmt_number, fmt_si, table
from greendistil.report.provenance import ENERGY_SOURCE_COLUMNS, describe_source, energy_kinds, source_key

if TYPE_CHECKING:
    from greendistil.report.model_card import SavedModel

ROLE_WORDS = {"teacher": "teacher", "student": "student", "general_student": "general-distillation student"}


def card_body(records: pd.DataFrame, saved: SavedModel, data: ModelCardData) -> str:
    """The card's markdown, after its YAML metadata."""
    sections = [f"# {data.model_name}", _summary(saved, data), _model_section(saved, data),
                _evaluation_section(saved), _impact_section(saved, data), _climate_section(records, saved),
                _procedure_section(saved)]
    sources = [value(row, c) for _, row in saved.lineage.iterrows() for c in ENERGY_SOURCE_COLUMNS]
    sections.append(_provenance_section([s for s in sources if s is not None]))
    return "\n\n".join(s for s in sections if s) + "\n"


def _provenance_section(sources: list[str]) -> str:
    seen = list(dict.fromkeys(source_key(s) for s in sources))
    return "### Where the energy figures come from\n\n" + "\n".join(f"- `{s}`: {describe_source(s)}" for s in seen)


def _summary(saved: SavedModel, data: ModelCardData) -> str:
    role, record = ROLE_WORDS.get(saved.role, saved.role), saved.record
    task = f" on GLUE {task_label(saved.task)}" if saved.task else " on the run's corpus"
    kind = {"finetune": "fine-tuned", "distill": "distilled", "pretrain": "trained (masked LM)"}.get(
        str(record["kind"]), str(record["kind"]))
    base = f", from `{data.base_model}`" if data.base_model else ""
    return (f"The {role} {kind}{task} by stage `{record['stage']}` of greendistil run `{record['run_id']}`{base}. "
            f"Its training emitted {_grams(saved.emissions_g)} CO2eq ({data.co2_eq_emissions['source'].rsplit(', ', 1)[1]}"
            f"{', the teacher training it needed included' if saved.role != 'teacher' else ''})."
            if data.co2_eq_emissions else f"The {role} {kind}{task} by greendistil run `{record['run_id']}`.")


def _model_section(saved: SavedModel, data: ModelCardData) -> str:
    record = saved.record
    rows = [["role", ROLE_WORDS.get(saved.role, saved.role)],
            ["built from", f"`{value(record, 'model')}`"],
            ["base model", f"`{data.base_model}`" if data.base_model else "none on the hub"],
            ["parameters", fmt_si(number(record, "num_params"))]]
    teacher_layers, student_layers = number(record, "details.teacher_num_layers"), number(record, "details.student_num_layers")
    if teacher_layers and student_layers:
        rows.append(["layers", f"{int(student_layers)} (the teacher has {int(teacher_layers)})"])
    if value(record, "details.student_shape"):
        rows.append(["shape", str(value(record, "details.student_shape"))])
    if value(record, "details.objective"):
        rows.append(["distillation objective", objective_words(record) if record_uses_new_objectives(record)
                     else str(value(record, "details.objective"))])
    rows += [["run / stage", f"`{record['run_id']}` / `{record['stage']}` ({record['kind']})"],
             ["config hash, git commit", f"`{value(record, 'config_hash')}`, `{value(record, 'git_sha')}`"],
             ["license", data.license or "see the base model's"]]
    return "## Model\n\n" + table(["", ""], rows, right_align_from=2)


def _evaluation_section(saved: SavedModel) -> str:
    metrics = saved.metrics()
    if not metrics:
        return "## Evaluation\n\nNot evaluated on a GLUE dev set in this run."
    evaluate = saved.evaluate
    assert evaluate is not None
    rows = [[name, f"{score:.4f}"] for name, score in metrics.items()]
    roles = str(evaluate["role"]).split("+")
    examples = number(evaluate, "num_examples")
    return (f"## Evaluation\n\nGLUE {task_label(str(saved.task))} dev set "
            f"({fmt_count(examples / len(roles) if examples else None)} examples), stage `{evaluate['stage']}`:\n\n"
            + table(["metric", "value"], rows))


def _impact_section(saved: SavedModel, data: ModelCardData) -> str:
    emissions = data.co2_eq_emissions
    if not emissions:
        return "## Environmental Impact\n\nNo energy was measured for this model's training."
    hours = column_sum(saved.lineage, "duration_s")
    record = saved.record
    intensity = number(record, "intensity_g_per_kwh")
    lines = [
        f"- **Hardware type:** {emissions['hardware_used']}",
        f"- **Hours used:** {fmt_number(hours / 3600 if hours else None)} h (every training stage the model needed)",
        "- **Cloud provider:** not recorded",
        f"- **Compute region:** {emissions['geographical_location']}; grid intensity {fmt_number(intensity, 4)} "
        f"g CO2eq/kWh (`{value(record, 'intensity_source')}`), PUE {fmt_number(number(record, 'pue'))}",
        f"- **Carbon emitted:** {_grams(saved.emissions_g)} CO2eq ({emissions['source']})",
    ]
    return "## Environmental Impact\n\n" + "\n".join(lines)


def _climate_section(records: pd.DataFrame, saved: SavedModel) -> str:
    rows = [_stage_row(row) for _, row in saved.lineage.iterrows()]
    own = saved.lineage[saved.lineage.index == saved.record.name]
    rows.append(_total_row("**this stage alone**", own))
    rows.append(_total_row("**every stage this model needed**", saved.lineage))
    rows.append(_total_row("every stage of the run (all models, evaluation, benchmarks)", records))
    text = ("## Climate performance\n\nCO2 = energy × grid intensity × PUE, per stage. The student's figure "
            "includes the teacher's training it needed.\n\n"
            + table(["stage", "role", "time (s)", "FLOPs", "energy (kWh)", "CO2 (g)"], rows, right_align_from=2))
    serving = _serving_rows(saved.benchmarks)
    if serving:
        text += ("\n\nInference, measured by the run's benchmark stage on GLUE dev sentences:\n\n"
                 + table(["batch size", "examples/s", "energy per 1,000 inferences (kWh)",
                          "CO2 per 1,000 inferences (g)"], serving))
    return text


def _stage_row(row: pd.Series) -> list[str]:
    return [f"`{row['stage']}`" + (f" ({row['task']})" if value(row, "task") else ""), str(row["role"]),
            fmt_number(number(row, "duration_s")), fmt_si(number(row, "flops")),
            fmt_number(number(row, "energy_kwh")) + energy_kinds(row.to_frame().T),
            fmt_number(_grams_value(number(row, "co2_kg")))]


def _total_row(label: str, records: pd.DataFrame) -> list[str]:
    totals = cost_totals(records)
    return [label, "", fmt_number(totals.duration_s), fmt_si(totals.flops),
            fmt_number(totals.energy_kwh) + energy_kinds(records), fmt_number(_grams_value(totals.co2_kg))]


def _serving_rows(benchmarks: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, row in benchmarks.iterrows():
        examples, kwh, co2 = number(row, "num_examples"), number(row, "energy_kwh"), number(row, "co2_kg")
        per_1k = 1000.0 / examples if examples else None
        rows.append([fmt_count(number(row, "metric.batch_size")), fmt_number(number(row, "metric.examples_per_s")),
                     fmt_number(kwh * per_1k if kwh and per_1k else None) + energy_kinds(row.to_frame().T),
                     fmt_number(_grams_value(co2 * per_1k) if co2 and per_1k else None)])
    return rows


def _procedure_section(saved: SavedModel) -> str:
    stage = _stage_table(Path(str(saved.record["run_dir"])), str(saved.record["stage"]))
    if not stage:
        return ""
    return ("## Training procedure\n\nThe stage's table in the run's resolved `config.toml` (its "
            "defaults filled in):\n\n```toml\n" + tomli_w.dumps({"stages": [stage]}).strip() + "\n```")


def _stage_table(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        with open(run_dir / "config.toml", "rb") as handle:
            config = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    for stage in config.get("stages") or []:
        if stage.get("name", stage.get("kind")) == name:
            return dict(stage)
    return {}


def _grams_value(co2_kg: float | None) -> float | None:
    return None if co2_kg is None else co2_kg * 1000.0


def _grams(grams: float | None) -> str:
    return "n/a" if grams is None else f"{fmt_number(grams)} g"
