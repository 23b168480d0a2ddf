"""What each distillation optimised: its objective, its loss terms with their weights and mean losses, the
student's shape and the layer maps, from the distill records' details.

Shown when a run used an intermediate term (TinyBERT, MiniLM, MiniLMv2) or the corpus objective; Table 1
then names each student row's objective, so that routes are compared on one table with their costs.
"""

from __future__ import annotations

import pandas as pd

from greendistil.report.frame import iter_runs, number, value
from greendistil.report.markdown import NOT_AVAILABLE, code, fmt_count, table

TERM_WORDS = {"loss_ce": "soft-target KL", "loss_task": "task loss", "loss_mlm": "MLM", "loss_cos": "cosine",
              "loss_hidden": "hidden MSE", "loss_attn": "attention KL", "loss_value": "value-relation KL",
              "loss_qkv": "Q/K/V-relation KL"}
INTERMEDIATE_TERMS = ("loss_hidden", "loss_attn", "loss_value", "loss_qkv")
_WEIGHT_KEYS = {"loss_ce": "alpha_ce", "loss_task": "alpha_task", "loss_mlm": "alpha_mlm", "loss_cos": "alpha_cos",
                "loss_hidden": "alpha_hidden", "loss_attn": "alpha_attn", "loss_value": "alpha_value",
                "loss_qkv": "alpha_qkv"}


def _distills(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["kind"] == "distill"] if "kind" in frame else frame.iloc[0:0]


def uses_new_objectives(frame: pd.DataFrame) -> bool:
    """Whether any distill record used an intermediate term or the corpus objective."""
    return any(record_uses_new_objectives(row) for _, row in _distills(frame).iterrows())


def record_uses_new_objectives(row: pd.Series) -> bool:
    """A distill record with an intermediate term or the corpus objective."""
    return bool(set(_weights(row)) & set(INTERMEDIATE_TERMS)) or value(row, "details.objective") == "corpus"


def _weights(row: pd.Series) -> dict[str, float]:
    """The record's active terms and weights, in the order of TERM_WORDS (weights > 0 only)."""
    weights = {}
    for term, key in _WEIGHT_KEYS.items():
        weight = number(row, f"details.{key}")
        if weight:
            weights[term] = weight
    return weights


def objective_words(row: pd.Series) -> str:
    """e.g. "task: soft-target KL + task loss + cosine + hidden MSE" or "corpus: hidden MSE + attention KL"."""
    terms = " + ".join(TERM_WORDS[t] for t in _weights(row))
    return f"{value(row, 'details.objective') or 'task'}: {terms or NOT_AVAILABLE}"


def role_objective(records: pd.DataFrame, role: str) -> str | None:
    """The objective of the distill stage that made `role`'s student in one run's records, None without one."""
    distills = _distills(records)
    made = distills[distills["role"] == role] if "role" in distills else distills.iloc[0:0]
    return objective_words(made.iloc[0]) if len(made) else None


def objectives_section(frame: pd.DataFrame) -> str:
    """The objectives table; "" when no run used the new objectives."""
    if not uses_new_objectives(frame):
        return ""
    rows = []
    for records in iter_runs(frame):
        for _, row in _distills(records).iterrows():
            weights = _weights(row)
            losses = ", ".join(f"{TERM_WORDS[t]} ×{w:g}: {_loss(row, t)}" for t, w in weights.items())
            maps = [f"hidden {value(row, 'details.intermediate.hidden_layer_map')}" if "loss_hidden" in weights else "",
                    f"relations {value(row, 'details.intermediate.relation_layer_map')}"
                    if set(weights) & {"loss_attn", "loss_value", "loss_qkv"} else ""]
            rows.append([code(value(row, "run_id")), value(row, "task") or "corpus", code(row["stage"]),
                         str(value(row, "details.objective") or "task"), str(value(row, "details.student_shape")
                                                                              or NOT_AVAILABLE),
                         losses or NOT_AVAILABLE, "; ".join(m for m in maps if m) or NOT_AVAILABLE])
    return "\n\n".join(part for part in [
        "## Distillation objectives",
        "Each distill stage's loss terms with their weights and their mean over the stage's steps (the loss each "
        "term contributed before weighting), the student's shape, and the layer maps as [student layer, teacher "
        "layer] pairs (0-based). Hidden MSE: TinyBERT's, through a learned projection when the widths differ; "
        "attention and value-relation KL: MiniLM's; Q/K/V-relation KL: MiniLMv2's.",
        table(["run", "task", "stage", "objective", "student", "terms: weight, mean loss", "layer maps"], rows),
        _heldout_block(frame)] if part)


def _heldout_block(frame: pd.DataFrame) -> str:
    """The corpus objective's terms on the corpus's held-out lines, before → after each stage; "" without."""
    rows = []
    for records in iter_runs(frame):
        for _, row in _distills(records).iterrows():
            role = str(value(row, "role") or "")

            def change(name: str) -> str:
                before, after = (number(row, f"metric.{role}.heldout_{name}_{when}") for when in ("before", "after"))
                return f"{_figure(before)} → {_figure(after)}"

            if number(row, f"metric.{role}.heldout_loss_after") is None:
                continue
            terms = "; ".join(f"{TERM_WORDS[t]}: {change(t)}" for t in _weights(row))
            rows.append([code(value(row, "run_id")), code(row["stage"]),
                         fmt_count(number(row, "details.heldout.num_sequences")), change("loss"), terms or NOT_AVAILABLE])
    if not rows:
        return ""
    return "\n\n".join([
        "### The corpus objective on held-out lines",
        "The stage's terms on the corpus lines it never trained on (`corpus.heldout_examples`), in eval mode, "
        "before → after the stage: the weighted loss as training weighs it, and each term before weighting. "
        "Lower is closer to the teacher's inner layers on unseen text.",
        table(["run", "stage", "held-out lines", "weighted loss", "each term"], rows, right_align_from=2)])


def _figure(number_: float | None) -> str:
    return NOT_AVAILABLE if number_ is None else f"{number_:.4g}"


def _loss(row: pd.Series, term: str) -> str:
    return _figure(number(row, f"details.mean_loss.{term}"))
