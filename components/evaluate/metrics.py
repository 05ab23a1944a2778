"""Metrics of one model on labelled test examples: pure numpy, no model, no I/O."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from visionpipe.config import CLASS_METRICS


def evaluate_model(
    truth: list[str],
    probabilities: np.ndarray,
    labels: list[str],
    top_k: int = 3,
    bins: int = 15,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Every metric of one model on the test examples.

    Args:
        truth: the true class name of each example.
        probabilities: ``[examples, len(labels)]`` predicted probabilities.
        labels: the model's class names, in column order. A true class the model does
            not know counts as a miss with probability 0 for it.
        top_k: k of ``top_k_accuracy`` (capped at the number of classes).
        bins: confidence bins of the expected calibration error.

    Returns:
        Flat metrics (``accuracy``, ``top_k_accuracy``, macro and weighted precision,
        recall and F1, ``log_loss``, ``expected_calibration_error``, ``examples``, and
        ``<metric>/<class>`` per class), and a report with ``per_class`` (precision,
        recall, f1, support), the ``confusion_matrix`` (rows: truth, columns: predicted)
        over ``classes``, and ``correct`` (per example, for significance tests).
    """
    n = len(truth)
    index = {label: i for i, label in enumerate(labels)}
    predicted = [labels[i] for i in probabilities.argmax(axis=1)] if n else []
    correct = np.array([p == t for p, t in zip(predicted, truth, strict=True)], dtype=bool)
    classes = sorted(set(truth) | set(predicted))
    matrix = confusion_matrix(truth, predicted, classes)
    per_class = per_class_scores(matrix, classes)
    metrics: dict[str, float] = {"accuracy": float(correct.mean()) if n else 0.0}
    k = min(top_k, len(labels))
    top = np.argsort(-probabilities, axis=1)[:, :k] if n else np.zeros((0, k), int)
    hits = [index.get(t, -1) in row for t, row in zip(truth, top, strict=True)]
    metrics["top_k_accuracy"] = float(np.mean(hits)) if n else 0.0
    metrics.update(_averages(per_class))
    true_p = np.array(
        [probabilities[r, index[t]] if t in index else 0.0 for r, t in enumerate(truth)]
    )
    metrics["log_loss"] = float(-np.log(np.clip(true_p, 1e-15, 1.0)).mean()) if n else 0.0
    metrics["expected_calibration_error"] = (
        _ece(probabilities.max(axis=1), correct, bins) if n else 0.0
    )
    metrics["examples"] = float(n)
    for c in classes:
        for name in CLASS_METRICS:
            metrics[f"{name}/{c}"] = per_class[c][name]
    report = {
        "top_k": k,
        "classes": classes,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "correct": correct.tolist(),
    }
    return metrics, report


def confusion_matrix(truth: list[str], predicted: list[str], classes: list[str]) -> np.ndarray:
    """Counts ``[truth, predicted]`` over ``classes`` (rows: truth, columns: predicted)."""
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[position[t], position[p]] += 1
    return matrix


def per_class_scores(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class, from the confusion matrix."""
    scores = {}
    for i, c in enumerate(classes):
        tp = float(matrix[i, i])
        fp = float(matrix[:, i].sum() - tp)
        fn = float(matrix[i, :].sum() - tp)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        support = int(matrix[i, :].sum())
        scores[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return scores


def _averages(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """Macro and support-weighted averages over the classes that occur in the truth."""
    in_truth = [c for c, m in per_class.items() if m["support"]]
    support = np.array([per_class[c]["support"] for c in in_truth], dtype=np.float64)
    averages = {}
    for name in CLASS_METRICS:
        values = np.array([per_class[c][name] for c in in_truth])
        averages[f"macro_{name}"] = float(values.mean()) if len(values) else 0.0
        averages[f"weighted_{name}"] = (
            float((values * support).sum() / support.sum()) if len(values) else 0.0
        )
    return averages


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Expected calibration error: |accuracy - confidence| per bin, weighted by the bin's share."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (``recall/cat`` stays; odd characters become ``_``)."""
    return re.sub(r"[^0-9A-Za-z_.\-/ ]", "_", name)
