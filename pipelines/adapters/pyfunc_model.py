"""The MLflow pyfunc model of a visionpipe classifier ("models from code").

MLflow copies this file into every registered model (``python_model``), so it stands
alone: it imports MLflow, pandas, NumPy and TensorFlow, nothing of visionpipe, and a
server built from the model (``mlflow models serve``, ``build-docker``, a Spark UDF)
needs only the model's own requirements.

Input: a DataFrame with an ``image`` column of encoded image bytes (JPEG, PNG, GIF or
BMP). Over REST the column is sent as base64 strings, which MLflow's scoring server
decodes because the signature types it ``binary``; called in-process, a ``str`` value is
taken as base64 too. Output: one row per image with ``class_name``, ``class_id``,
``probability`` (the predicted class's) and ``probabilities`` (every class's, in the
order of the model metadata's ``labels``). An image that cannot be decoded fails the
request with an error naming its row (HTTP 400 from the server), never the server.
"""

from __future__ import annotations

import base64
import binascii

import mlflow.pyfunc
from mlflow.exceptions import MlflowException

INPUT = "image"
SAVED_MODEL = "saved_model"  # the artifact: the SavedModel the TF Serving layout holds


class VisionpipeClassifier(mlflow.pyfunc.PythonModel):
    """The served SavedModel's ``serving_default`` signature behind MLflow's pyfunc API."""

    def load_context(self, context) -> None:
        """Loads the SavedModel once per process."""
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(context.artifacts[SAVED_MODEL])
        self._serve = self._loaded.signatures["serving_default"]

    def predict(self, context, model_input, params=None):
        """Classifies each row's image; a row that is not an image fails the request."""
        import pandas as pd

        images = [_as_bytes(value, row) for row, value in enumerate(_column(model_input))]
        if not images:
            return pd.DataFrame(columns=["class_name", "class_id", "probability", "probabilities"])
        tf = self._tf
        try:
            out = self._serve(image_bytes=tf.constant(images, dtype=tf.string))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            raise _bad_row(self._first_undecodable(images)) from None
        probabilities = out["probabilities"].numpy().astype(float)
        ids = out["class_id"].numpy()
        return pd.DataFrame(
            {
                "class_name": [v.decode() for v in out["class_name"].numpy()],
                "class_id": ids.astype("int64"),
                "probability": [float(p[i]) for p, i in zip(probabilities, ids, strict=True)],
                "probabilities": [list(p) for p in probabilities],
            }
        )

    def _first_undecodable(self, images: list[bytes]) -> int:
        tf = self._tf
        for row, data in enumerate(images):
            try:
                tf.io.decode_image(data, channels=3, expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                return row
        return -1


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


def _as_bytes(value, row: int) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MlflowException.invalid_parameter_value(
                f"row {row}: {INPUT!r} is a string that is not base64"
            ) from None
    raise MlflowException.invalid_parameter_value(
        f"row {row}: {INPUT!r} must be encoded image bytes (or base64); got {type(value).__name__}"
    )


def _bad_row(row: int) -> MlflowException:
    where = f"row {row}" if row >= 0 else "a row"
    return MlflowException.invalid_parameter_value(
        f"{where}: not an image the model can decode (JPEG, PNG, GIF or BMP)"
    )


mlflow.models.set_model(VisionpipeClassifier())
