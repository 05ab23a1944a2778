import json
import math
from functools import partial

import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer.distribute import choose_strategy, strategy_kind
from trainer.model import build_model, model_inputs, served_part
from trainer.train import load_hyperparameters, run_train
from trainer.tune import run_tune
from visionpipe import features as F
from visionpipe.config import load_config

_STATS = ([120.0, 110.0, 100.0], [60.0, 55.0, 50.0])  # per-channel pixel mean and std


def test_build_model_defaults_are_the_configured_values():
    config = load_config(
        overrides=[
            "trainer.width=8",
            "trainer.depth=2",
            "tuner.search_space={}",
            "tuner.max_trials=0",
        ]
    )
    hp = kt.HyperParameters()
    model = build_model(hp, (16, 16, 3), 4, config.trainer, config.tuner, *_STATS)
    assert hp.values == {
        "learning_rate": config.trainer.learning_rate,
        "width": 8,
        "depth": 2,
        "dropout": config.trainer.dropout,
        "batch_size": config.trainer.batch_size,
        "augment_strength": config.trainer.augment_strength,
        "flip": "none",
        "rotation": 0.0,
    }
    assert model.output_shape == (None, 4)
    assert served_part(model).output_shape == (None, 4)


def test_search_space_choices_are_offered_to_the_tuner():
    config = load_config(overrides=["tuner.search_space={width: [4, 8], dropout: [0.0, 0.5]}"])
    hp = kt.HyperParameters()
    build_model(hp, (16, 16, 3), 3, config.trainer, config.tuner, *_STATS)
    spaces = {p.name: p.values for p in hp.space if hasattr(p, "values")}
    assert spaces["width"] == [4, 8] and spaces["dropout"] == [0.0, 0.5]
    assert spaces["learning_rate"] == [config.trainer.learning_rate]


def test_strategy_is_the_default_one_without_several_gpus():
    # One device: no strategy object (what plain model.fit uses); OneDeviceStrategy only
    # when asked for, since it slowed CPU epochs 2-6x. Several GPUs: mirrored.
    assert [strategy_kind("auto", gpus) for gpus in (0, 1, 2, 8)] == [
        "default",
        "default",
        "mirrored",
        "mirrored",
    ]
    assert strategy_kind("one_device", 4) == "one_device"
    assert strategy_kind("mirrored", 0) == "mirrored"
    gpus = len(tf.config.list_logical_devices("GPU"))
    strategy = choose_strategy("auto")
    if strategy_kind("auto", gpus) == "default":  # this machine's answer, whichever it is
        assert strategy is tf.distribute.get_strategy()
    else:
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert isinstance(choose_strategy("one_device"), tf.distribute.OneDeviceStrategy)


def test_tune_writes_best_hyperparameters_that_train_can_read(transformed, tiny_config, tmp_path):
    result = run_tune(
        transformed.examples_uri, transformed.transform_graph_uri, str(tmp_path), tiny_config
    )
    saved = json.loads((tmp_path / F.HYPERPARAMETERS_FILE).read_text())
    assert result.trials == 1 and saved["values"] == result.best_hyperparameters
    assert result.best_score is not None and 0.0 <= saved["score"] <= 1.0
    assert load_hyperparameters(str(tmp_path)).values == result.best_hyperparameters


def test_every_trial_trains_with_its_own_batch_size(transformed, tiny_config):
    from trainer.tune import TrialModel
    from visionpipe.transform_graph import TransformGraph

    graph = TransformGraph.load(transformed.transform_graph_uri)
    n = graph.statistics["examples"]["train"]
    build = partial(
        build_model, **model_inputs(graph), trainer=tiny_config.trainer, tuner=tiny_config.tuner
    )
    trials = TrialModel(build, transformed.examples_uri, graph, tiny_config)
    for batch in (4, 16):
        hp = kt.HyperParameters()
        hp.Fixed("batch_size", batch)
        history = trials.fit(hp, trials.build(hp), epochs=1, verbose=0)
        assert history.params["steps"] == math.ceil(n / batch)


def test_the_tune_record_ranks_every_trial_and_says_why(transformed, tiny_config, tmp_path):
    config = tiny_config.with_overrides(
        ["tuner.max_trials=2", "tuner.search_space={learning_rate: [0.001, 0.01]}"]
    )
    run_tune(transformed.examples_uri, transformed.transform_graph_uri, str(tmp_path), config)
    saved = json.loads((tmp_path / F.HYPERPARAMETERS_FILE).read_text())
    scores = [t["score"] for t in saved["trials"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert saved["trials"][0]["values"] == saved["values"]
    assert saved["reason"].startswith(f"best val_accuracy {scores[0]:.4f} of 2 completed trials")
    assert "runner-up" in saved["reason"] and "learning_rate" in saved["reason"]


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


def _untrained_export(transformed, tmp_path):
    """A freshly built classifier and its export: two paths to the same weights."""
    from trainer.export import export_serving_model
    from trainer.model import model_inputs
    from visionpipe.transform_graph import TransformGraph

    config = load_config(overrides=["trainer.width=4", "trainer.depth=1"])
    graph = TransformGraph.load(transformed.transform_graph_uri)
    model = build_model(
        kt.HyperParameters(), **model_inputs(graph), trainer=config.trainer, tuner=config.tuner
    )
    classifier = served_part(model)
    export_serving_model(classifier, graph, str(tmp_path / "export"), 40_000_000)
    return graph, model, tf.saved_model.load(str(tmp_path / "export"))


def test_served_probabilities_from_raw_bytes_equal_the_trainer_path(
    transformed, ingested, tmp_path
):
    """The skew test: served model on raw bytes vs. the trainer's model on transformed examples."""
    from trainer.data import make_dataset
    from visionpipe.transform_graph import load_raw_split

    graph, model, loaded = _untrained_export(transformed, tmp_path)
    images = load_raw_split(ingested.output_uri, "test").images
    served = loaded.signatures[F.SERVING_SIGNATURE](**{F.SERVING_INPUT: tf.constant(images)})
    served = served["probabilities"].numpy()
    # The trainer's path: transformed examples as the trainer reads them, through the
    # training model (augmentation inactive outside training).
    pixels, trainer_probs = [], []
    for x, _ in make_dataset(transformed.examples_uri, "test", graph.image_shape, 64):
        pixels.append(x.numpy())
        trainer_probs.append(model(x, training=False).numpy())
    pixels, trainer_probs = np.concatenate(pixels), np.concatenate(trainer_probs)
    # Pair each test image with its transformed example by the 8-bit pixels, which the
    # bytes path must reproduce exactly.
    layer = graph.output.transform_features_layer()
    served_pixels = layer({F.IMAGE_ENCODED: tf.constant(images)})[F.TRANSFORMED_IMAGE].numpy()
    assert len(images) == len(pixels) > 0
    for i, image in enumerate(served_pixels):
        [match] = np.flatnonzero((pixels == image).all(axis=(1, 2, 3)))
        np.testing.assert_allclose(served[i], trainer_probs[match], atol=1e-5, rtol=0)


def test_pixels_signature_equals_the_bytes_signature(transformed, tiny_dataset, tmp_path):
    from trainer.export import PIXELS_INPUT, PIXELS_SIGNATURE

    _, _, loaded = _untrained_export(transformed, tmp_path)
    files = sorted(tiny_dataset.rglob("*.jpg"))[:8]
    data = [f.read_bytes() for f in files]
    decoded = np.stack([tf.io.decode_jpeg(d, channels=3).numpy() for d in data])
    by_bytes = loaded.signatures[F.SERVING_SIGNATURE](**{F.SERVING_INPUT: tf.constant(data)})
    by_pixels = loaded.signatures[PIXELS_SIGNATURE](**{PIXELS_INPUT: tf.constant(decoded)})
    np.testing.assert_allclose(
        by_pixels["probabilities"].numpy(), by_bytes["probabilities"].numpy(), atol=1e-5, rtol=0
    )
    assert list(by_pixels["class_name"].numpy()) == list(by_bytes["class_name"].numpy())


def test_rest_b64_payload_is_decoded_and_predicted_through_the_signature(trained, tiny_dataset):
    import base64

    from visionpipe.serving import Classifier

    files = [tiny_dataset / c / f"{c}_00002.jpg" for c in ("circle", "square")]
    data = [f.read_bytes() for f in files]
    classifier = Classifier(trained.model_uri)
    payload = json.loads(
        json.dumps(
            {
                "signature_name": "serving_default",
                "instances": [
                    {"b64": base64.b64encode(data[0]).decode()},
                    {"image_bytes": {"b64": base64.b64encode(data[1]).decode()}},
                ],
            }
        )
    )
    answer = classifier.rest_predict(payload)
    direct = classifier.classify(data)
    assert [p["class_name"] for p in answer["predictions"]] == [
        n.decode() for n in direct["class_name"]
    ]
    np.testing.assert_allclose(
        [p["probabilities"] for p in answer["predictions"]], direct["probabilities"], atol=1e-6
    )
    import pytest

    with pytest.raises(ValueError, match=r"instances\[0\]"):
        classifier.rest_predict({"instances": [{"b64": "not base64!"}]})
    with pytest.raises(ValueError, match="instances"):
        classifier.rest_predict({"inputs": []})


def test_training_is_reproducible_for_a_seed(transformed, tiny_config, tmp_path, trained):
    again = run_train(
        transformed.examples_uri,
        transformed.transform_graph_uri,
        None,
        str(tmp_path / "m"),
        tiny_config,
    )
    assert again.metrics["loss"] == trained.metrics["loss"]
