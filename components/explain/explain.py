"""``visionpipe explain``: per image, a PNG of the image with its heat map and prediction.

Every input is read and its header checked, and the layer resolved, before anything is
written. A file that cannot be explained (missing, not an image, or declaring more
pixels than the model takes) is reported with its reason, in the index and on the
console, and the others are explained; when none can be, that is one error and the
output folder is untouched.
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
from visionpipe.serving import DEFAULT_MAX_PIXELS, UNDECODABLE, check_images, read_file

INDEX_FILE = "explanations.json"


@dataclass(frozen=True)
class Explanation:
    """One image: its prediction and the picture written for it, or why there is none."""

    file: str
    class_name: str = ""
    probability: float = 0.0
    picture: str = ""
    error: str = ""


def read_images(
    files: list[str], size: int, mode: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, dict[int, str]]:
    """The pixels of the files that can be explained, and why each other one cannot.

    Each header is checked before decoding: an image declaring more than ``max_pixels``
    (the model's bound) is refused, never decoded. Returns ``(pixels, problems)``:
    pixels in file order for the good files, problems by file position.

    Raises:
        ExplainError: no files, or none of them can be explained (nothing is written).
    """
    if not files:
        raise ExplainError("no images to explain")
    pixels, problems = [], {}
    read = [read_file(path) for path in files]
    checked = iter(check_images([data for data, error in read if not error], max_pixels))
    for index, (data, error) in enumerate(read):
        if not error:
            error, _ = next(checked)
        image = decode_one(data, size, mode) if not error else None
        if image is None:
            problems[index] = error or UNDECODABLE
        else:
            pixels.append(image)
    if not pixels:
        first = min(problems)
        raise ExplainError(f"{files[first]}: {problems[first]}; nothing was written")
    return np.stack(pixels), problems


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
        ExplainError: an unknown method or layer, or no file that can be explained.

    Returns:
        One ``Explanation`` per file, in order; a file that could not be explained has
        its ``error`` and no picture.
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
    bound = int(contract.get("max_pixels", DEFAULT_MAX_PIXELS))
    pixels, problems = read_images(files, size, mode, bound)
    good = [f for i, f in enumerate(files) if i not in problems]
    probabilities = np.asarray(classifier.predict(pixels.astype(np.float32), verbose=0))
    class_ids = probabilities.argmax(axis=1)
    heat = explain(classifier, pixels, class_ids, method, layer)
    names = [n for i, n in enumerate(picture_names(files, method)) if i not in problems]
    explained, pictures = [], {}
    for path, name, image, row, class_id, h in zip(
        good, names, pixels, probabilities, class_ids, heat, strict=True
    ):
        item = Explained(image, h, labels[class_id], float(row[class_id]), name=path)
        pictures[name] = explanation_png(item, method)
        explained.append(
            Explanation(path, item.predicted, item.probability, storage.join(out_dir, name))
        )
    done = iter(explained)
    results = [
        Explanation(path, error=problems[i]) if i in problems else next(done)
        for i, path in enumerate(files)
    ]
    for name, png in pictures.items():  # all rendered: now write
        storage.write_bytes(storage.join(out_dir, name), png)
    index = {"method": method, "layer": used, "images": [asdict(r) for r in results]}
    storage.write_json(storage.join(out_dir, INDEX_FILE), index)
    return results
