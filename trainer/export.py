"""Exporting the served model: raw image bytes in, class names, ids and probabilities out.

The tf.Transform graph is inside the SavedModel, so serving runs exactly the
preprocessing that training saw: training and serving cannot skew.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_transform as tft

from visionpipe import features as F


class ServingModule(tf.Module):
    """The exported object: the Keras model, the transform layer and the class names."""

    def __init__(self, model: keras.Model, tft_output: tft.TFTransformOutput, labels: list[str]):
        super().__init__(name="visionpipe_serving")
        self.model = model
        self.transform_layer = tft_output.transform_features_layer()
        self.class_names = tf.constant(labels, dtype=tf.string)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=F.SERVING_INPUT)])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies a batch of encoded images (JPEG, PNG, GIF, BMP)."""
        transformed = self.transform_layer({F.IMAGE_ENCODED: image_bytes})
        probabilities = self.model(transformed[F.TRANSFORMED_IMAGE], training=False)
        probabilities = tf.cast(probabilities, tf.float32)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "class_name": tf.gather(self.class_names, class_id),
            "class_id": class_id,
            "probabilities": probabilities,
        }


def export_serving_model(
    model: keras.Model, tft_output: tft.TFTransformOutput, labels: list[str], export_dir: str
) -> str:
    """Writes a TF Serving–ready SavedModel with ``serving_default`` on raw bytes."""
    module = ServingModule(model, tft_output, labels)
    tf.saved_model.save(module, export_dir, signatures={F.SERVING_SIGNATURE: module.serve_bytes})
    return export_dir
