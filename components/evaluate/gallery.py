"""The worst test mistakes, as a person would look at them: a PNG grid and an HTML page.

"Worst" is the most confident: the mistakes whose predicted class had the highest
probability come first. Each shows the image as the model saw it, its true and
predicted class, and the Grad-CAM map of the predicted class, so a reviewer sees what
the model looked at when it was wrong.
"""

from __future__ import annotations

import logging

import numpy as np

from trainer.explain import gradcam
from trainer.export import NotAVisionpipeModel, load_classifier, model_record
from trainer.overlays import Explained, gallery_html, gallery_png
from visionpipe import storage
from visionpipe.pixels import decode_one
from visionpipe.transform_graph import RawSplit

log = logging.getLogger(__name__)

GALLERY_PNG = "mistakes.png"
GALLERY_HTML = "mistakes.html"


def worst_mistakes(
    truth: list[str], probabilities: np.ndarray, labels: list[str], count: int
) -> list[int]:
    """Indices of up to ``count`` misclassified examples, most confident first."""
    if not len(truth) or count <= 0:
        return []
    predicted = probabilities.argmax(axis=1)
    wrong = [i for i, t in enumerate(truth) if labels[predicted[i]] != t]
    confidence = probabilities[np.arange(len(truth)), predicted]
    return sorted(wrong, key=lambda i: (-confidence[i], i))[:count]


def write_gallery(
    output_uri: str,
    model_dir: str,
    split: RawSplit,
    probabilities: np.ndarray,
    labels: list[str],
    count: int,
) -> str:
    """Writes ``mistakes.png`` and ``mistakes.html`` under ``output_uri``; returns a note.

    A model without its saved classifier (exported by an older visionpipe) gets the
    gallery without heat maps, and the note says so.
    """
    chosen = worst_mistakes(split.labels, probabilities, labels, count)
    predicted = probabilities.argmax(axis=1) if len(split.labels) else np.zeros(0, int)
    wrong = sum(labels[p] != t for p, t in zip(predicted, split.labels, strict=True))
    note = f"{wrong} of {len(split.labels)} test images misclassified"
    if chosen:
        note += f"; the {len(chosen)} most confident mistakes, with the Grad-CAM map of the "
        note += "predicted class."
    items: list[Explained] = []
    if chosen:
        try:
            size, mode = contract(model_dir)
            classifier = load_classifier(model_dir)
        except NotAVisionpipeModel as err:
            log.warning("evaluate: a gallery without heat maps: %s", err)
            size, mode, classifier = 128, "pad", None
            note = (
                f"{wrong} of {len(split.labels)} test images misclassified (no heat maps: {err})."
            )
        seen = np.stack([pixels(split.images[i], size, mode) for i in chosen])
        ids = predicted[chosen]
        heat = gradcam(classifier, seen, ids) if classifier is not None else [None] * len(ids)
        for n, i in enumerate(chosen):
            items.append(
                Explained(
                    seen[n],
                    heat[n],
                    labels[ids[n]],
                    float(probabilities[i, ids[n]]),
                    truth=split.labels[i],
                    name=split.names[i],
                )
            )
    title = "Worst test mistakes"
    png, page = gallery_png(items, title), gallery_html(items, title, note)
    storage.write_bytes(storage.join(output_uri, GALLERY_PNG), png)
    storage.write_bytes(storage.join(output_uri, GALLERY_HTML), page)
    return note


def contract(model_dir: str) -> tuple[int, str]:
    """The model's input side and resize mode; ``(128, "pad")`` for a model without one."""
    try:
        preprocessing = model_record(model_dir)["preprocessing"]
    except NotAVisionpipeModel:
        return 128, "pad"
    return int(preprocessing["image_size"]), str(preprocessing["resize_mode"])


def pixels(data: bytes, size: int, mode: str) -> np.ndarray:
    """The image as the model sees it (uint8 ``[size, size, 3]``)."""
    image = decode_one(data, size, mode)  # ingest kept only decodable images
    return image if image is not None else np.zeros((size, size, 3), np.uint8)
