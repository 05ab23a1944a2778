"""Exporting the served model: raw image bytes in, class names, ids and probabilities out.

The tf.Transform graph is inside the SavedModel, so serving runs exactly the
preprocessing that training saw: training and serving cannot skew. Four signatures:

- ``serving_default``: ``image_bytes``, a batch of encoded images (JPEG, PNG, GIF, BMP
  or WebP), through the transform graph. TF Serving's REST API accepts it as
  ``{"instances": [{"b64": "..."}]}``. Before anything is decoded, every image's header
  is checked against the pixel bound set at export (``max_pixels``, recorded in the
  preprocessing contract): a request holding a decompression bomb is refused whole,
  with an error naming the first image over the bound, so every server of the model
  (TF Serving, ``mlflow models serve``, the CLI) is protected, not only the CLI.
- ``serve_pixels``: ``images``, a batch of decoded uint8 ``[batch, h, w, 3]`` images,
  resized by the same function the transform graph uses; for batch jobs that already
  hold pixels.
- ``declared_sizes``: ``image_bytes`` in, what each header declares out (format code,
  height, width, frames) with the model's bound: for a caller that answers per image
  and bounds the pixels of each call (the MLflow Model), decoding nothing.
- ``monitor``: ``image_bytes`` in, ``serving_default``'s outputs plus what monitoring
  compares (``visionpipe.profile``): the embedding, top-1 confidence, the header's
  format and size, and the pixel properties. The reference profile at evaluation and
  every logged prediction come from this one graph.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

import trainer.model  # noqa: F401 - registers the custom layers a saved classifier holds
from visionpipe import features as F
from visionpipe import storage
from visionpipe.errors import UserError
from visionpipe.pixels import (
    FORMAT_NAMES,
    check_and_declare,
    check_declared,
    declared_sizes,
    resize_batch,
)
from visionpipe.profile import image_properties, projection
from visionpipe.transform_graph import TransformGraph

PIXELS_SIGNATURE = "serve_pixels"
HEADERS_SIGNATURE = "declared_sizes"  # what each image's header declares; decodes nothing
MONITOR_SIGNATURE = F.MONITOR_SIGNATURE
PIXELS_INPUT = "images"
HEAD_LAYER = "probabilities"  # the classifier's last dense layer; its input is the embedding


def embedding_model(model: keras.Model) -> keras.Model:
    """The classifier with two outputs: its penultimate activations and its probabilities."""
    names = [layer.name for layer in model.layers]
    head = model.get_layer(HEAD_LAYER) if HEAD_LAYER in names else model.layers[-1]
    return keras.Model(model.inputs, [head.input, model.output], name="embedding_and_head")


class ServingModule(tf.Module):
    """The exported object: the classifier, the transform layer and the class names."""

    def __init__(self, model: keras.Model, graph: TransformGraph, max_pixels: int) -> None:
        super().__init__(name="visionpipe_serving")
        self._max_pixels = int(max_pixels)
        self.model = model
        self.transform_layer = graph.output.transform_features_layer()
        self.class_names = tf.constant(graph.labels, dtype=tf.string)
        self._size = int(graph.statistics["image_size"])
        self._mode = str(graph.statistics["resize_mode"])
        self.embedder = embedding_model(model)
        matrix = projection(int(self.embedder.outputs[0].shape[-1]))
        self._projection = None if matrix is None else tf.constant(matrix)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT)])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies a batch of encoded images, once no header declares too many pixels."""
        checked = check_declared(image_bytes, self._max_pixels)
        transformed = self.transform_layer({F.IMAGE_ENCODED: checked})
        return self._classify(tf.cast(transformed[F.TRANSFORMED_IMAGE], tf.uint8))

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=PIXELS_INPUT)]
    )
    def serve_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies a batch of decoded uint8 images of one size."""
        return self._classify(resize_batch(images, self._size, self._mode))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT)])
    def serve_headers(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Format, height, width and frames each header declares, and the model's bound."""
        declared = declared_sizes(image_bytes)
        return {
            "format": tf.gather(tf.constant(FORMAT_NAMES), declared[:, 0]),
            "height": declared[:, 1],
            "width": declared[:, 2],
            "frames": declared[:, 3],
            "max_pixels": tf.fill(tf.shape(image_bytes), tf.constant(self._max_pixels, tf.int64)),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT)])
    def serve_monitor(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """``serve_bytes``'s outputs, the embedding, the confidence and the image properties."""
        # The headers are parsed once: twice was a third of this signature's extra cost.
        checked, declared = check_and_declare(image_bytes, self._max_pixels)
        transformed = self.transform_layer({F.IMAGE_ENCODED: checked})
        pixels = tf.cast(transformed[F.TRANSFORMED_IMAGE], tf.uint8)
        embedding, probabilities = self.embedder(tf.cast(pixels, tf.float32), training=False)
        embedding = tf.cast(embedding, tf.float32)
        if self._projection is not None:
            embedding = tf.matmul(embedding, self._projection)
        out = self._outputs(tf.cast(probabilities, tf.float32))
        out.update(image_properties(pixels))
        out.update(
            {
                "embedding": embedding,
                "confidence": tf.reduce_max(out["probabilities"], axis=-1),
                "format": tf.gather(tf.constant(FORMAT_NAMES), declared[:, 0]),
                "height": declared[:, 1],
                "width": declared[:, 2],
            }
        )
        return out

    def _classify(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.model(tf.cast(pixels, tf.float32), training=False)
        return self._outputs(tf.cast(probabilities, tf.float32))

    def _outputs(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "class_name": tf.gather(self.class_names, class_id),
            "class_id": class_id,
            "probabilities": probabilities,
        }


def export_serving_model(
    model: keras.Model, graph: TransformGraph, export_dir: str, max_pixels: int
) -> str:
    """Writes a TF Serving–ready SavedModel with its four signatures.

    ``max_pixels`` bounds what one encoded image may declare (frames of a GIF counted).
    """
    module = ServingModule(model, graph, max_pixels)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            F.SERVING_SIGNATURE: module.serve_bytes,
            PIXELS_SIGNATURE: module.serve_pixels,
            HEADERS_SIGNATURE: module.serve_headers,
            MONITOR_SIGNATURE: module.serve_monitor,
        },
    )
    return export_dir


def preprocessing_contract(
    graph: TransformGraph, max_pixels: int, request_limits: dict[str, int] | None = None
) -> dict:
    """What the classifier expects of its input, for anything that feeds it pixels itself.

    The served SavedModel does this itself from encoded bytes; edge runtimes and
    explanations take decoded pixels, and must prepare them exactly so.
    """
    return {
        "image_size": int(graph.statistics["image_size"]),
        "resize_mode": str(graph.statistics["resize_mode"]),
        "channel_order": "RGB",
        "layout": "NHWC",
        "value_range": [0, 255],
        "normalisation": "inside the model (its first layer standardises 0-255 pixels)",
        "max_pixels": int(max_pixels),  # per encoded image, frames counted; refused above
        # What one request to the registered MLflow Model may hold (its pyfunc reads it).
        "request_limits": dict(request_limits or {}),
    }


def save_classifier(classifier: keras.Model, uri: str) -> None:
    """The classifier as a ``.keras`` file at ``uri`` (local or an object store)."""
    with tempfile.TemporaryDirectory(prefix="visionpipe-classifier-") as tmp:
        path = os.path.join(tmp, "classifier.keras")
        classifier.save(path)
        with open(path, "rb") as f:
            storage.write_bytes(uri, f.read())


class NotAVisionpipeModel(UserError, ValueError):
    """A model directory lacks what this project's exports hold."""


@contextlib.contextmanager
def naming(model_dir: str, given: str) -> Iterator[None]:
    """Errors about ``model_dir`` name the model as the user gave it.

    A ``models:/`` URI, say, rather than the temporary folder it was downloaded to.
    """
    try:
        yield
    except NotAVisionpipeModel as err:
        if given == model_dir:
            raise
        raise NotAVisionpipeModel(str(err).replace(model_dir, given)) from None


def load_classifier(model_dir: str) -> keras.Model:
    """The Keras classifier saved inside an exported model (``assets.extra/classifier.keras``).

    Raises:
        NotAVisionpipeModel: the model holds no classifier file (not a visionpipe model,
            or one exported before the classifier was kept beside it).
    """
    uri = storage.join(model_dir, F.CLASSIFIER_FILE)
    if not storage.exists(uri):
        raise NotAVisionpipeModel(
            f"{model_dir}: no {F.CLASSIFIER_FILE}; not a visionpipe model, or one exported "
            "before the classifier was kept in it (retrain it to explain or export it)"
        )
    with tempfile.TemporaryDirectory(prefix="visionpipe-classifier-") as tmp:
        path = os.path.join(tmp, "classifier.keras")
        with open(path, "wb") as f:
            f.write(storage.read_bytes(uri))
        return keras.saving.load_model(path, compile=False)


def model_record(model_dir: str) -> dict:
    """The training record of an exported model: labels, metrics, preprocessing contract.

    Raises:
        NotAVisionpipeModel: no training record, or one without the preprocessing
            contract (exported by an older visionpipe).
    """
    uri = storage.join(model_dir, F.TRAINING_RECORD)
    if not storage.exists(uri):
        raise NotAVisionpipeModel(f"{model_dir}: no {F.TRAINING_RECORD}; not a visionpipe model")
    record = storage.read_json(uri)
    if "preprocessing" not in record:
        raise NotAVisionpipeModel(
            f"{model_dir}: its {F.TRAINING_RECORD} has no preprocessing contract (exported "
            "by an older visionpipe); retrain it"
        )
    return record
