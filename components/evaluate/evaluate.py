"""The evaluate step: candidate and champion on the same raw test examples, then the gate.

Both models are scored through their served signature on the raw encoded bytes,
so each uses its own embedded preprocessing, and the comparison holds even when
the champion was trained with a different transform.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import Config, EvaluateConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One condition of the gate, with the values it compared."""

    name: str
    passed: bool
    value: float
    threshold: float


@dataclass(frozen=True)
class Blessing:
    """The gate's decision, every check, and a one-line reason."""

    blessed: bool
    reason: str
    candidate: dict[str, float]
    champion: dict[str, float] | None
    checks: list[Check] = field(default_factory=list)

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


def predict_labels(model_dir: str, images: list[bytes], batch_size: int) -> list[str]:
    """Class names predicted by a served model from raw encoded bytes."""
    serve = tf.saved_model.load(model_dir).signatures[F.SERVING_SIGNATURE]
    names: list[str] = []
    for start in range(0, len(images), batch_size):
        out = serve(**{F.SERVING_INPUT: tf.constant(images[start : start + batch_size])})
        names.extend(v.decode() for v in out["class_name"].numpy())
    return names


def classification_metrics(truth: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy and macro-averaged F1 over the classes present in ``truth``."""
    y = np.asarray(truth, dtype=object)
    p = np.asarray(predicted, dtype=object)
    f1s = []
    for cls in sorted(set(truth)):
        tp = float(np.sum((p == cls) & (y == cls)))
        fp = float(np.sum((p == cls) & (y != cls)))
        fn = float(np.sum((p != cls) & (y == cls)))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return {
        "accuracy": float(np.mean(y == p)) if len(y) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "examples": float(len(y)),
    }


def gate(
    candidate: dict[str, float], champion: dict[str, float] | None, cfg: EvaluateConfig
) -> Blessing:
    """Blesses the candidate if it meets the threshold and is not worse than the champion."""
    checks = [
        Check(
            "accuracy >= min_accuracy",
            candidate["accuracy"] >= cfg.min_accuracy,
            candidate["accuracy"],
            cfg.min_accuracy,
        )
    ]
    if champion is not None:
        floor = champion["accuracy"] - cfg.champion_tolerance
        checks.append(
            Check(
                "accuracy >= champion accuracy - tolerance",
                candidate["accuracy"] >= floor,
                candidate["accuracy"],
                floor,
            )
        )
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "not blessed: " + "; ".join(
            f"{c.name} failed ({c.value:.4f} vs {c.threshold:.4f})" for c in failed
        )
    elif champion is None:
        reason = (
            f"blessed: accuracy {candidate['accuracy']:.4f} >= {cfg.min_accuracy}; no champion yet"
        )
    else:
        reason = (
            f"blessed: accuracy {candidate['accuracy']:.4f} >= {cfg.min_accuracy} and "
            f"not worse than the champion's {champion['accuracy']:.4f}"
        )
    return Blessing(not failed, reason, candidate, champion, checks)


def run_evaluate(
    raw_examples_uri: str,
    candidate_model_uri: str,
    output_uri: str,
    config: Config,
    champion_model_uri: str | None = None,
) -> Blessing:
    """Scores candidate (and champion, if given) on the test split; writes ``blessing.json``.

    Args:
        raw_examples_uri: ingest's output (the test split is read from it).
        candidate_model_uri: the trained serving SavedModel.
        output_uri: directory for ``blessing.json``.
        config: the validated configuration (``evaluate`` section).
        champion_model_uri: the current champion's SavedModel, or None when there is none.

    Returns:
        The blessing (decision, checks, metrics of both models).
    """
    images, truth = load_test_examples(raw_examples_uri)
    batch = config.evaluate.batch_size
    candidate = classification_metrics(truth, predict_labels(candidate_model_uri, images, batch))
    champion = None
    if champion_model_uri:
        champion = classification_metrics(truth, predict_labels(champion_model_uri, images, batch))
    blessing = gate(candidate, champion, config.evaluate)
    storage.write_json(storage.join(output_uri, F.BLESSING_FILE), blessing.to_dict())
    log.info("evaluate: %s", blessing.reason)
    return blessing


def read_blessing(blessing_uri: str) -> dict:
    """The blessing written by ``run_evaluate``."""
    return storage.read_json(storage.join(blessing_uri, F.BLESSING_FILE))
