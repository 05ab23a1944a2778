import json

import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer.model import build_model, served_part
from trainer.train import choose_strategy, load_hyperparameters, run_train
from trainer.tune import run_tune
from visionpipe import features as F
from visionpipe.config import load_config


def test_build_model_defaults_are_the_configured_values():
    config = load_config(overrides=["trainer.width=8", "trainer.depth=2", "tuner.search_space={}"])
    hp = kt.HyperParameters()
    model = build_model(hp, (16, 16, 3), 4, config.trainer, config.tuner)
    assert hp.values == {
        "learning_rate": config.trainer.learning_rate,
        "width": 8,
        "depth": 2,
        "dropout": config.trainer.dropout,
        "batch_size": config.trainer.batch_size,
    }
    assert model.output_shape == (None, 4)
    assert served_part(model).output_shape == (None, 4)


def test_search_space_choices_are_offered_to_the_tuner():
    config = load_config(overrides=["tuner.search_space={width: [4, 8], dropout: [0.0, 0.5]}"])
    hp = kt.HyperParameters()
    build_model(hp, (16, 16, 3), 3, config.trainer, config.tuner)
    spaces = {p.name: p.values for p in hp.space if hasattr(p, "values")}
    assert spaces["width"] == [4, 8] and spaces["dropout"] == [0.0, 0.5]
    assert spaces["learning_rate"] == [config.trainer.learning_rate]


def test_strategy_is_one_device_without_several_gpus():
    strategy = choose_strategy("auto")
    assert strategy.num_replicas_in_sync == 1


def test_tune_writes_best_hyperparameters_that_train_can_read(transformed, tiny_config, tmp_path):
    result = run_tune(
        transformed.examples_uri, transformed.transform_graph_uri, str(tmp_path), tiny_config
    )
    saved = json.loads((tmp_path / F.HYPERPARAMETERS_FILE).read_text())
    assert result.trials == 1 and saved["values"] == result.best_hyperparameters
    assert result.best_score is not None and 0.0 <= saved["score"] <= 1.0
    assert load_hyperparameters(str(tmp_path)).values == result.best_hyperparameters


def test_no_trials_means_configured_defaults(transformed, tmp_path):
    config = load_config(overrides=["tuner.max_trials=0", "transform.image_size=16"])
    result = run_tune(
        transformed.examples_uri, transformed.transform_graph_uri, str(tmp_path), config
    )
    assert result.trials == 0 and result.best_hyperparameters["width"] == config.trainer.width


def test_exported_model_answers_raw_jpeg_bytes(trained, transformed, tiny_dataset):
    serve = tf.saved_model.load(trained.model_uri).signatures[F.SERVING_SIGNATURE]
    images = [
        (tiny_dataset / c / f"{c}_00001.jpg").read_bytes() for c in ("circle", "square", "triangle")
    ]
    out = serve(**{F.SERVING_INPUT: tf.constant(images)})
    assert out["probabilities"].shape == (3, 3)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert out["class_id"].shape == (3,) and out["class_id"].dtype == tf.int64
    names = {n.decode() for n in out["class_name"].numpy()}
    assert names <= set(transformed.labels)
    assert trained.epochs_run >= 1 and "test_accuracy" in trained.metrics


def test_served_preprocessing_equals_what_the_trainer_saw(transformed, ingested):
    """Skew check: the graph on raw bytes reproduces the Beam-transformed training pixels."""
    from components.evaluate.evaluate import load_test_examples
    from components.transform.transform import transform_output
    from trainer.data import make_dataset

    output = transform_output(transformed.transform_graph_uri)
    images, _ = load_test_examples(ingested.output_uri)
    served = output.transform_features_layer()({F.IMAGE_ENCODED: tf.constant(images)})
    served = served[F.TRANSFORMED_IMAGE].numpy()
    seen = np.concatenate(
        [
            x.numpy()
            for x, _ in make_dataset(
                transformed.examples_uri, "test", output.transformed_feature_spec(), 64
            )
        ]
    )
    assert len(seen) == len(served)
    for pixels in served:
        assert np.abs(seen - pixels).max(axis=(1, 2, 3)).min() < 1e-5


def test_training_is_reproducible_for_a_seed(transformed, tiny_config, tmp_path, trained):
    again = run_train(
        transformed.examples_uri,
        transformed.transform_graph_uri,
        None,
        str(tmp_path / "m"),
        tiny_config,
    )
    assert again.metrics["loss"] == trained.metrics["loss"]
