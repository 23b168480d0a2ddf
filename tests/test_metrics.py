"""GLUE metrics against values computed by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from greendistil.data.tasks import get_task
from greendistil.data.metrics import compute_metrics, glue_score, task_score

# Confusion matrix of 10 binary examples: TP=3, FN=1, FP=2, TN=4.
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PREDICTIONS = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])


def test_mcc_by_hand() -> None:
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(5*4*6*5) = 10 / sqrt(600)
    result = compute_metrics(get_task("cola"), PREDICTIONS, LABELS)
    assert result == {"mcc": pytest.approx(10 / math.sqrt(600))}
    assert type(result["mcc"]) is float


def test_f1_and_accuracy_by_hand() -> None:
    # precision 3/5, recall 3/4 -> F1 = 2TP / (2TP + FP + FN) = 6 / 9; accuracy 7/10
    result = compute_metrics(get_task("mrpc"), PREDICTIONS, LABELS)
    assert result == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(0.7)}
    assert all(type(value) is float for value in result.values())


def test_logits_are_argmaxed() -> None:
    logits = np.array([[2.0, 0.1, -1.0], [0.0, 0.5, 3.0], [0.2, 0.9, 0.1], [1.0, 0.0, 0.0]])  # -> 0, 2, 1, 0
    assert compute_metrics(get_task("mnli"), logits, np.array([0, 2, 0, 0])) == {"accuracy": 0.75}


def test_pearson_of_linear_and_spearman_of_monotone() -> None:
    labels = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    linear = compute_metrics(get_task("stsb"), 3.0 * labels - 1.0, labels)
    assert linear == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    monotone = compute_metrics(get_task("stsb"), np.exp(labels)[:, None], labels)  # (N, 1) predictions
    assert monotone["spearman"] == pytest.approx(1.0) and monotone["pearson"] < 0.99
    anti = compute_metrics(get_task("stsb"), -labels, labels)
    assert anti["pearson"] == pytest.approx(-1.0)


def test_constant_predictions_give_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="greendistil.data.metrics"):
        result = compute_metrics(get_task("stsb"), np.full(4, 2.0), np.array([0.0, 1.0, 2.0, 3.0]))
    assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])
    assert "constant predictions" in caplog.text
    # MCC of constant predictions is 0 by the sklearn / GLUE convention; it must not crash.
    assert compute_metrics(get_task("cola"), np.zeros(4), np.array([0, 1, 0, 1])) == {"mcc": 0.0}


def test_f1_without_any_positive_is_nan() -> None:
    result = compute_metrics(get_task("qqp"), np.zeros(3), np.zeros(3))
    assert math.isnan(result["f1"]) and result["accuracy"] == 1.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(get_task("sst2"), np.array([0, 1, 1]), np.array([0, 1]))


def test_task_score_and_glue_score_are_unweighted_means() -> None:
    assert task_score(get_task("mrpc"), {"f1": 0.9, "accuracy": 0.8}) == pytest.approx(0.85)
    assert task_score(get_task("stsb"), {"pearson": 0.88, "spearman": 0.86}) == pytest.approx(0.87)
    assert task_score(get_task("cola"), {"mcc": 0.5, "accuracy": 0.99}) == 0.5  # extra metrics ignored
    with pytest.raises(ValueError, match="missing metric"):
        task_score(get_task("mrpc"), {"accuracy": 0.8})
    mnli = (0.84 + 0.82) / 2  # matched and mismatched count as one task
    assert glue_score({"mnli": mnli, "sst2": 0.9, "cola": 0.5}) == pytest.approx((0.83 + 0.9 + 0.5) / 3)
    with pytest.raises(ValueError):
        glue_score({})
