import re

import pytest
from pydantic import ValidationError

from visionpipe.config import Config, ConfigError, load_config


def test_defaults_are_valid_and_frozen():
    config = load_config()
    assert config.transform.image_size == 32
    with pytest.raises(ValidationError, match="frozen"):
        config.trainer.epochs = 3


def test_yaml_file_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epochs: 7\n  dropout: 0.3\npush:\n  model_name: shapes\n")
    config = load_config(path, ["trainer.epochs=9", "tuner.search_space={width: [8, 16]}"])
    assert config.trainer.epochs == 9
    assert config.trainer.dropout == 0.3
    assert config.push.model_name == "shapes"
    assert config.tuner.search_space == {"width": [8.0, 16.0]}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="trainer.epoch'"):
        load_config(overrides=["trainer.epoch=3"])


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="no section 'training'"):
        load_config(overrides=["training.epochs=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="trainer.epochs"):
        load_config(overrides=["trainer.epochs=many"])


def test_out_of_range_value_is_named():
    with pytest.raises(ConfigError, match="evaluate.min_accuracy"):
        load_config(overrides=["evaluate.min_accuracy=1.5"])


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="must be 1"):
        load_config(overrides=["ingest.train_fraction=0.9"])


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  learning_rte: 0.1\n")
    with pytest.raises(ConfigError, match="trainer.learning_rte"):
        load_config(path)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


def test_search_space_names_must_be_tunable():
    with pytest.raises(ConfigError, match="unknown hyperparameters"):
        load_config(overrides=["tuner.search_space={momentum: [0.9]}"])


def test_json_round_trip():
    config = load_config(overrides=["trainer.epochs=3"])
    assert Config.from_json(config.to_json()) == config
    assert config.flat()["trainer.epochs"] == 3


def test_beam_running_modes_are_beams_own_and_nothing_else():
    # multi_threading is back since ingest checks its shards and counts (BeamConfig).
    for mode in ("in_memory", "multi_threading", "multi_processing"):
        assert load_config(overrides=[f"beam.direct_running_mode={mode}"]).beam
    with pytest.raises(ConfigError, match="beam.direct_running_mode"):
        load_config(overrides=["beam.direct_running_mode=threads"])


def test_augmentation_is_off_by_default():
    trainer = load_config().trainer
    assert trainer.flip == "none" and trainer.rotation == 0.0


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("trainer.rotation=0.7", "trainer.rotation"),
        ("tuner.search_space={rotation: [0, 0.9]}", "search_space.rotation"),
        ("tuner.search_space={flip: [none, diagonal]}", "search_space.flip"),
        ("tuner.search_space={batch_size: [0, 8]}", "search_space.batch_size"),
        ("tuner.search_space={dropout: [0.1, 1.5]}", "search_space.dropout"),
        ("tuner.epochs=0", "tuner.epochs"),
        ("trainer.checkpoint_every=0", "trainer.checkpoint_every"),
    ],
)
def test_augmentation_and_search_values_out_of_range_name_the_key(override, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        load_config(overrides=[override])


def test_flip_and_rotation_can_be_searched():
    space = load_config(
        overrides=["tuner.search_space={flip: [none, horizontal], rotation: [0, 0.05]}"]
    ).tuner.search_space
    assert space == {"flip": ["none", "horizontal"], "rotation": [0.0, 0.05]}


def test_each_list_of_names_has_one_source_and_its_users_cover_it():
    import numpy as np

    from components.edge.convert import FORMATS
    from components.evaluate.metrics import evaluate_model
    from components.explain.spec import METHODS as EXPLAIN_METHODS
    from trainer.explain import METHODS
    from trainer.model import _BACKBONES
    from trainer.tune import _TUNERS
    from visionpipe.sections import (
        BACKBONES,
        CLASS_METRICS,
        EDGE_FORMATS,
        MODEL_METRICS,
        ROBUSTNESS_METRICS,
        ROBUSTNESS_VARIANTS,
        TUNER_ALGORITHMS,
    )
    from visionpipe.variants import VARIANTS

    assert set(_BACKBONES) == set(BACKBONES)
    assert set(_TUNERS) == set(TUNER_ALGORITHMS)
    assert tuple(FORMATS) == EDGE_FORMATS
    assert EXPLAIN_METHODS == METHODS  # the CLI's choices, without importing TensorFlow
    metrics, _ = evaluate_model(["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    whole = {k for k in metrics if "/" not in k} - {"examples"}
    assert whole | set(ROBUSTNESS_METRICS) == set(MODEL_METRICS)  # robustness: evaluate's
    assert VARIANTS == ROBUSTNESS_VARIANTS
    assert {k.split("/")[0] for k in metrics if "/" in k} == set(CLASS_METRICS)
