"""Label-noise suspicion: the training images whose label is probably wrong.

Confident learning (Northcutt et al., 2021; ``cleanlab.filter.find_label_issues``) needs
out-of-sample predicted probabilities for every training image. Training the network K
times for out-of-fold predictions would cost K trainings, so this follows cleanlab's own
recipe for that case: the candidate's embedding of each training image (the penultimate
layer, as its ``monitor`` signature gives it) and a logistic regression fitted by
``cross_val_predict`` over ``evaluate.label_noise_folds`` stratified folds
(scikit-learn). Each image's probabilities then come from a model that never saw it.

What comes out: the suspects ranked by cleanlab's self-confidence (the out-of-fold
probability of the given label; lowest first), each with the suggested label (the
out-of-fold argmax), as ``label_issues.csv`` (``path,label,suggested,label_quality``),
and a thumbnail gallery (``label_issues.png``, ``label_issues.html``) linked from the
report. ``visionpipe relabel`` turns the CSV into a list a person corrects and feeds back.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np

from visionpipe import storage

log = logging.getLogger(__name__)

ISSUES_CSV = "label_issues.csv"
ISSUES_PNG = "label_issues.png"
ISSUES_HTML = "label_issues.html"
COLUMNS = ("path", "label", "suggested", "label_quality")
_SHOWN = 48  # the gallery shows the most suspect ones; the CSV lists every one


@dataclass(frozen=True)
class LabelIssues:
    """The suspects among ``examined`` training images, most suspect first."""

    examined: int
    indices: list[int]
    suggested: list[str]
    quality: list[float]  # out-of-fold probability of the given label
    confidence: list[float]  # out-of-fold probability of the suggested label
    folds: int

    @property
    def count(self) -> int:
        """How many training images are suspected."""
        return len(self.indices)


def find_issues(
    embeddings: np.ndarray, labels: list[str], classes: list[str], folds: int
) -> LabelIssues:
    """Confident learning on out-of-fold probabilities of a classifier on the embeddings.

    Args:
        embeddings: ``[n, dims]`` of the training images.
        labels: each image's given label (every one in ``classes``).
        classes: the class names, in the order the suggestions are drawn from.
        folds: cross-validation folds; fewer when the smallest class has fewer images.

    Returns:
        The suspects; none when a class has fewer than 2 images (no folds possible).
    """
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels])
    smallest = int(np.bincount(y, minlength=len(classes)).min()) if len(y) else 0
    k = min(folds, smallest)
    if k < 2 or len(set(y.tolist())) < 2:
        return LabelIssues(len(y), [], [], [], [], 0)
    probabilities = cross_val_predict(
        LogisticRegression(max_iter=2000),
        embeddings,
        y,
        cv=StratifiedKFold(k, shuffle=True, random_state=0),
        method="predict_proba",
    )
    ranked = find_label_issues(
        y, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    ranked = [int(i) for i in ranked]
    return LabelIssues(
        len(y),
        ranked,
        [classes[int(probabilities[i].argmax())] for i in ranked],
        [float(probabilities[i, y[i]]) for i in ranked],
        [float(probabilities[i].max()) for i in ranked],
        k,
    )


def write_issues(output_uri: str, issues: LabelIssues, split, pixels) -> str:
    """Writes the CSV and the gallery under ``output_uri``; returns the report's note.

    Args:
        output_uri: evaluate's output directory.
        issues: ``find_issues``'s result.
        split: the training split (``RawSplit``) the indices point into.
        pixels: ``callable(bytes) -> uint8 [h, w, 3]``, the image as the model saw it.
    """
    from trainer.overlays import Explained, gallery_html, gallery_png

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, suggested, quality in zip(issues.indices, issues.suggested, issues.quality, strict=True):
        writer.writerow([split.names[i], split.labels[i], suggested, f"{quality:.4f}"])
    storage.write_bytes(storage.join(output_uri, ISSUES_CSV), out.getvalue().encode())
    note = (
        f"{issues.count} of {issues.examined} training images have a label that is probably "
        f"wrong (confident learning on {issues.folds}-fold out-of-fold predictions)"
        if issues.folds
        else f"not checked: a class has fewer than 2 of the {issues.examined} training images"
    )
    shown = list(zip(issues.indices, issues.suggested, issues.confidence, strict=True))[:_SHOWN]
    items = [
        Explained(pixels(split.images[i]), None, suggested, p, split.labels[i], split.names[i])
        for i, suggested, p in shown
    ]
    if issues.count > len(items):
        note += f"; the {len(items)} most suspect are shown, {ISSUES_CSV} lists every one"
    words = ("labelled", "probably")
    title = "Training images whose label is probably wrong"
    empty = "no suspect labels"
    storage.write_bytes(
        storage.join(output_uri, ISSUES_PNG), gallery_png(items, title, words=words, empty=empty)
    )
    storage.write_bytes(
        storage.join(output_uri, ISSUES_HTML),
        gallery_html(items, title, note + ".", words=words, empty=empty),
    )
    log.info("evaluate: %s", note)
    return note


def read_issues(uri: str) -> list[dict[str, str]]:
    """The rows of a ``label_issues.csv`` (or of a corrected copy of one).

    Raises:
        ValueError: the file's header is not ``path,label,suggested,...``.
    """
    rows = list(csv.DictReader(io.StringIO(storage.read_text(uri))))
    header = list(rows[0]) if rows else []
    if rows and header[:3] != list(COLUMNS[:3]):
        raise ValueError(f"{uri}: expected columns path,label,suggested; found {header}")
    return rows
