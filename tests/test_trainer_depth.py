"""The trainer in depth: model family, augmentation, mixing, class weights, resume, workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from trainer.callbacks import SAVED_FILE, learning_rate_schedule
from trainer.data import mix_batch
from trainer.distribute import is_chief
from trainer.model import (
    AUGMENTATION,
    BACKBONE,
    WeightsError,
    build_model,
    make_backbone,
    served_part,
    unfreeze_top,
)
from trainer.plan import class_weights, epochs_reason, planned_epochs
from visionpipe.config import ConfigError, load_config
from visionpipe.sections import BACKBONES

STATS = {"mean": [120.0] * 3, "std": [60.0] * 3}
REPO = Path(__file__).resolve().parent.parent


def _build(*overrides, shape=(32, 32, 3), classes=3):
    config = load_config(overrides=["tuner.max_trials=0", "tuner.search_space={}", *overrides])
    hp = kt.HyperParameters()
    model = build_model(
        hp, shape, classes, trainer=config.trainer, tuner=config.tuner, replicas=1, **STATS
    )
    return model, hp, config


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_a_classifier_without_weights(backbone):
    model, _, _ = _build(f"trainer.model={backbone}")
    classifier = served_part(model)
    assert classifier.get_layer(BACKBONE).trainable  # random weights: everything trains
    out = classifier(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 3)


def test_unknown_backbone_and_weights_on_the_cnn_fail_in_config():
    with pytest.raises(ConfigError, match="trainer.model"):
        load_config(overrides=["trainer.model=vgg11"])
    with pytest.raises(ConfigError, match="needs a backbone"):
        load_config(overrides=["trainer.weights=imagenet"])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(WeightsError, match=f"no such weights file: {missing}"):
        make_backbone("mobilenet_v2", str(missing), (32, 32, 3))


def test_imagenet_weights_that_cannot_be_loaded_are_an_error_not_a_fallback(tmp_path):
    # A Keras cache of this test's own (KERAS_HOME) holding a broken copy of the
    # weights file: the same outcome on every machine, with or without a real cache
    # or internet access.
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5").write_bytes(
        b"not an HDF5 file"
    )
    code = (
        "from trainer.model import WeightsError, make_backbone\n"
        "try:\n"
        "    make_backbone('mobilenet_v2', 'imagenet', (32, 32, 3))\n"
        "except WeightsError as err:\n"
        "    print('WeightsError:', err)\n"
    )
    env = {**_env(tmp_path), "KERAS_HOME": str(tmp_path / "keras")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(
        "WeightsError: trainer.weights='imagenet': cannot load mobilenet_v2"
    )


def test_local_weights_file_is_loaded_and_transfer_learning_freezes_then_unfreezes(tmp_path):
    source = make_backbone("mobilenet_v2", "none", (32, 32, 3))
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(str(path))
    model, _, _ = _build(
        "trainer.model=mobilenet_v2", f"trainer.weights={path}", "trainer.fine_tune_layers=10"
    )
    backbone = served_part(model).get_layer(BACKBONE)
    for mine, theirs in zip(backbone.weights, source.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert not backbone.trainable and not backbone.trainable_weights  # the head trains first
    unfrozen = unfreeze_top(model, 10)
    trainable = [layer for layer in backbone.layers if layer.trainable]
    assert 0 < unfrozen == len(trainable) <= 10
    assert all(not isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert set(trainable) <= set(backbone.layers[-10:])


def test_augmentation_follows_the_config_and_is_inactive_outside_training():
    model, _, _ = _build(
        "trainer.zoom=0.2",
        "trainer.translation=0.1",
        "trainer.contrast=0.3",
        "trainer.brightness=0.2",
        "trainer.flip=horizontal",
        "trainer.rotation=0.1",
    )
    layers = [type(layer).__name__ for layer in model.get_layer(AUGMENTATION).layers]
    assert layers == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
    ]
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        model(x, training=False).numpy(), served_part(model)(x, training=False).numpy(), atol=1e-6
    )
    assert not np.allclose(model.get_layer(AUGMENTATION)(x, training=True).numpy(), x)
    none, _, _ = _build("trainer.flip=none", "trainer.rotation=0", "trainer.augment_strength=1")
    assert [type(x).__name__ for x in none.get_layer(AUGMENTATION).layers] == ["Identity"]


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_keeps_shapes_and_label_mass(mode):
    tf.random.set_seed(0)
    images = tf.constant(np.random.default_rng(1).integers(0, 255, (8, 16, 16, 3)), tf.uint8)
    labels = tf.one_hot([0, 1, 2, 0, 1, 2, 0, 1], 3)
    mixed, soft = mix_batch(images, labels, mode, 0.4)
    assert mixed.shape == (8, 16, 16, 3) and mixed.dtype == tf.float32
    np.testing.assert_allclose(soft.numpy().sum(axis=1), 1.0, atol=1e-6)
    assert float(tf.reduce_max(mixed)) <= 255.0


def test_soft_labels_switch_to_categorical_loss():
    model, _, _ = _build("trainer.mix=mixup")
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)


def test_class_weights_balance_only_imbalanced_classes():
    labels = ["a", "b", "c"]
    assert class_weights(labels, {"a": 10, "b": 10, "c": 9}, "auto") is None
    weights = class_weights(labels, {"a": 30, "b": 10, "c": 20}, "auto")
    assert weights == pytest.approx({0: 60 / 90, 1: 60 / 30, 2: 60 / 60})
    assert class_weights(labels, {"a": 10, "b": 10, "c": 10}, "balanced") == {0: 1, 1: 1, 2: 1}
    assert class_weights(labels, {"a": 30, "b": 1, "c": 1}, "none") is None


def test_auto_epochs_make_the_minimum_steps_and_a_set_value_means_what_it_says():
    trainer = load_config().trainer  # epochs 0 (auto): 750 steps, at least 3 epochs
    assert planned_epochs(trainer, examples=1222, batch_size=32) == 20  # 39 steps an epoch
    assert epochs_reason(trainer, examples=1222, batch_size=32) == "auto, 780 steps"
    assert planned_epochs(trainer, examples=480, batch_size=32) == 50  # 15 steps an epoch
    assert epochs_reason(trainer, 480, 32) == "auto, 750 steps"
    # Ten times the sample: 375 steps an epoch; 2 would do, 3 is the least.
    assert planned_epochs(trainer, examples=12_000, batch_size=32) == 3
    assert epochs_reason(trainer, 12_000, 32) == "auto, 1125 steps"
    assert planned_epochs(trainer, examples=4_000, batch_size=32) == 6  # 125 an epoch
    set_by_user = load_config(overrides=["trainer.epochs=3"]).trainer  # min_steps stays 750
    assert planned_epochs(set_by_user, examples=480, batch_size=32) == 3
    assert epochs_reason(set_by_user, 480, 32) == "trainer.epochs"


def test_learning_rate_schedules():
    config = load_config(overrides=["trainer.lr_schedule=plateau"])
    assert isinstance(
        learning_rate_schedule(config.trainer, 0.01, 10), keras.callbacks.ReduceLROnPlateau
    )
    config = load_config(overrides=["trainer.lr_schedule=constant"])
    assert learning_rate_schedule(config.trainer, 0.01, 10) is None


def test_chief_is_worker_zero_without_a_chief_task(monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    assert is_chief()
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    )
    assert not is_chief()
    monkeypatch.delenv("TF_CONFIG")
    assert is_chief()


def test_empty_search_space_with_trials_fails_in_config():
    with pytest.raises(ConfigError, match="search_space is empty"):
        load_config(overrides=["tuner.search_space={}", "tuner.max_trials=3"])


def _cli(*args):
    return [sys.executable, "-m", "pipelines.cli", *args]


def _env(tmp_path):
    return {
        **os.environ,
        "VISIONPIPE_HOME": str(tmp_path / "home"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": str(REPO),
    }


def _train_args(transformed, out, *options, **settings):
    """``visionpipe train`` on the tiny transformed data with a tiny model."""
    tiny = {"transform.image_size": 16, "trainer.width": 4, "trainer.depth": 1}
    tiny["trainer.min_steps"] = 0
    tiny.update({"trainer.batch_size": 8, **{k.replace("__", "."): v for k, v in settings.items()}})
    args = ["train", "--transformed", str(Path(transformed.examples_uri).parent)]
    args += ["--out", str(out), *options]
    for key, value in tiny.items():
        args += ["--set", f"{key}={value}"]
    return _cli(*args)


@pytest.mark.processes
def test_a_killed_training_resumes_from_its_last_completed_epoch(transformed, tmp_path):
    out = tmp_path / "model"
    args = _train_args(transformed, out, trainer__epochs=40, trainer__early_stopping_patience=100)
    proc = subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    metadata = Path(f"{out}.backup") / "head" / SAVED_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metadata.exists():
            try:
                if json.loads(metadata.read_text())["epochs"] >= 2:
                    break
            except (ValueError, KeyError):
                pass  # being written
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(metadata.read_text())["epochs"]
    assert not (out / "saved_model.pb").exists()

    done = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from_epoch"] >= killed_at >= 2
    assert result["epochs_run"] == 40 - result["resumed_from_epoch"]
    assert (out / "saved_model.pb").exists() and not Path(f"{out}.backup").exists()


@pytest.mark.processes
def test_two_local_workers_train_one_model_and_one_mlflow_run(transformed, tmp_path):
    out = tmp_path / "model"
    args = _train_args(
        transformed, out, "--workers", "2", trainer__epochs=2, trainer__tensorboard="true"
    )
    done = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["epochs_run"] == 2
    assert (out / "saved_model.pb").exists()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`visionpipe.step` = 'train'"
    )
    assert len(runs) == 1 and runs[0].data.params["replicas"] == "2"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"training_curves.png", "model_summary.txt", "tensorboard"} <= artifacts


@pytest.mark.processes
def test_a_batch_smaller_than_the_replicas_fails_before_training(transformed, tmp_path):
    args = _train_args(transformed, tmp_path / "model", "--workers", "2", trainer__batch_size=1)
    done = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "smaller than the 2 replicas" in done.stderr
    assert not (tmp_path / "model" / "saved_model.pb").exists()


def test_the_train_line_says_how_many_epochs_ran_and_why():
    from components.train.spec import figure
    from trainer.train import TrainResult

    def line(run, planned, reason, resumed=0):
        metrics = {"val_accuracy": 0.9}
        return figure(
            TrainResult(
                "m", {}, run, metrics, resumed, epochs_planned=planned, epochs_reason=reason
            )
        )

    assert line(20, 20, "auto, 780 steps") == "20 epochs (auto, 780 steps), val_accuracy 0.900"
    assert line(3, 3, "trainer.epochs") == "3 epochs, val_accuracy 0.900"
    assert line(12, 30, "trainer.epochs") == "12 of 30 epochs, val_accuracy 0.900"  # stopped
