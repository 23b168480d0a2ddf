"""The model card of a model saved by a measured `Trainer` (a checkpoint, or `save_model`'s folder).

The same hub metadata as a greendistil run's cards (`report.model_card`): `co2_eq_emissions` in grams,
`model-index` with the last evaluation of the run directory. A checkpoint costs what its training window
had spent when it was saved (the live reading then); a final model, its training window's record. A
student's emissions include the teacher training recorded in the same run directory, and only that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub import ModelCard, ModelCardData

from greendistil.data.tasks import get_task
from greendistil.report.model_card import CARD_FILE, GLUE_DATASET, emissions_entry, eval_results, hardware_used
from greendistil.report.markdown import fmt_number, fmt_si
from greendistil.runlog.frame import flatten_record
from greendistil.runlog.store import read_records


def write_trainer_card(folder: Path, *, run_dir: Path, record: dict[str, Any], live: dict[str, float] | None,
                       task: str | None, role: str, model: Any) -> Path | None:
    """Write `folder/README.md` for a model whose training `record` (of `run_dir`) is known; `live`: the
    window's figures when the checkpoint was saved. None when the folder is not there (rotated away)."""
    if not folder.is_dir():
        return None
    own_g = live.get("co2_g") if live is not None else _grams(record.get("co2_kg"))
    teacher_g = _teacher_grams(run_dir) if role == "student" else 0.0
    grams = None if own_g is None else own_g + teacher_g
    flat = pd.Series(flatten_record(record))
    metrics = _last_metrics(run_dir, role)
    if task is not None:  # model-index holds the task's official metrics (not the loss)
        metrics = {name: found for name, found in metrics.items() if name in get_task(task).metrics}
    name_or_path = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    base = name_or_path if name_or_path.count("/") == 1 and not Path(name_or_path).exists() else None
    data = ModelCardData(
        model_name=folder.name, base_model=base, library_name="transformers", pipeline_tag="text-classification",
        datasets=[GLUE_DATASET] if task else None, tags=["greendistil", role, *([task] if task else [])],
        eval_results=eval_results(task, metrics) or None,
        co2_eq_emissions=emissions_entry(
            grams=grams, version=(record.get("versions") or {}).get("greendistil"),
            how_known="measured" if _all_measured(record) else "estimated", kind=str(record.get("kind")),
            country_iso_code=record.get("country_iso_code"), hardware=hardware_used(flat)) if grams is not None else None,
    )
    body = _body(folder, record, live, grams, teacher_g, metrics)
    path = folder / CARD_FILE
    path.write_text(str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")), encoding="utf-8")
    return path


def _body(folder: Path, record: dict[str, Any], live: dict[str, float] | None, grams: float | None,
          teacher_g: float, metrics: dict[str, float]) -> str:
    when = ("when this checkpoint was saved (a live reading of the window)" if live is not None
            else "over the whole training window (its record)")
    energy = live.get("energy_kwh") if live is not None else record.get("energy_kwh")
    lines = [f"# {folder.name}", "",
             f"Trained with `transformers.Trainer`, measured by greendistil's callback into run "
             f"`{record.get('run_id')}` (window `{record.get('stage')}`).", "",
             "## Environmental Impact", "",
             f"- **Hardware type:** {hardware_used(pd.Series(flatten_record(record)))}",
             f"- **Hours used:** {fmt_number((record.get('duration_s') or 0) / 3600)} h (the training window)",
             f"- **Compute region:** {record.get('country_iso_code')}; grid intensity "
             f"{fmt_number(record.get('intensity_g_per_kwh'), 4)} g CO2eq/kWh, PUE {fmt_number(record.get('pue'))}",
             f"- **Energy:** {fmt_number(energy)} kWh {when}",
             f"- **Carbon emitted:** {fmt_number(grams)} g CO2eq"
             + (f", including {fmt_number(teacher_g)} g of teacher training recorded in the same run directory"
                if teacher_g else ""),
             f"- **FLOPs:** {fmt_si(record.get('flops'))} (`{record.get('flops_source')}`)",
             "", "Energy by component and its provenance (CPU: "
             f"`{record.get('cpu_energy_source')}`, GPU: `{record.get('gpu_energy_source')}`, RAM: "
             f"`{record.get('ram_energy_source')}`): `greendistil report {record.get('run_id')}` gives the full account."]
    if metrics:
        lines += ["", "## Evaluation", ""] + [f"- {name}: {value:.4f}" for name, value in metrics.items()]
    return "\n".join(lines) + "\n"


def _last_metrics(run_dir: Path, role: str) -> dict[str, float]:
    """The role's metrics from the run directory's last evaluation window."""
    evaluations = [r for r in read_records(run_dir) if r.get("kind") == "evaluate"]
    if not evaluations:
        return {}
    prefix = f"{role}."
    return {k[len(prefix):]: float(v) for k, v in (evaluations[-1].get("metrics") or {}).items()
            if k.startswith(prefix) and not k.endswith(".score") and isinstance(v, (int, float))}


def _teacher_grams(run_dir: Path) -> float:
    """The teacher training windows recorded in the run directory (g CO2eq)."""
    teachers = [r for r in read_records(run_dir) if r.get("role") == "teacher" and r.get("kind") == "finetune"]
    return sum(_grams(r.get("co2_kg")) or 0.0 for r in teachers)


def _all_measured(record: dict[str, Any]) -> bool:
    return all(str(record.get(f"{c}_energy_source") or "").startswith("measured:")
               for c in ("cpu", "gpu", "ram") if record.get(f"{c}_energy_kwh") is not None)


def _grams(co2_kg: Any) -> float | None:
    return None if co2_kg is None else float(co2_kg) * 1000.0
