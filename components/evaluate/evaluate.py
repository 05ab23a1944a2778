"""The evaluate step: candidate and champion on the same raw test examples, then the gate.

Both models are scored through their served signature on the raw encoded bytes,
so each uses its own embedded preprocessing, and the comparison holds even when
the champion was trained with a different transform. This module does the I/O (test
examples, models, the blessing and report files); the metrics (``metrics``), the
decision (``gate``) and the report (``report``) are pure functions beside it.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from components.evaluate.gate import Blessing, check_threshold_classes, gate
from components.evaluate.metrics import evaluate_model
from components.evaluate.report import markdown_report
from visionpipe import features as F
from visionpipe import storage
from visionpipe.blessing import write_blessing
from visionpipe.config import Config
from visionpipe.serving import Classifier
from visionpipe.transform_graph import raw_feature_spec

log = logging.getLogger(__name__)


def load_test_examples(raw_examples_uri: str) -> tuple[list[bytes], list[str]]:
    """Encoded images and label names of ingest's test split."""
    files = storage.glob(F.split_pattern(raw_examples_uri, "test"))
    if not files:
        raise ValueError(f"{raw_examples_uri}: no test shards to evaluate on")
    spec = raw_feature_spec()
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


def run_evaluate(
    raw_examples_uri: str,
    candidate_model_uri: str,
    output_uri: str,
    config: Config,
    champion_model_uri: str | None = None,
) -> Blessing:
    """Scores candidate (and champion, if given) on the test split; writes the blessing.

    Writes ``blessing.json`` (decision, checks, metrics, reports), ``report.md`` and
    ``example_image`` (the first test image's bytes: the registered model's input example).

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
    write_blessing(output_uri, blessing.to_dict())
    storage.write_bytes(storage.join(output_uri, F.EXAMPLE_IMAGE_FILE), images[0])
    storage.write_bytes(storage.join(output_uri, F.REPORT_FILE), markdown_report(blessing).encode())
    log.info("evaluate: %s", blessing.reason)
    return blessing
