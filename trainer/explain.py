"""Why the classifier decided as it did: Grad-CAM and integrated-gradients heat maps.

Both work on the served classifier (``assets.extra/classifier.keras`` in an exported
model), fed decoded pixels prepared by the model's preprocessing contract:

- **Grad-CAM** weighs the feature maps of a convolutional layer by the mean gradient
  of the class score, keeps the positive part and scales it up to the image. The layer
  is the last convolutional block's output, found by itself in the small CNN and in
  the keras.applications backbones (nested models), or named by the caller.
- **Integrated gradients** averages the input gradients along the straight path from
  a black image to the image; the map is the attribution's magnitude per pixel.

The class score is the logit of the final softmax layer (before the softmax, as
Grad-CAM prescribes): probabilities saturate near 1 and their gradients vanish.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from visionpipe.errors import UserError
from visionpipe.sections import EXPLAIN_METHODS

METHODS = EXPLAIN_METHODS  # the one list, in visionpipe.sections
_CONV = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)


class ExplainError(UserError, ValueError):
    """The model cannot be explained as asked (no such layer, no convolution, no method)."""


@dataclass(frozen=True)
class FeatureLayer:
    """A layer whose 4-D output Grad-CAM weighs; ``container`` is the nested model holding it."""

    name: str
    container: str | None  # None: a layer of the classifier itself
    shape: tuple


def _walk(model: keras.Model, container: str | None = None):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer, layer.name)
        else:
            yield layer, container


def _rank4(layer) -> tuple | None:
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None
    return shape if len(shape) == 4 else None


def feature_layer(classifier: keras.Model, name: str | None = None) -> FeatureLayer:
    """The layer Grad-CAM reads: ``name``, or the last convolutional block's output.

    The block's output is the last layer after the last convolution that keeps its
    shape (batch normalisation, activation, a residual add), so the map is the one the
    classifier pools.

    Raises:
        ExplainError: ``name`` is not a layer of the classifier (nested ones included),
            its output is not a 4-D feature map, or the classifier has no convolution.
    """
    layers = list(_walk(classifier))
    if name is not None:
        for layer, container in layers:
            if layer.name == name:
                shape = _rank4(layer)
                if shape is None:
                    raise ExplainError(
                        f"layer {name!r} does not output a 4-D feature map; Grad-CAM needs "
                        f"one (try {feature_layer(classifier).name!r})"
                    )
                return FeatureLayer(name, container, shape)
        convs = [layer.name for layer, _ in layers if isinstance(layer, _CONV)][-3:]
        raise ExplainError(
            f"layer {name!r} is not in the model; its last convolutional layers are "
            + ", ".join(convs)
        )
    last = max((i for i, (layer, _) in enumerate(layers) if isinstance(layer, _CONV)), default=None)
    if last is None:
        raise ExplainError("the model has no convolutional layer for Grad-CAM")
    layer, container = layers[last]
    shape = _rank4(layer)
    for after, where in layers[last + 1 :]:
        if where != container or _rank4(after) != shape:
            break
        layer = after
    return FeatureLayer(layer.name, container, shape)


def _head(classifier: keras.Model):
    """The final softmax Dense layer, whose pre-activation output is the class score."""
    last = classifier.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
        return last
    return None


def _feature_model(classifier: keras.Model, target: FeatureLayer) -> keras.Model:
    """A model from pixels to ``[feature map, scores]`` (logits when the head allows)."""
    head = _head(classifier)
    if target.container is None:
        features = classifier.get_layer(target.name).output
        end = head.input if head is not None else classifier.output
        return keras.Model(classifier.inputs, [features, end])
    nested = classifier.get_layer(target.container)
    inner = keras.Model(nested.inputs, [nested.get_layer(target.name).output, nested.output])
    inputs = keras.Input(shape=classifier.input_shape[1:], dtype=classifier.inputs[0].dtype)
    x, features = inputs, None
    for layer in classifier.layers[1:]:  # the family's classifiers are a chain of layers
        if layer is head:
            break
        if layer is nested:
            features, x = inner(x)
        else:
            x = layer(x)
    return keras.Model(inputs, [features, x if head is not None else classifier(inputs)])


def _scores(outputs, head) -> tf.Tensor:
    if head is None:  # probabilities: their log keeps the gradient alive near 1
        return tf.math.log(tf.cast(outputs, tf.float32) + 1e-7)
    kernel = tf.cast(head.kernel, tf.float32)
    return tf.matmul(tf.cast(outputs, tf.float32), kernel) + tf.cast(head.bias, tf.float32)


def gradcam(
    classifier: keras.Model,
    pixels: np.ndarray,
    class_ids: np.ndarray,
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM maps ``[n, size, size]`` in [0, 1] for each image's class in ``class_ids``.

    Args:
        classifier: the served classifier.
        pixels: ``[n, size, size, 3]`` pixels (0-255), as the preprocessing contract gives.
        class_ids: the class explained for each image (usually the predicted one).
        layer: the feature layer's name; the last convolutional block when None.
    """
    target = feature_layer(classifier, layer)
    model = _feature_model(classifier, target)
    head = _head(classifier)
    x = tf.convert_to_tensor(np.asarray(pixels, np.float32))
    ids = tf.convert_to_tensor(np.asarray(class_ids, np.int64))
    with tf.GradientTape() as tape:
        features, outputs = model(x, training=False)
        tape.watch(features)
        score = tf.gather(_scores(outputs, head), ids, batch_dims=1)
    grads = tf.cast(tape.gradient(score, features), tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
    size = pixels.shape[1:3]
    cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
    return _normalise(cam.numpy())


def integrated_gradients(
    classifier: keras.Model,
    pixels: np.ndarray,
    class_ids: np.ndarray,
    steps: int = 32,
) -> np.ndarray:
    """Integrated-gradients maps ``[n, size, size]`` in [0, 1], from a black baseline."""
    head = _head(classifier)
    scorer = classifier if head is None else keras.Model(classifier.inputs, head.input)
    alphas = tf.linspace(0.0, 1.0, steps + 1)[:, None, None, None]
    maps = []
    for image, class_id in zip(np.asarray(pixels, np.float32), class_ids, strict=True):
        path = alphas * tf.convert_to_tensor(image)[None]  # baseline: black (zeros)
        with tf.GradientTape() as tape:
            tape.watch(path)
            score = _scores(scorer(path, training=False), head)[:, int(class_id)]
        grads = tf.cast(tape.gradient(score, path), tf.float32).numpy()
        mean = (grads[:-1] + grads[1:]).mean(axis=0) / 2  # trapezoidal rule
        maps.append(np.abs(image * mean).sum(axis=-1))
    return _normalise(np.stack(maps), clip_percentile=99.0)


def explain(
    classifier: keras.Model,
    pixels: np.ndarray,
    class_ids: np.ndarray,
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """Heat maps by ``method`` (``gradcam`` or ``integrated_gradients``)."""
    if method == "gradcam":
        return gradcam(classifier, pixels, class_ids, layer)
    if method == "integrated_gradients":
        return integrated_gradients(classifier, pixels, class_ids)
    raise ExplainError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")


def _normalise(maps: np.ndarray, clip_percentile: float | None = None) -> np.ndarray:
    maps = np.maximum(np.asarray(maps, np.float32), 0.0)
    flat = maps.reshape(len(maps), -1)
    if clip_percentile is None:
        top = flat.max(axis=1)
    else:
        top = np.percentile(flat, clip_percentile, axis=1)
    top = np.where(top > 0, top, 1.0)[:, None, None]
    return np.clip(maps / top, 0.0, 1.0)
