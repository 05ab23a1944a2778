"""The MLflow pyfunc model of a visionpipe classifier ("models from code").

MLflow copies this file into every registered model (``python_model``), so it stands
alone: it imports MLflow, pandas, NumPy and TensorFlow, and a server built from the
model (``mlflow models serve``, ``build-docker``, a Spark UDF) needs only the model's
own requirements. Where visionpipe is installed too (``visionpipe serve``, or
``mlflow models serve --env-manager local`` in its environment), every answered image
is appended to the prediction log (``visionpipe.predlog``) as ``visionpipe predict``
would, by the config in ``$VISIONPIPE_CONFIG`` (default: the defaults) under
``$VISIONPIPE_HOME``; without visionpipe it answers the same and logs nothing, and says
so once.

Input: a DataFrame with an ``image`` column of encoded image bytes (JPEG, PNG, GIF, BMP
or WebP). Over REST the column is sent as base64 strings, which MLflow's scoring server
decodes because the signature types it ``binary``; called in-process, a ``str`` value is
taken as base64 too. Output: one row per image with ``class_name``, ``class_id``,
``probability`` (the predicted class's), ``probabilities`` (every class's, in the order
of the model metadata's ``labels``) and ``error`` ("" when answered): a row that is not
an image, or whose header declares more pixels than the model's bound, gets its reason
there and ``class_id`` -1, and the other rows are answered, in model calls of at most
the model's pixel bound in all (the headers are read first, through the model's
``declared_sizes`` signature, which decodes nothing). A request over the model's
limits (``max_rows`` images or ``max_request_bytes`` of images, recorded when the model
was exported) is refused whole with HTTP 400, before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii

import mlflow.pyfunc
from mlflow.exceptions import MlflowException

INPUT = "image"
SAVED_MODEL = "saved_model"  # the artifact: the SavedModel the TF Serving layout holds
# Request limits of models exported before they were recorded (``request_limits`` in the
# training record's preprocessing contract: ``predict.max_request_images`` and
# ``predict.max_request_bytes`` when the model was exported).
LIMITS = {"max_rows": 256, "max_request_bytes": 64 * 1024 * 1024}
NOT_AN_IMAGE = "not an image the model can decode (JPEG, PNG, GIF, BMP or WebP)"


class VisionpipeClassifier(mlflow.pyfunc.PythonModel):
    """The served SavedModel's ``serving_default`` signature behind MLflow's pyfunc API."""

    def load_context(self, context) -> None:
        """Loads the SavedModel once per process, and the request limits."""
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(context.artifacts[SAVED_MODEL])
        self._serve = self._loaded.signatures["serving_default"]
        # Models exported before it lack it: their graph's own check still refuses bombs.
        self._headers = self._loaded.signatures.get("declared_sizes")
        self._limits = _limits(context.artifacts[SAVED_MODEL])
        self._log = _prediction_log(self._loaded, context.artifacts[SAVED_MODEL])
        if self._log is not None:  # the same answers, and what the log records
            self._serve = self._loaded.signatures["monitor"]

    def predict(self, context, model_input, params=None):
        """Classifies each row's image; a row that cannot be answered gets its error."""
        import pandas as pd

        values = _column(model_input)
        self._check_limits(values)
        rows: list[dict] = [{} for _ in values]
        images: list[tuple[int, bytes]] = []
        for row, value in enumerate(values):
            data, error = _as_bytes(value)
            if error:
                rows[row] = _failed(error)
            else:
                images.append((row, data))
        for calls in self._calls(images, rows):
            for row, answer in self._classify(calls):
                rows[row] = answer
        columns = ["class_name", "class_id", "probability", "probabilities", "error"]
        return pd.DataFrame(rows, columns=columns)

    def _check_limits(self, values: list) -> None:
        limits = self._limits
        if len(values) > limits["max_rows"]:
            raise MlflowException.invalid_parameter_value(
                f"request has {len(values)} images; this model answers at most "
                f"{limits['max_rows']} per request (max_rows)"
            )
        size = sum(len(v) for v in values if isinstance(v, bytes | bytearray | str))
        if size > limits["max_request_bytes"]:
            raise MlflowException.invalid_parameter_value(
                f"request holds {size} bytes of images; this model takes at most "
                f"{limits['max_request_bytes']} per request (max_request_bytes)"
            )

    def _calls(self, images: list[tuple[int, bytes]], rows: list[dict]):
        """The images in model calls of at most the model's pixel bound in all.

        Each header is read first (the model's ``declared_sizes`` signature, which decodes
        nothing); a row that is no image, or declares more than the bound, is answered
        with its error here and never decoded.
        """
        if self._headers is None or not images:
            if images:
                yield images
            return
        declared, bound = self._declared(images)
        call, total = [], 0
        for (row, data), found in zip(images, declared, strict=True):
            if isinstance(found, str):
                rows[row] = _failed(found)
                continue
            if call and total + found > bound:
                yield call
                call, total = [], 0
            call.append((row, data))
            total += found
        if call:
            yield call

    def _declared(self, images: list[tuple[int, bytes]]) -> tuple[list, int]:
        """Per image its declared pixels, or why it must not be decoded; and the bound.

        The bound is 0 only when no header could be read (then no image is decoded).
        """
        tf = self._tf
        try:
            out = self._headers(image_bytes=tf.constant([d for _, d in images], dtype=tf.string))
        except tf.errors.InvalidArgumentError:  # a JPEG without a frame header: find it
            if len(images) == 1:
                return [NOT_AN_IMAGE], 0
            each = [self._declared([one]) for one in images]
            return [found[0] for found, _ in each], max(bound for _, bound in each)
        values = {k: v.numpy() for k, v in out.items()}
        found = []
        for i in range(len(images)):
            fmt = values["format"][i].decode()
            height, width = int(values["height"][i]), int(values["width"][i])
            frames, bound = int(values["frames"][i]), int(values["max_pixels"][i])
            if fmt == "unknown":
                found.append(NOT_AN_IMAGE)
            elif height * width * frames > bound:
                shown = f" x {frames} frames" if frames > 1 else ""
                found.append(
                    f"{fmt} declares {width}x{height} pixels{shown}, over the model's bound of "
                    f"{bound} (a decompression bomb, or too large to serve)"
                )
            else:
                found.append(height * width * frames)
        return found, int(values["max_pixels"][0])

    def _classify(self, images: list[tuple[int, bytes]]):
        """``(row, answer)`` per image: the batch in one call, one by one if that fails."""
        if not images:
            return
        tf = self._tf
        try:
            out = self._serve(image_bytes=tf.constant([d for _, d in images], dtype=tf.string))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            if len(images) == 1:
                yield images[0][0], _failed(NOT_AN_IMAGE)
                return
            for one in images:  # a decoder refused a row: find it
                yield from self._classify([one])
            return
        if self._log is not None:
            import hashlib

            values = {k: v.numpy() for k, v in out.items()}
            hashes = [hashlib.sha256(d).hexdigest() for _, d in images]
            self._log.add_outputs(
                values, list(range(len(images))), hashes, None, [d for _, d in images]
            )
        probabilities = out["probabilities"].numpy().astype(float)
        ids = out["class_id"].numpy()
        names = out["class_name"].numpy()
        for i, (row, _) in enumerate(images):
            yield (
                row,
                {
                    "class_name": names[i].decode(),
                    "class_id": int(ids[i]),
                    "probability": float(probabilities[i][ids[i]]),
                    "probabilities": list(probabilities[i]),
                    "error": "",  # not None: MLflow's JSON would make it NaN
                },
            )


def _prediction_log(loaded, saved_model_dir: str):
    """The prediction log of this server, or None (off, or no visionpipe installed here)."""
    import logging
    import os

    if "monitor" not in loaded.signatures:
        return None
    try:
        from visionpipe.config import load_config
        from visionpipe.predlog import open_log
    except ImportError:
        logging.getLogger(__name__).warning(
            "visionpipe is not installed where this model is served: predictions are not logged"
        )
        return None
    config = load_config(os.environ.get("VISIONPIPE_CONFIG") or None)
    return open_log(config, saved_model_dir, "pyfunc", background=True)


def _limits(saved_model_dir: str) -> dict[str, int]:
    """The request limits the model was exported with (its training record), else ``LIMITS``."""
    import json
    import os

    record = os.path.join(saved_model_dir, "assets.extra", "training.json")
    serving = {}
    if os.path.exists(record):
        with open(record) as f:
            serving = json.load(f).get("preprocessing", {}).get("request_limits", {})
    return {k: int(serving.get(k, v)) for k, v in LIMITS.items()}


def _failed(error: str) -> dict:
    # No None: MLflow's JSON would write NaN, which is not JSON.
    return {
        "class_name": "",
        "class_id": -1,
        "probability": 0.0,
        "probabilities": [],
        "error": error,
    }


def _column(model_input):
    """The image values of a DataFrame (``image`` column), a dict or a list."""
    if hasattr(model_input, "columns"):
        if INPUT not in model_input.columns:
            raise MlflowException.invalid_parameter_value(
                f"input: expected a column {INPUT!r} of encoded images; "
                f"got columns {list(model_input.columns)}"
            )
        return list(model_input[INPUT])
    if isinstance(model_input, dict):
        return list(model_input.get(INPUT, []))
    return list(model_input)


def _as_bytes(value) -> tuple[bytes, str]:
    """The row's image bytes, or why the row holds none."""
    if isinstance(value, bytes | bytearray):
        return (bytes(value), "") if value else (b"", "empty image")
    if isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return b"", f"{INPUT!r} is a string that is not base64"
        return (data, "") if data else (b"", "empty image")
    return b"", f"{INPUT!r} must be encoded image bytes (or base64); got {type(value).__name__}"


mlflow.models.set_model(VisionpipeClassifier())
