"""The evaluate step: candidate and champion on the same raw test examples, then the gate.

Both models are scored through their served signature on the raw encoded bytes,
so each uses its own embedded preprocessing, and the comparison holds even when
the champion was trained with a different transform.

The gate: value thresholds (bounds on any metric, per class too), change thresholds
against the champion (absolute or relative, in the metric's better direction), an
optional significance test of the accuracy gain (McNemar or bootstrap). No thresholds
at all never blesses unless ``evaluate.bless_without_thresholds``; without a champion
only value thresholds apply.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import (
    CLASS_METRICS,
    ChangeThreshold,
    Config,
    EvaluateConfig,
    Threshold,
)
from visionpipe.errors import UserError
from visionpipe.serving import Classifier

log = logging.getLogger(__name__)


class ThresholdError(UserError, ValueError):
    """A threshold names a class the test data does not have."""


@dataclass(frozen=True)
class Check:
    """One condition of the gate, with the values it compared."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str = ""


@dataclass(frozen=True)
class Blessing:
    """The gate's decision, every check, a one-line reason, and both models' metrics."""

    blessed: bool
    reason: str
    candidate: dict[str, float]
    champion: dict[str, float] | None
    checks: list[Check] = field(default_factory=list)
    candidate_report: dict[str, Any] | None = None
    champion_report: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (written as ``blessing.json``)."""
        return asdict(self)


def load_test_examples(raw_examples_uri: str) -> tuple[list[bytes], list[str]]:
    """Encoded images and label names of ingest's test split."""
    files = storage.glob(F.split_pattern(raw_examples_uri, "test"))
    if not files:
        raise ValueError(f"{raw_examples_uri}: no test shards to evaluate on")
    spec = {
        F.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        F.LABEL_TEXT: tf.io.FixedLenFeature([], tf.string),
    }
    images: list[bytes] = []
    labels: list[str] = []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(512):
        parsed = tf.io.parse_example(batch, spec)
        images.extend(parsed[F.IMAGE_ENCODED].numpy().tolist())
        labels.extend(v.decode() for v in parsed[F.LABEL_TEXT].numpy())
    return images, labels


def model_labels(model_dir: str) -> list[str]:
    """The served model's class names in probability-column order."""
    path = storage.join(model_dir, F.TRAINING_RECORD)
    if not storage.exists(path):
        raise ValueError(f"{model_dir}: no {F.TRAINING_RECORD}; not a model this project exported")
    return list(storage.read_json(path)["labels"])


def predict_probabilities(model_dir: str, images: list[bytes], batch_size: int) -> np.ndarray:
    """Class probabilities ``[examples, classes]`` of a served model on raw encoded bytes."""
    classifier = Classifier(model_dir)
    parts = [
        classifier.classify(images[start : start + batch_size])["probabilities"]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 0))


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
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[position[t], position[p]] += 1
    per_class = {}
    for c in classes:
        i = position[c]
        tp = float(matrix[i, i])
        fp = float(matrix[:, i].sum() - tp)
        fn = float(matrix[i, :].sum() - tp)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(matrix[i, :].sum()),
        }
    in_truth = [c for c in classes if per_class[c]["support"]]
    support = np.array([per_class[c]["support"] for c in in_truth], dtype=np.float64)
    metrics: dict[str, float] = {"accuracy": float(correct.mean()) if n else 0.0}
    k = min(top_k, len(labels))
    top = np.argsort(-probabilities, axis=1)[:, :k] if n else np.zeros((0, k), int)
    metrics["top_k_accuracy"] = (
        float(np.mean([index.get(t, -1) in row for t, row in zip(truth, top, strict=True)]))
        if n
        else 0.0
    )
    for name in CLASS_METRICS:
        values = np.array([per_class[c][name] for c in in_truth])
        metrics[f"macro_{name}"] = float(values.mean()) if len(values) else 0.0
        metrics[f"weighted_{name}"] = (
            float((values * support).sum() / support.sum()) if len(values) else 0.0
        )
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


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Expected calibration error: |accuracy - confidence| per bin, weighted by the bin's share."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def gate(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    cfg: EvaluateConfig,
    classes: list[str] | None = None,
    correct: tuple[list[bool], list[bool]] | None = None,
) -> Blessing:
    """The decision: every configured check on the candidate (and against the champion).

    Args:
        candidate: the candidate's flat metrics (``evaluate_model``).
        champion: the champion's, or None when there is no champion.
        cfg: the thresholds.
        classes: the test data's classes (for ``class_name: "*"``); default: from metrics.
        correct: per-example correctness of candidate and champion, for significance.
    """
    if classes is None:
        classes = sorted({k.split("/", 1)[1] for k in candidate if "/" in k})
    checks: list[Check] = []
    for t in cfg.value_thresholds():
        for key, label in _keys(t, classes):
            value = candidate.get(key, 0.0)
            if t.lower is not None:
                checks.append(Check(f"{label} >= {t.lower:g}", value >= t.lower, value, t.lower))
            if t.upper is not None:
                checks.append(Check(f"{label} <= {t.upper:g}", value <= t.upper, value, t.upper))
    changes = cfg.all_change_thresholds()
    if champion is not None:
        for t in changes:
            for key, label in _keys(t, classes):
                checks.extend(_change_checks(t, key, label, candidate, champion))
        if cfg.significance.test != "none" and correct is not None:
            checks.append(significance_check(*correct, cfg))
    if not checks:  # nothing configured, or only champion checks and no champion yet
        blessed = cfg.bless_without_thresholds
        what = (
            "no thresholds configured" if not changes else "no champion yet and no value thresholds"
        )
        reason = (
            f"blessed: {what}, and evaluate.bless_without_thresholds is true"
            if blessed
            else f"not blessed: {what} (configure evaluate thresholds, or set "
            "evaluate.bless_without_thresholds: true)"
        )
        return Blessing(blessed, reason, candidate, champion, checks)
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "not blessed: " + "; ".join(
            f"{c.name} failed ({c.value:.4f} vs {c.threshold:.4f})" for c in failed
        )
    else:
        vs = "no champion yet" if champion is None else "champion comparison passed"
        reason = (
            f"blessed: {len(checks)} checks passed ({vs}); accuracy {candidate['accuracy']:.4f}"
        )
    return Blessing(not failed, reason, candidate, champion, checks)


def _keys(t: Threshold | ChangeThreshold, classes: list[str]) -> list[tuple[str, str]]:
    """The metric keys a threshold covers, with readable names."""
    if t.class_name is None:
        return [(t.metric, t.metric)]
    names = classes if t.class_name == "*" else [t.class_name]
    return [(f"{t.metric}/{c}", f"{t.metric}[{c}]") for c in names]


def _change_checks(t: ChangeThreshold, key, label, candidate, champion) -> list[Check]:
    new, old = candidate.get(key, 0.0), champion.get(key, 0.0)
    gain = new - old if t.higher_is_better else old - new
    word = "gain" if t.higher_is_better else "reduction"
    checks = []
    if t.absolute is not None:
        checks.append(
            Check(
                f"{label} {word} vs champion >= {t.absolute:g}",
                gain >= t.absolute - 1e-12,
                gain,
                t.absolute,
                f"candidate {new:.4f}, champion {old:.4f}",
            )
        )
    if t.relative is not None:
        ratio = gain / abs(old) if old else (math.inf if gain > 0 else 0.0)
        checks.append(
            Check(
                f"{label} relative {word} vs champion >= {t.relative:g}",
                ratio >= t.relative - 1e-12,
                ratio,
                t.relative,
                f"candidate {new:.4f}, champion {old:.4f}",
            )
        )
    return checks


def significance_check(
    candidate_correct: list[bool], champion_correct: list[bool], cfg: EvaluateConfig
) -> Check:
    """Whether the candidate's accuracy gain over the champion is significant.

    ``mcnemar``: the exact one-sided McNemar test on the examples where the two
    disagree (p < alpha). ``bootstrap``: the lower end of the (1 - 2 alpha) bootstrap
    interval of the accuracy difference is above 0 (equivalently one-sided at alpha).
    """
    a = np.asarray(candidate_correct, dtype=bool)
    b = np.asarray(champion_correct, dtype=bool)
    sig = cfg.significance
    if sig.test == "mcnemar":
        wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
        p = _binomial_upper_tail(wins, wins + losses)
        return Check(
            f"accuracy gain significant (McNemar, p < {sig.alpha:g})",
            p < sig.alpha,
            p,
            sig.alpha,
            f"candidate right/champion wrong {wins}, the reverse {losses}",
        )
    rng = np.random.default_rng(0)
    n = len(a)
    draws = rng.integers(0, n, size=(sig.resamples, n))
    diffs = a[draws].mean(axis=1) - b[draws].mean(axis=1)
    low = float(np.quantile(diffs, sig.alpha))
    return Check(
        f"accuracy gain significant (bootstrap {1 - sig.alpha:.0%} lower bound > 0)",
        low > 0,
        low,
        0.0,
        f"difference {a.mean() - b.mean():+.4f}, {sig.resamples} resamples",
    )


def _binomial_upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2); 1 when there are no disagreements."""
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


def check_threshold_classes(cfg: EvaluateConfig, classes: list[str]) -> None:
    """Raises ThresholdError if a threshold names a class the test data does not have."""
    named = [
        t.class_name
        for t in (*cfg.value_thresholds(), *cfg.all_change_thresholds())
        if t.class_name not in (None, "*")
    ]
    unknown = sorted(set(named) - set(classes))
    if unknown:
        raise ThresholdError(
            f"evaluate thresholds name classes {unknown} that the test data does not have; "
            f"classes: {classes}"
        )


def markdown_report(blessing: Blessing) -> str:
    """A human-readable report: decision, checks, metrics, per-class table, confusion matrix."""
    lines = [
        f"# Evaluation: {'BLESSED' if blessing.blessed else 'NOT BLESSED'}",
        "",
        blessing.reason,
        "",
    ]
    lines += [
        "## Checks",
        "",
        "| check | value | threshold | passed |",
        "| --- | --- | --- | --- |",
    ]
    for c in blessing.checks:
        lines.append(
            f"| {c.name} | {c.value:.4f} | {c.threshold:.4f} | {'yes' if c.passed else 'NO'} |"
        )
    lines += ["", "## Metrics", "", "| metric | candidate | champion |", "| --- | --- | --- |"]
    for key, value in blessing.candidate.items():
        if "/" in key:
            continue
        old = blessing.champion.get(key) if blessing.champion else None
        lines.append(f"| {key} | {value:.4f} | {'' if old is None else f'{old:.4f}'} |")
    report = blessing.candidate_report or {}
    if report:
        lines += [
            "",
            "## Per class (candidate)",
            "",
            "| class | precision | recall | f1 | support |",
        ]
        lines.append("| --- | --- | --- | --- | --- |")
        for c, m in report["per_class"].items():
            scores = " | ".join(f"{m[k]:.4f}" for k in ("precision", "recall", "f1"))
            lines.append(f"| {c} | {scores} | {m['support']} |")
        classes = report["classes"]
        lines += ["", "## Confusion matrix (rows: truth, columns: predicted)", ""]
        lines.append("| | " + " | ".join(classes) + " |")
        lines.append("| --- " * (len(classes) + 1) + "|")
        for c, row in zip(classes, report["confusion_matrix"], strict=True):
            lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def confusion_png(report: dict[str, Any], path: str) -> None:
    """The confusion matrix as a PNG heat map with counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = report["classes"]
    matrix = np.asarray(report["confusion_matrix"])
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (``recall/cat`` stays; odd characters become ``_``)."""
    return re.sub(r"[^0-9A-Za-z_.\-/ ]", "_", name)


def run_evaluate(
    raw_examples_uri: str,
    candidate_model_uri: str,
    output_uri: str,
    config: Config,
    champion_model_uri: str | None = None,
) -> Blessing:
    """Scores candidate (and champion, if given) on the test split; writes the blessing.

    Writes ``blessing.json`` (decision, checks, metrics, reports) and ``report.md``.

    Raises:
        ThresholdError: a threshold names a class the test data does not have (before
            any model is scored).
    """
    cfg = config.evaluate
    images, truth = load_test_examples(raw_examples_uri)
    classes = sorted(set(truth))
    check_threshold_classes(cfg, classes)

    def score(model_uri: str):
        probabilities = predict_probabilities(model_uri, images, cfg.batch_size)
        labels = model_labels(model_uri)
        return evaluate_model(truth, probabilities, labels, cfg.top_k, cfg.calibration_bins)

    candidate, cand_report = score(candidate_model_uri)
    champion, champ_report = score(champion_model_uri) if champion_model_uri else (None, None)
    correct = (cand_report["correct"], champ_report["correct"]) if champ_report else None
    decision = gate(candidate, champion, cfg, classes, correct)
    blessing = Blessing(
        decision.blessed,
        decision.reason,
        candidate,
        champion,
        decision.checks,
        {k: v for k, v in cand_report.items() if k != "correct"},
        None if champ_report is None else {k: v for k, v in champ_report.items() if k != "correct"},
    )
    storage.write_json(storage.join(output_uri, F.BLESSING_FILE), blessing.to_dict())
    storage.write_bytes(storage.join(output_uri, F.REPORT_FILE), markdown_report(blessing).encode())
    log.info("evaluate: %s", blessing.reason)
    return blessing
