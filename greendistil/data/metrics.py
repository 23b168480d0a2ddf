"""GLUE metrics, a task's score and the GLUE score, following the GLUE leaderboard conventions.

All values are fractions in [0, 1] (MCC and correlations in [-1, 1]), not percentages.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats
from sklearn.metrics import matthews_corrcoef

from greendistil.data.tasks import GlueTask

logger = logging.getLogger(__name__)


def _class_predictions(predictions: np.ndarray) -> np.ndarray:
    """Class ids from class ids (N,) or logits (N, C)."""
    if predictions.ndim == 2:
        return predictions.argmax(axis=-1)
    if predictions.ndim == 1:
        return predictions.astype(np.int64)
    raise ValueError(f"predictions: shape {predictions.shape} is neither class ids (N,) nor logits (N, C)")


def _regression_predictions(predictions: np.ndarray) -> np.ndarray:
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        return predictions[:, 0].astype(np.float64)
    if predictions.ndim == 1:
        return predictions.astype(np.float64)
    raise ValueError(f"predictions: shape {predictions.shape} is not regression scores (N,) or (N, 1)")


def _f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1 (as sklearn's average='binary'); NaN when neither side has a positive."""
    true_positives = int(np.sum((predictions == 1) & (labels == 1)))
    false_positives = int(np.sum((predictions == 1) & (labels != 1)))
    false_negatives = int(np.sum((predictions != 1) & (labels == 1)))
    denominator = 2 * true_positives + false_positives + false_negatives
    if denominator == 0:
        logger.warning("f1 is undefined: no positive labels and no positive predictions; returning NaN")
        return math.nan
    return 2 * true_positives / denominator


def _correlation(name: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman correlation; NaN (with a warning) when either side is constant."""
    if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        logger.warning("%s is undefined for constant %s (or fewer than 2 examples); returning NaN", name,
                       "predictions" if len(labels) >= 2 and np.ptp(predictions) == 0 else "labels")
        return math.nan
    if name == "pearson":
        return float(stats.pearsonr(predictions, labels)[0])
    return float(stats.spearmanr(predictions, labels)[0])


def compute_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics (`task.metrics`) as plain floats.

    Classification: `predictions` are class ids (N,) or logits (N, C), argmax taken; metrics among
    accuracy, f1 (binary, positive class 1) and mcc. Regression (STS-B): scores (N,) or (N, 1); pearson
    and spearman. An undefined value (e.g. a correlation of constant predictions) is NaN, with a warning.
    MCC of constant predictions is 0.0, as sklearn and the GLUE leaderboard define it.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if task.is_regression:
        predictions = _regression_predictions(predictions)
        labels = labels.astype(np.float64).reshape(-1)
    else:
        predictions = _class_predictions(predictions)
        labels = labels.astype(np.int64).reshape(-1)
    if len(predictions) != len(labels) or len(labels) == 0:
        raise ValueError(f"compute_metrics({task.name}): {len(predictions)} predictions for {len(labels)} "
                         "labels; need the same non-zero number")
    if not task.is_regression and np.all(predictions == predictions[0]):
        logger.warning("%s: every prediction is class %d (a collapsed model?)", task.name, predictions[0])

    results: dict[str, float] = {}
    for metric in task.metrics:
        if metric == "accuracy":
            results[metric] = float(np.mean(predictions == labels))
        elif metric == "f1":
            results[metric] = float(_f1_binary(predictions, labels))
        elif metric == "mcc":
            results[metric] = float(matthews_corrcoef(labels, predictions))
        elif metric in ("pearson", "spearman"):
            results[metric] = _correlation(metric, predictions, labels)
        else:
            raise ValueError(f"{task.name}: unknown metric {metric!r}; known: accuracy, f1, mcc, pearson, "
                             "spearman")
    return results


def task_score(task: GlueTask, metrics: dict[str, float]) -> float:
    """One number per task: the unweighted mean of its official metrics (e.g. MRPC: mean of F1 and
    accuracy; STS-B: mean of Pearson and Spearman), as on the GLUE leaderboard. NaN propagates."""
    missing = [metric for metric in task.metrics if metric not in metrics]
    if missing:
        raise ValueError(f"task_score({task.name}): missing metric(s) {missing}; got {sorted(metrics)}, "
                         f"need {list(task.metrics)}")
    return float(np.mean([metrics[metric] for metric in task.metrics]))


def glue_score(task_scores: dict[str, float]) -> float:
    """The GLUE score: the unweighted mean of one score per task (from `task_score`).

    The caller passes one number per task. For MNLI that number is the mean of its matched and
    mismatched accuracies, so MNLI counts once, like every other task. The mean is over the tasks given:
    pass all nine for a score comparable with the leaderboard.
    """
    if not task_scores:
        raise ValueError("glue_score: no task scores given")
    return float(np.mean(list(task_scores.values())))
