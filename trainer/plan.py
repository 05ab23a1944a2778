"""The training plan: every number a training run decides before it touches TensorFlow.

From the configuration, the transform statistics and the hyperparameters: the batch
size and its check against the replicas, the learning rate, the class weights, the
epochs of each phase and, under multi-worker training, the steps that make every
worker run whole batches. Pure Python: tests call it without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visionpipe.config import TrainerConfig


@dataclass(frozen=True)
class Phase:
    """One ``fit`` call: epochs ``first`` to ``last`` at ``rate``, its backup under ``name``."""

    name: str
    first: int
    last: int
    rate: float


@dataclass(frozen=True)
class TrainPlan:
    """What a training run will do."""

    batch_size: int
    replicas: int
    rate: float  # the head phase's learning rate (scaled by the replicas if configured)
    class_weights: dict[int, float] | None
    phases: list[Phase]
    multi_worker: bool = False
    # Multi-worker only: steps per training epoch, and per evaluated split (None: to the end).
    train_steps: int | None = None
    eval_steps: dict[str, int | None] = field(default_factory=dict)
    epochs_reason: str = ""  # why the head phase has its epochs (``epochs_reason``)

    @property
    def epochs(self) -> int:
        """The epochs planned over all phases."""
        return self.phases[-1].last

    def describe(self, model: str, mixed_precision: bool) -> str:
        """One line for the log."""
        return (
            f"train: {model}, {self.replicas} replicas, batch {self.batch_size}, rate "
            f"{self.rate:g}, mixed precision {mixed_precision}, class weights "
            f"{self.class_weights}, phases {[(p.name, p.first, p.last) for p in self.phases]}"
        )


def is_transfer(trainer: TrainerConfig) -> bool:
    """Whether training starts from pretrained backbone weights (head first, then fine-tune)."""
    return trainer.model != "cnn" and trainer.weights != "none"


def plan_training(
    trainer: TrainerConfig,
    statistics: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    replicas: int = 1,
    multi_worker: bool = False,
) -> TrainPlan:
    """The plan for training with ``hyperparameters`` on the transformed data.

    Args:
        trainer: the ``trainer`` section.
        statistics: the transform graph's ``statistics.json`` (``examples`` per split,
            ``labels``, ``label_counts``).
        hyperparameters: the values to train with (``batch_size``, ``learning_rate``).
        replicas: replicas in sync under the distribution strategy.
        multi_worker: whether several workers train together (whole batches only).

    Raises:
        ValueError: the batch size is smaller than the number of replicas.
    """
    batch_size = int(hyperparameters["batch_size"])
    if batch_size < replicas:
        raise ValueError(
            f"batch size {batch_size} is smaller than the {replicas} replicas: each replica "
            "needs at least one example (the batch size is global)"
        )
    counts = statistics.get("examples", {})
    rate = float(hyperparameters["learning_rate"]) * (
        replicas if trainer.scale_learning_rate else 1
    )
    epochs = planned_epochs(trainer, counts.get("train", 0), batch_size)
    reason = epochs_reason(trainer, counts.get("train", 0), batch_size)
    phases = [Phase("head", 0, epochs, rate)]
    if is_transfer(trainer) and trainer.fine_tune_epochs:
        tuned = rate * trainer.fine_tune_learning_rate_factor
        phases.append(Phase("fine_tune", epochs, epochs + trainer.fine_tune_epochs, tuned))
    labels = list(statistics.get("labels", []))
    weights = class_weights(labels, statistics.get("label_counts", {}), trainer.class_weights)
    if not multi_worker:
        return TrainPlan(batch_size, replicas, rate, weights, phases, epochs_reason=reason)
    # Every worker runs the same number of whole batches: an empty replica batch breaks
    # the step. Evaluation runs ceil(n / batch) whole batches of the repeated split (the
    # last wraps around to the first examples: fewer than a batch counted twice).
    train_steps = max(1, counts.get("train", 0) // batch_size)
    eval_steps = {s: max(1, math.ceil(counts.get(s, 0) / batch_size)) for s in ("valid", "test")}
    return TrainPlan(
        batch_size, replicas, rate, weights, phases, True, train_steps, eval_steps, reason
    )


def class_weights(
    labels: list[str], counts: Mapping[str, int], mode: str
) -> dict[int, float] | None:
    """Balanced class weights ``n / (k * n_c)``, or None.

    ``auto`` weights only when the largest class has at least 1.5x the examples of the
    smallest; ``balanced`` always; ``none`` never.
    """
    n = [max(int(counts.get(label, 0)), 1) for label in labels]
    if not n or mode == "none" or (mode == "auto" and max(n) < 1.5 * min(n)):
        return None
    total = sum(n)
    return {i: total / (len(n) * c) for i, c in enumerate(n)}


AUTO_MIN_EPOCHS = 3  # trainer.epochs=0 (auto): at least this many


def planned_epochs(trainer: TrainerConfig, examples: int, batch_size: int) -> int:
    """``trainer.epochs`` as set; when it is 0 (auto), the epochs that make ``min_steps`` steps.

    What a model learns depends on its optimizer steps more than on its epochs: on
    generated glyphs, 4 classes x 150 images, 20 epochs (300 steps) reached 0.39 test
    accuracy and 50 epochs (750 steps) 1.0. The default, 750, is the 20 epochs of the
    1,222 training images of the sample data; at ten times the images the same steps are
    3 epochs (``AUTO_MIN_EPOCHS``, the least: every image is seen a few times), which
    reached test accuracy 1.000 there (``make bench BENCH_ARGS="--only scale"``); the old
    floor of 20 epochs made 6.6 times the steps. A value the user set wins.
    """
    if trainer.epochs:
        return trainer.epochs
    steps = _steps_per_epoch(examples, batch_size)
    return max(AUTO_MIN_EPOCHS, math.ceil(trainer.min_steps / steps))


def epochs_reason(trainer: TrainerConfig, examples: int, batch_size: int) -> str:
    """Why ``planned_epochs`` chose its number, in a few words (console and MLflow)."""
    if trainer.epochs:
        return "trainer.epochs"
    steps = _steps_per_epoch(examples, batch_size) * planned_epochs(trainer, examples, batch_size)
    return f"auto, {steps} steps"


def _steps_per_epoch(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size)) if examples else 1
