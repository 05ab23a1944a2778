"""``visionpipe explain``: per image, a PNG of the image with its heat map and prediction.

Every input is read, decoded and checked, and the layer resolved, before anything is
written: a bad input is one error naming it, and the output folder is untouched.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass

import numpy as np

from trainer.explain import METHODS, ExplainError, explain, feature_layer
from trainer.export import load_classifier, model_record
from trainer.overlays import Explained, explanation_png
from visionpipe import storage
from visionpipe.pixels import decode_one
from visionpipe.serving import DEFAULT_MAX_PIXELS, UNDECODABLE, check_image, read_file

INDEX_FILE = "explanations.json"


@dataclass(frozen=True)
class Explanation:
    """One explained image: its prediction and the picture written for it."""

    file: str
    class_name: str
    probability: float
    picture: str


def read_images(
    files: list[str], size: int, mode: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The files' pixels, prepared as the model's preprocessing contract says.

    Each header is checked before decoding: an image declaring more than ``max_pixels``
    (the model's bound) is refused, never decoded.

    Raises:
        ExplainError: a file is missing, empty, unreadable, not a decodable image, or
            declares more pixels than the model's bound.
    """
    if not files:
        raise ExplainError("no images to explain")
    pixels = []
    for path in files:
        data, error = read_file(path)
        if not error:
            error, _ = check_image(data, max_pixels)
        image = decode_one(data, size, mode) if not error else None
        if image is None:
            raise ExplainError(f"{path}: {error or UNDECODABLE}; nothing was written")
        pixels.append(image)
    return np.stack(pixels)


def picture_names(files: list[str], method: str) -> list[str]:
    """``<stem>.<method>.png`` per file; a repeated stem gets its position appended."""
    stems = [posixpath.splitext(posixpath.basename(f.rstrip("/")))[0] or "image" for f in files]
    names = []
    for index, stem in enumerate(stems):
        unique = stems.count(stem) == 1
        names.append(f"{stem}.{method}.png" if unique else f"{stem}-{index + 1}.{method}.png")
    return names


def run_explain(
    model_dir: str,
    files: list[str],
    out_dir: str,
    method: str = "gradcam",
    layer: str | None = None,
) -> list[Explanation]:
    """Explains each file's predicted class; writes one PNG per file and an index.

    Args:
        model_dir: an exported visionpipe model (SavedModel with its classifier).
        files: image files (local or object-store URIs).
        out_dir: where the pictures and ``explanations.json`` go.
        method: ``gradcam`` or ``integrated_gradients``.
        layer: Grad-CAM's feature layer; the last convolutional block when None.

    Raises:
        NotAVisionpipeModel: ``model_dir`` lacks the classifier or the training record.
        ExplainError: an unknown method or layer, or a file that cannot be explained.
    """
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if layer is not None and method != "gradcam":
        raise ExplainError("--layer applies to gradcam only")
    record = model_record(model_dir)
    contract = record["preprocessing"]
    labels = list(record["labels"])
    classifier = load_classifier(model_dir)
    used = feature_layer(classifier, layer).name if method == "gradcam" else None
    size, mode = int(contract["image_size"]), str(contract["resize_mode"])
    pixels = read_images(files, size, mode, int(contract.get("max_pixels", DEFAULT_MAX_PIXELS)))
    probabilities = np.asarray(classifier.predict(pixels.astype(np.float32), verbose=0))
    class_ids = probabilities.argmax(axis=1)
    heat = explain(classifier, pixels, class_ids, method, layer)
    results, pictures = [], {}
    for path, name, image, row, class_id, h in zip(
        files, picture_names(files, method), pixels, probabilities, class_ids, heat, strict=True
    ):
        item = Explained(image, h, labels[class_id], float(row[class_id]), name=path)
        pictures[name] = explanation_png(item, method)
        results.append(
            Explanation(path, item.predicted, item.probability, storage.join(out_dir, name))
        )
    for name, png in pictures.items():  # all rendered: now write
        storage.write_bytes(storage.join(out_dir, name), png)
    index = {"method": method, "layer": used, "images": [asdict(r) for r in results]}
    storage.write_json(storage.join(out_dir, INDEX_FILE), index)
    return results
