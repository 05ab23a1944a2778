"""The model family: one ``build_model(hp)`` shared by the tuner and the trainer.

Every hyperparameter is declared with ``hp`` so that the tuner can search it; its
default is the configured trainer value, so building from an empty
``HyperParameters`` gives exactly the configured model.
"""

from __future__ import annotations

import keras
import keras_tuner as kt

from visionpipe.config import TrainerConfig, TunerConfig

CLASSIFIER = "classifier"


def hyperparameter(hp: kt.HyperParameters, name: str, default, tuner: TunerConfig):
    """Declares ``name`` as a choice over the configured search space (default: fixed)."""
    cast = type(default)
    values = [cast(v) for v in tuner.search_space.get(name, [default])]
    return hp.Choice(name, values, default=default if default in values else values[0])


@keras.saving.register_keras_serializable(package="visionpipe")
class Standardize(keras.layers.Layer):
    """8-bit pixels to float, normalised per channel with the training split's statistics.

    The first layer of the served classifier: transformed examples store pixels as
    bytes, and the conversion happens here, in the trained and the served graph alike.
    """

    def __init__(self, mean: list[float], std: list[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, inputs):
        """``(float(inputs) - mean) / std``, per channel."""
        x = keras.ops.cast(inputs, self.compute_dtype)
        mean = keras.ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def get_config(self) -> dict:
        """The statistics, so the layer is saved and restored with the model."""
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def build_model(
    hp: kt.HyperParameters,
    input_shape: tuple[int, int, int],
    num_classes: int,
    trainer: TrainerConfig,
    tuner: TunerConfig,
    mean: list[float],
    std: list[float],
) -> keras.Model:
    """A compiled training model: augmentation layers, then the CNN classifier.

    Args:
        hp: hyperparameters (keras-tuner); unset ones take the trainer config's values.
        input_shape: ``(height, width, 3)`` of the transformed images (8-bit pixels).
        num_classes: size of the label vocabulary.
        trainer: model and optimiser defaults.
        tuner: the search space.
        mean: per-channel pixel mean of the training split (transform statistics).
        std: per-channel pixel standard deviation of the training split.
    """
    learning_rate = hyperparameter(hp, "learning_rate", trainer.learning_rate, tuner)
    width = hyperparameter(hp, "width", trainer.width, tuner)
    depth = hyperparameter(hp, "depth", trainer.depth, tuner)
    dropout = hyperparameter(hp, "dropout", trainer.dropout, tuner)
    hyperparameter(hp, "batch_size", trainer.batch_size, tuner)  # used by the input pipeline

    classifier = make_classifier(input_shape, num_classes, width, depth, dropout, mean, std)
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.RandomFlip("horizontal_and_vertical")(inputs)
    x = keras.layers.RandomRotation(0.1, fill_mode="reflect")(x)
    model = keras.Model(inputs, classifier(x), name="visionpipe_training")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def make_classifier(
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: int,
    depth: int,
    dropout: float,
    mean: list[float],
    std: list[float],
) -> keras.Model:
    """The CNN that is served: pixels (0-255) in, class probabilities out."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = Standardize(mean, std, name="standardize")(inputs)
    for block in range(depth):
        filters = width * 2**block
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=CLASSIFIER)


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
