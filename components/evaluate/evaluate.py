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

from components.evaluate.gallery import GALLERY_HTML, GALLERY_PNG, write_gallery
from components.evaluate.gallery import contract as gallery_contract
from components.evaluate.gallery import pixels as model_pixels
from components.evaluate.gate import Blessing, check_threshold_classes, gate
from components.evaluate.label_noise import ISSUES_HTML, ISSUES_PNG
from components.evaluate.metrics import evaluate_model
from components.evaluate.report import (
    CONFUSION_PNG,
    ROBUSTNESS_PNG,
    confusion_png,
    markdown_report,
    robustness_png,
)
from components.evaluate.slices import (
    SLICES_FILE,
    SLICES_PNG,
    attributes_needed,
    check_slice_thresholds,
    score_slices,
    slices_png,
    values_of,
)
from visionpipe import features as F
from visionpipe import storage
from visionpipe.blessing import write_blessing
from visionpipe.config import ROBUSTNESS_PREFIX, Config
from visionpipe.drift import Observations, make_profile
from visionpipe.serving import Classifier
from visionpipe.slicing import SliceError, check_slice_names
from visionpipe.transform_graph import load_raw_split

log = logging.getLogger(__name__)


def model_labels(model_dir: str) -> list[str]:
    """The served model's class names in probability-column order."""
    path = storage.join(model_dir, F.TRAINING_RECORD)
    if not storage.exists(path):
        raise ValueError(f"{model_dir}: no {F.TRAINING_RECORD}; not a model this project exported")
    return list(storage.read_json(path)["labels"])


def classify(classifier: Classifier, images: list[bytes], batch_size: int):
    """``(probabilities, outputs)`` of a loaded classifier on ``images``, in batches."""
    outputs = [
        classifier.classify(images[start : start + batch_size])
        for start in range(0, len(images), batch_size)
    ]
    if not outputs:
        return np.zeros((0, 0)), []
    return np.concatenate([o["probabilities"] for o in outputs]).astype(np.float64), outputs


def score(
    model_dir: str, images: list[bytes], batch_size: int, monitored: bool = False
) -> tuple[np.ndarray, list[dict]]:
    """Probabilities of a served model on raw encoded bytes, and its calls' outputs.

    The outputs are the ``monitor`` signature's, when asked and the model has one;
    else the list is empty.
    """
    classifier = Classifier(model_dir, monitored=monitored)
    probabilities, outputs = classify(classifier, images, batch_size)
    return probabilities, outputs if classifier.monitored else []


def write_profile(output_uri: str, test, outputs: list[dict], labels, accuracy, config) -> bool:
    """The candidate's reference profile for monitoring (``visionpipe.drift.make_profile``).

    Returns False, writing nothing, for a model without the ``monitor`` signature.
    """
    if not outputs:
        log.warning("evaluate: the candidate has no monitor signature; no reference profile")
        return False
    m = config.monitor
    obs = Observations.from_outputs(outputs, test.names)
    obs.labels = np.array(test.labels, dtype=object)
    profile = make_profile(
        obs, labels, accuracy, m.reference_sample, m.ood_neighbours, m.ood_false_alarm
    )
    storage.write_json(storage.join(output_uri, F.PROFILE_FILE), profile)
    return True


def robustness(test, cfg, candidate_uri, champion_uri, candidate, champion, loaded) -> dict:
    """Adds ``accuracy_under_<variant>`` to both models' metrics; returns their correctness.

    ``loaded``: the models' ``Classifier`` by URI, already loaded for scoring.

    Returns:
        ``{metric: (candidate correct, champion correct)}`` per variant, for the gate's
        significance tests (empty without a champion).
    """
    from components.evaluate.robustness import correct_under, variant_images

    if not cfg.robustness or not test.images:
        return {}
    models = [(candidate_uri, candidate)]
    if champion_uri and champion is not None:
        models.append((champion_uri, champion))
    found: dict[str, list] = {}
    classifiers = {uri: loaded[uri].plain() for uri, _ in models}  # loaded once, for both
    labels = {uri: model_labels(uri) for uri, _ in models}
    for variant in cfg.robustness:
        images = variant_images(test.images, variant)
        metric = ROBUSTNESS_PREFIX + variant
        for uri, metrics in models:
            right = correct_under(
                lambda batch, uri=uri: classify(classifiers[uri], batch, cfg.batch_size)[0],
                labels[uri],
                test.labels,
                images,
            )
            metrics[metric] = float(right.mean())
            found.setdefault(metric, []).append(right.tolist())
    log.info(
        "evaluate: robustness %s",
        ", ".join(f"{v} {candidate[ROBUSTNESS_PREFIX + v]:.3f}" for v in cfg.robustness),
    )
    return {m: tuple(pair) for m, pair in found.items() if len(pair) == 2}


def audit_labels(
    raw_examples_uri: str,
    model_uri: str,
    output_uri: str,
    cfg,
    classifier: Classifier | None = None,
) -> tuple[str, int] | None:
    """Lists the training images whose label is probably wrong (``label_noise``).

    Returns the report's note and the number of suspects, or None when
    ``evaluate.label_noise`` is off, the examples have no train split, or the model has
    no ``monitor`` signature (no embedding to learn from). ``classifier``: the model,
    already loaded with ``monitored=True`` (loaded here when not given).
    """
    from components.evaluate.label_noise import find_issues, write_issues

    if not cfg.label_noise:
        return None
    if not storage.glob(F.split_pattern(raw_examples_uri, "train")):
        log.warning("evaluate: %s has no train split; labels not audited", raw_examples_uri)
        return None
    train = load_raw_split(raw_examples_uri, "train")
    classifier = classifier or Classifier(model_uri, monitored=True)
    if not classifier.monitored:
        log.warning("evaluate: the candidate has no monitor signature; labels not audited")
        return None
    _, outputs = classify(classifier, train.images, cfg.batch_size)
    embedding = Observations.from_outputs(outputs, train.names).embedding
    classes = sorted(set(train.labels))
    issues = find_issues(embedding, train.labels, classes, cfg.label_noise_folds)
    size, mode = gallery_contract(model_uri)
    note = write_issues(output_uri, issues, train, lambda b: model_pixels(b, size, mode))
    return note, issues.count


def run_evaluate(
    raw_examples_uri: str,
    candidate_model_uri: str,
    output_uri: str,
    config: Config,
    champion_model_uri: str | None = None,
) -> Blessing:
    """Scores candidate (and champion, if given) on the test split; writes the blessing.

    Writes ``blessing.json`` (decision, checks, metrics, reports), ``report.md``,
    ``confusion_matrix.png``, the gallery of the worst mistakes (``mistakes.png`` and
    ``mistakes.html``, unless ``evaluate.gallery_size`` is 0), ``robustness.png`` (both
    models on each ``evaluate.robustness`` variant), ``example_image`` (the
    first test image's bytes: the registered model's input example) and the candidate's
    ``reference_profile.json`` (what monitoring compares the served model's inputs with);
    with ``evaluate.slices``, ``slices.json`` and ``slices.png`` (every metric per slice);
    with ``evaluate.label_noise``, ``label_issues.csv``, ``.png`` and ``.html`` (the
    training images whose label is probably wrong).

    Raises:
        ThresholdError: a threshold names a class the test data does not have (before
            any model is scored).
        SliceError: a slice names a column the examples do not have, or a threshold a
            slice value no test example has (before any model is scored; for
            ``brightness``, once the candidate has measured it).
    """
    cfg = config.evaluate
    stats_path = storage.join(raw_examples_uri, F.STATS_FILE)
    if cfg.slices and storage.exists(stats_path):
        attributes = storage.read_json(stats_path).get("attributes", [])
        check_slice_names(raw_examples_uri, cfg.slices, attributes)
    test = load_raw_split(raw_examples_uri, "test", attributes=attributes_needed(cfg.slices))
    truth = test.labels
    classes = sorted(set(truth))
    check_threshold_classes(cfg, classes)
    values = values_of(cfg, test)  # all but brightness, which the candidate's outputs give
    check_slice_thresholds(cfg, values)

    def scored(model_uri: str, classifier: Classifier):
        probabilities, outputs = classify(classifier, test.images, cfg.batch_size)
        outputs = outputs if classifier.monitored else []
        labels = model_labels(model_uri)
        metrics, report = evaluate_model(
            truth, probabilities, labels, cfg.top_k, cfg.calibration_bins
        )
        return metrics, report, probabilities, labels, outputs

    monitored = Classifier(candidate_model_uri, monitored=True)  # for the audit too
    loaded = {candidate_model_uri: monitored}  # every model is loaded once (1.6 s each)
    if champion_model_uri:
        loaded[champion_model_uri] = Classifier(champion_model_uri)
    candidate, cand_report, cand_probabilities, cand_labels, outputs = scored(
        candidate_model_uri, monitored
    )
    if "brightness" in cfg.slices:
        if not outputs:
            raise SliceError(
                f"evaluate.slices names brightness, but {candidate_model_uri} has no "
                "monitor signature to measure it"
            )
        brightness = Observations.from_outputs(outputs, test.names).properties["brightness"]
        values = values_of(cfg, test, brightness)
        check_slice_thresholds(cfg, values)
    sliced = score_slices(cfg, values, truth, cand_probabilities, cand_labels)
    champion, champ_report = (
        scored(champion_model_uri, loaded[champion_model_uri])[:2]
        if champion_model_uri
        else (None, None)
    )
    correct = (
        {"accuracy": (cand_report["correct"], champ_report["correct"])} if champ_report else {}
    )
    under = robustness(
        test, cfg, candidate_model_uri, champion_model_uri, candidate, champion, loaded
    )
    if champion is not None:
        correct.update(under)
    decision = gate(candidate, champion, cfg, classes, correct or None, sliced)
    audit = audit_labels(raw_examples_uri, candidate_model_uri, output_uri, cfg, monitored)
    blessing = Blessing(
        decision.blessed,
        decision.reason,
        candidate,
        champion,
        decision.checks,
        {k: v for k, v in cand_report.items() if k != "correct"},
        None if champ_report is None else {k: v for k, v in champ_report.items() if k != "correct"},
        decision.slices,
        None if audit is None else audit[1],
    )
    write_blessing(output_uri, blessing.to_dict())
    write_profile(output_uri, test, outputs, cand_labels, candidate["accuracy"], config)
    storage.write_bytes(storage.join(output_uri, F.EXAMPLE_IMAGE_FILE), test.images[0])
    storage.write_bytes(
        storage.join(output_uri, CONFUSION_PNG), confusion_png(blessing.candidate_report)
    )
    gallery = None
    if cfg.gallery_size:
        note = write_gallery(
            output_uri, candidate_model_uri, test, cand_probabilities, cand_labels, cfg.gallery_size
        )
        gallery = (note, GALLERY_PNG, GALLERY_HTML)
    chart = robustness_png(blessing)
    if chart is not None:
        storage.write_bytes(storage.join(output_uri, ROBUSTNESS_PNG), chart)
    slice_chart = slices_png(blessing.slices)
    if slice_chart is not None:
        storage.write_bytes(storage.join(output_uri, SLICES_PNG), slice_chart)
        storage.write_json(storage.join(output_uri, SLICES_FILE), blessing.slices)
    report = markdown_report(
        blessing,
        CONFUSION_PNG,
        gallery,
        ROBUSTNESS_PNG if chart else None,
        (cfg.min_slice_examples, SLICES_PNG if slice_chart else None),
        None if audit is None else (audit[0], ISSUES_PNG, ISSUES_HTML),
    )
    storage.write_bytes(storage.join(output_uri, F.REPORT_FILE), report.encode())
    log.info("evaluate: %s", blessing.reason)
    return blessing
