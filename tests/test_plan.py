"""The training plan: pure Python, decided before TensorFlow runs."""

import subprocess
import sys

import pytest

from trainer.plan import Phase, plan_training
from visionpipe.config import load_config

STATS = {
    "examples": {"train": 100, "valid": 20, "test": 21},
    "labels": ["a", "b"],
    "label_counts": {"a": 80, "b": 20},
}


def _trainer(*overrides):
    return load_config(overrides=list(overrides)).trainer


def test_one_device_plan():
    trainer = _trainer("trainer.epochs=5", "trainer.min_steps=0", "trainer.class_weights=auto")
    plan = plan_training(trainer, STATS, {"batch_size": 10, "learning_rate": 0.01})
    assert plan.batch_size == 10 and plan.replicas == 1 and plan.rate == 0.01
    assert plan.phases == [Phase("head", 0, 5, 0.01)]
    # 80 against 20 is imbalanced (>= 1.5x): balanced weights n / (k * n_c).
    assert plan.class_weights == {0: 100 / (2 * 80), 1: 100 / (2 * 20)}
    assert plan.train_steps is None and plan.eval_steps == {}


def test_short_data_gets_enough_steps_and_replicas_scale_the_rate():
    trainer = _trainer(  # epochs auto (0)
        "trainer.min_steps=300", "trainer.scale_learning_rate=true"
    )
    plan = plan_training(trainer, STATS, {"batch_size": 10, "learning_rate": 0.01}, replicas=4)
    assert plan.phases[0].last == 30  # 10 steps per epoch: 30 epochs make 300 steps
    assert plan.epochs_reason == "auto, 300 steps"
    assert plan.rate == pytest.approx(0.04)
    set_by_user = _trainer("trainer.epochs=5", "trainer.min_steps=300")
    plan = plan_training(set_by_user, STATS, {"batch_size": 10, "learning_rate": 0.01})
    assert plan.phases[0].last == 5 and plan.epochs_reason == "trainer.epochs"


def test_multi_worker_runs_whole_batches():
    trainer = _trainer("trainer.epochs=3", "trainer.min_steps=0")
    plan = plan_training(trainer, STATS, {"batch_size": 8, "learning_rate": 0.1}, 2, True)
    assert plan.train_steps == 100 // 8
    assert plan.eval_steps == {"valid": 3, "test": 3}  # ceil(20 / 8), ceil(21 / 8)


def test_a_pretrained_backbone_gets_a_fine_tuning_phase(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"")
    trainer = _trainer(
        "trainer.model=mobilenet_v2",
        f"trainer.weights={weights}",
        "trainer.epochs=4",
        "trainer.min_steps=0",
        "trainer.fine_tune_epochs=3",
        "trainer.fine_tune_learning_rate_factor=0.1",
    )
    plan = plan_training(trainer, STATS, {"batch_size": 10, "learning_rate": 0.01})
    assert [(p.name, p.first, p.last) for p in plan.phases] == [
        ("head", 0, 4),
        ("fine_tune", 4, 7),
    ]
    assert plan.phases[1].rate == pytest.approx(0.001)


def test_a_batch_smaller_than_the_replicas_is_refused():
    with pytest.raises(ValueError, match="batch size 2 is smaller than the 4 replicas"):
        plan_training(_trainer(), STATS, {"batch_size": 2, "learning_rate": 0.01}, replicas=4)


def test_the_plan_needs_no_tensorflow():
    code = (
        "import sys\n"
        "from trainer.plan import plan_training\n"
        "from visionpipe.config import load_config\n"
        "plan_training(load_config().trainer, {}, {'batch_size': 8, 'learning_rate': 0.1})\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
