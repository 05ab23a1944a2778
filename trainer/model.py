"""The model family: one ``build_model(hp)`` shared by the tuner and the trainer.

Every hyperparameter is declared with ``hp`` so that the tuner can search it; its
default is the configured trainer value, so building from an empty
``HyperParameters`` gives exactly the configured model.

The training model is ``augmentation -> classifier``; only the classifier is served.
The classifier is ``Standardize -> (small CNN | keras.applications backbone) -> head``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import keras_tuner as kt

from visionpipe.config import TrainerConfig, TunerConfig
from visionpipe.errors import UserError
from visionpipe.sections import NAMED_WEIGHTS

log = logging.getLogger(__name__)

CLASSIFIER = "classifier"
BACKBONE = "backbone"
AUGMENTATION = "augmentation"

# keras.applications constructors and the input convention of their ImageNet weights:
# (mean, std, bgr) applied to 0-255 pixels. EfficientNet normalises inside the model.
_BACKBONES = {
    "mobilenet_v2": ("MobileNetV2", [127.5] * 3, [127.5] * 3, False),
    "efficientnet_b0": ("EfficientNetB0", [0.0] * 3, [1.0] * 3, False),
    "resnet50": ("ResNet50", [123.68, 116.779, 103.939], [1.0] * 3, True),
}


class WeightsError(UserError, ValueError):
    """Backbone weights were asked for and cannot be loaded; the message says which and why."""


def hyperparameter(hp: kt.HyperParameters, name: str, default, tuner: TunerConfig):
    """Declares ``name`` as a choice over the configured search space (default: fixed)."""
    cast = type(default)
    values = [cast(v) for v in tuner.search_space.get(name, [default])]
    return hp.Choice(name, values, default=default if default in values else values[0])


@keras.saving.register_keras_serializable(package="visionpipe")
class Standardize(keras.layers.Layer):
    """8-bit pixels to float, normalised per channel: ``(x - mean) / std``.

    The first layer of the served classifier: transformed examples store pixels as
    bytes, and the conversion happens here, in the trained and the served graph alike.
    ``bgr`` reverses the channels first (the convention of ResNet50's ImageNet weights).
    """

    def __init__(self, mean: list[float], std: list[float], bgr: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.bgr = bool(bgr)

    def call(self, inputs):
        """``(float(inputs) - mean) / std``, per channel."""
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.bgr:
            x = keras.ops.flip(x, axis=-1)
        mean = keras.ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def get_config(self) -> dict:
        """The statistics, so the layer is saved and restored with the model."""
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}


def build_model(
    hp: kt.HyperParameters,
    input_shape: tuple[int, int, int],
    num_classes: int,
    trainer: TrainerConfig,
    tuner: TunerConfig,
    mean: list[float],
    std: list[float],
    replicas: int = 1,
) -> keras.Model:
    """A compiled training model: augmentation layers, then the classifier.

    Args:
        hp: hyperparameters (keras-tuner); unset ones take the trainer config's values.
        input_shape: ``(height, width, 3)`` of the transformed images (8-bit pixels).
        num_classes: size of the label vocabulary.
        trainer: model, augmentation and optimiser settings.
        tuner: the search space.
        mean: per-channel pixel mean of the training split (transform statistics).
        std: per-channel pixel standard deviation of the training split.
        replicas: replicas in sync; the learning rate is scaled by it when
            ``trainer.scale_learning_rate`` (the batch size is global).

    Raises:
        WeightsError: the configured backbone weights cannot be loaded.
    """
    learning_rate = hyperparameter(hp, "learning_rate", trainer.learning_rate, tuner)
    width = hyperparameter(hp, "width", trainer.width, tuner)
    depth = hyperparameter(hp, "depth", trainer.depth, tuner)
    dropout = hyperparameter(hp, "dropout", trainer.dropout, tuner)
    strength = hyperparameter(hp, "augment_strength", trainer.augment_strength, tuner)
    flip = hyperparameter(hp, "flip", trainer.flip, tuner)
    rotation = hyperparameter(hp, "rotation", trainer.rotation, tuner)
    hyperparameter(hp, "batch_size", trainer.batch_size, tuner)  # used by the input pipeline

    classifier = make_classifier(
        input_shape, num_classes, trainer, width, depth, dropout, mean, std
    )
    inputs = keras.Input(shape=input_shape, name="image")
    augmentation = trainer.model_copy(update={"flip": flip, "rotation": rotation})
    x = make_augmentation(augmentation, strength, trainer.seed)(inputs)
    model = keras.Model(inputs, classifier(x), name="visionpipe_training")
    rate = learning_rate * (replicas if trainer.scale_learning_rate else 1)
    compile_model(model, rate, trainer)
    return model


def compile_model(model: keras.Model, learning_rate: float, trainer: TrainerConfig) -> None:
    """Adam, cross-entropy (one-hot targets when mixing), accuracy; XLA when configured."""
    soft = trainer.mix != "none"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=(
            keras.losses.CategoricalCrossentropy()
            if soft
            else keras.losses.SparseCategoricalCrossentropy()
        ),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy")
            if soft
            else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        ],
        jit_compile=trainer.xla,
    )


def make_augmentation(trainer: TrainerConfig, strength: float, seed: int) -> keras.Sequential:
    """Random flips, rotation, zoom, translation, contrast and brightness (training only).

    Each configured strength is multiplied by ``strength``; a zero strength adds no layer.
    Keras applies these layers only when called with ``training=True``.
    """
    layers = []
    if trainer.flip != "none" and strength > 0:
        layers.append(keras.layers.RandomFlip(trainer.flip, seed=seed))

    def factor(value: float) -> float:
        return min(value * strength, 0.99)

    if factor(trainer.rotation):
        layers.append(
            keras.layers.RandomRotation(factor(trainer.rotation), fill_mode="reflect", seed=seed)
        )
    if factor(trainer.zoom):
        layers.append(keras.layers.RandomZoom(factor(trainer.zoom), fill_mode="reflect", seed=seed))
    if factor(trainer.translation):
        t = factor(trainer.translation)
        layers.append(keras.layers.RandomTranslation(t, t, fill_mode="reflect", seed=seed))
    if factor(trainer.contrast):
        layers.append(
            keras.layers.RandomContrast(factor(trainer.contrast), value_range=(0, 255), seed=seed)
        )
    if factor(trainer.brightness):
        layers.append(
            keras.layers.RandomBrightness(
                factor(trainer.brightness), value_range=(0, 255), seed=seed
            )
        )
    return keras.Sequential(layers or [keras.layers.Identity()], name=AUGMENTATION)


def make_classifier(
    input_shape: tuple[int, int, int],
    num_classes: int,
    trainer: TrainerConfig,
    width: int,
    depth: int,
    dropout: float,
    mean: list[float],
    std: list[float],
) -> keras.Model:
    """The served model: pixels (0-255) in, class probabilities out.

    A CNN normalises with the dataset's statistics; a backbone with ImageNet (or local)
    weights with the convention its weights were trained with.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    if trainer.model == "cnn":
        x = Standardize(mean, std, name="standardize")(inputs)
        x = _cnn(x, width, depth, trainer.batch_norm, trainer.pooling)
    else:
        pretrained = trainer.weights != "none"
        _, b_mean, b_std, bgr = _BACKBONES[trainer.model]
        x = Standardize(
            b_mean if pretrained else mean,
            b_std if pretrained else std,
            bgr and pretrained,
            name="standardize",
        )(inputs)
        backbone = make_backbone(trainer.model, trainer.weights, input_shape)
        # The head is trained first on a frozen pretrained backbone (see train.fine_tune).
        backbone.trainable = not pretrained
        x = backbone(x, training=False if pretrained else None)
    x = keras.layers.Dropout(dropout)(x)
    # float32 output under mixed precision: softmax and the loss need the range.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="probabilities", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name=CLASSIFIER)


def _cnn(x, width: int, depth: int, batch_norm: bool, pooling: str):
    for block in range(depth):
        filters = width * 2**block
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm)(x)
            if batch_norm:
                # Momentum 0.9, not Keras's 0.99: with tens of steps per epoch the moving
                # statistics otherwise lag for epochs, and validation with them (sample
                # data, epoch 10: 0.75 at 0.9 against 0.62 at 0.99).
                x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D()(x)
    return keras.layers.GlobalAveragePooling2D()(x)


def make_backbone(name: str, weights: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """A keras.applications backbone without its top, global-average pooled.

    Args:
        name: one of ``mobilenet_v2``, ``efficientnet_b0``, ``resnet50``.
        weights: ``none``, ``imagenet`` or the path of a weights file.
        input_shape: ``(height, width, 3)`` of the images.

    Raises:
        WeightsError: the weights file is missing, or the ImageNet weights can be
            neither found in the Keras cache nor downloaded. Never a silent fallback.
    """
    constructor = getattr(keras.applications, _BACKBONES[name][0])
    if weights not in NAMED_WEIGHTS and not Path(weights).is_file():
        raise WeightsError(f"trainer.weights: no such weights file: {weights}")
    try:
        backbone = constructor(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_shape=input_shape,
            pooling="avg",
            name=BACKBONE,
        )
    except Exception as err:  # noqa: BLE001 - download and file errors come in many types
        raise WeightsError(
            f"trainer.weights={weights!r}: cannot load {name} weights ({err}). For "
            "imagenet, this machine needs the Keras cache (~/.keras/models) or internet "
            "access; otherwise download the no-top weights file elsewhere and set "
            "trainer.weights to its path"
        ) from None
    return backbone


def unfreeze_top(model: keras.Model, layers: int) -> int:
    """Makes the backbone's top ``layers`` trainable (batch norm stays frozen); returns how many."""
    backbone = served_part(model).get_layer(BACKBONE)
    backbone.trainable = True
    count = 0
    for index, layer in enumerate(backbone.layers):
        top = index >= len(backbone.layers) - layers
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
        count += layer.trainable
    return count


def model_inputs(graph) -> dict:
    """``build_model``'s data-dependent arguments, from a ``TransformGraph``."""
    stats = graph.statistics
    return {
        "input_shape": graph.image_shape,
        "num_classes": len(graph.labels),
        "mean": stats["image_mean"],
        "std": stats["image_std"],
    }


def served_part(model: keras.Model) -> keras.Model:
    """The classifier inside a training model (augmentation is training-only)."""
    return model.get_layer(CLASSIFIER)
