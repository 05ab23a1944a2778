"""Exporting the served model: raw image bytes in, class names, ids and probabilities out.

The tf.Transform graph is inside the SavedModel, so serving runs exactly the
preprocessing that training saw: training and serving cannot skew. Two signatures:

- ``serving_default``: ``image_bytes``, a batch of encoded images (JPEG, PNG, GIF, BMP,
  WebP is not decoded by TensorFlow), through the transform graph. TF Serving's REST
  API accepts it as ``{"instances": [{"b64": "..."}]}``.
- ``serve_pixels``: ``images``, a batch of decoded uint8 ``[batch, h, w, 3]`` images,
  resized by the same function the transform graph uses; for batch jobs that already
  hold pixels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from visionpipe import features as F
from visionpipe.pixels import resize_batch
from visionpipe.transform_graph import TransformGraph

PIXELS_SIGNATURE = "serve_pixels"
PIXELS_INPUT = "images"


class ServingModule(tf.Module):
    """The exported object: the classifier, the transform layer and the class names."""

    def __init__(self, model: keras.Model, graph: TransformGraph) -> None:
        super().__init__(name="visionpipe_serving")
        self.model = model
        self.transform_layer = graph.output.transform_features_layer()
        self.class_names = tf.constant(graph.labels, dtype=tf.string)
        self._size = int(graph.statistics["image_size"])
        self._mode = str(graph.statistics["resize_mode"])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT)])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies a batch of encoded images."""
        transformed = self.transform_layer({F.IMAGE_ENCODED: image_bytes})
        return self._classify(tf.cast(transformed[F.TRANSFORMED_IMAGE], tf.uint8))

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=PIXELS_INPUT)]
    )
    def serve_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies a batch of decoded uint8 images of one size."""
        return self._classify(resize_batch(images, self._size, self._mode))

    def _classify(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.model(tf.cast(pixels, tf.float32), training=False)
        probabilities = tf.cast(probabilities, tf.float32)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "class_name": tf.gather(self.class_names, class_id),
            "class_id": class_id,
            "probabilities": probabilities,
        }


def export_serving_model(model: keras.Model, graph: TransformGraph, export_dir: str) -> str:
    """Writes a TF Serving–ready SavedModel with both signatures."""
    module = ServingModule(model, graph)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            F.SERVING_SIGNATURE: module.serve_bytes,
            PIXELS_SIGNATURE: module.serve_pixels,
        },
    )
    return export_dir
