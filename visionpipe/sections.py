"""The config's sections: one typed, validated class per part of the pipeline.

``visionpipe.config.Config`` holds one of each. The lists of names that several
layers share (backbones, edge formats, tuner algorithms, the metrics the gate can
name) are defined here once, as ``Literal`` types and the tuples made from them.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_SLICE_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"  # a slice's (and a CSV attribute column's) name

# The lists several layers read: each is defined once, here.
Backbone = Literal["mobilenet_v2", "efficientnet_b0", "resnet50"]
BACKBONES: tuple[str, ...] = get_args(Backbone)  # trainer.model builds each of these
EdgeFormat = Literal["tflite_float16", "tflite_int8", "onnx"]
EDGE_FORMATS: tuple[str, ...] = get_args(EdgeFormat)  # components.edge converts each
TunerAlgorithm = Literal["random", "bayesian", "hyperband"]
TUNER_ALGORITHMS: tuple[str, ...] = get_args(TunerAlgorithm)  # trainer.tune runs each
# Metrics the gate can name: whole-model ones, and per-class ones (with ``class_name``).
# ``components.evaluate.metrics.evaluate_model`` computes exactly these (a test holds it).
# The robustness gate's variants of the test images (``visionpipe.variants`` makes them);
# ``accuracy_under_<variant>`` is a model metric like the others.
RobustnessVariant = Literal["jpeg_q30", "rescale", "exposure", "noise", "blur", "png"]
ROBUSTNESS_VARIANTS: tuple[str, ...] = get_args(RobustnessVariant)
ROBUSTNESS_PREFIX = "accuracy_under_"
ROBUSTNESS_METRICS: tuple[str, ...] = tuple(ROBUSTNESS_PREFIX + v for v in ROBUSTNESS_VARIANTS)
ModelMetric = Literal[
    (
        "accuracy",
        "top_k_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_precision",
        "weighted_recall",
        "weighted_f1",
        "log_loss",
        "expected_calibration_error",
        *ROBUSTNESS_METRICS,
    )
]
MODEL_METRICS: tuple[str, ...] = get_args(ModelMetric)
# What each slice of the test split is scored on (``evaluate.slices``).
SLICE_METRICS: tuple[str, ...] = tuple(m for m in MODEL_METRICS if m not in ROBUSTNESS_METRICS)
ExplainMethod = Literal["gradcam", "integrated_gradients"]
EXPLAIN_METHODS: tuple[str, ...] = get_args(ExplainMethod)  # trainer.explain runs each
ClassMetric = Literal["precision", "recall", "f1"]
CLASS_METRICS: tuple[str, ...] = get_args(ClassMetric)
LOWER_IS_BETTER = ("log_loss", "expected_calibration_error")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class IngestConfig(_Section):
    """How raw images become split TFRecord shards."""

    train_fraction: float = Field(0.8, gt=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    split_salt: str = Field("visionpipe", min_length=1, description="Salt of the split hash.")
    max_pixels: int = Field(40_000_000, gt=0, description="Reject images larger than this.")
    max_side: int = Field(0, ge=0, description="Scale longer sides down to this; 0: never.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="Quality of re-encoded JPEGs.")
    min_images_per_class: int = Field(2, ge=1)
    labels: list[str] = Field(
        default_factory=list, description="Allowed labels; others are rejected. Empty: any."
    )
    max_reject_fraction: float = Field(
        0.05, ge=0, le=1, description="Fail (after writing the report) above this."
    )
    shard_size_mb: float = Field(
        150, gt=0, description="Shards roll over at this size, so their count follows the data."
    )
    threads: int = Field(
        0, ge=0, description="Threads per Beam worker for the per-image work; 0: one per core."
    )
    batch_size: int = Field(64, ge=1, description="Images per element handed to the threads.")
    # JPEG and PNG payloads shrink by about 1% at level 1, which costs 15x level 0.
    gzip_level: int = Field(0, ge=0, le=9, description="Shard compression; 0: gzip framing only.")
    # Re-compression (JPEG q30) moves the 64-bit hash of a 64 px image by up to 8 bits
    # (median 2), re-scaling by up to 4; the sample's distinct images: 26 pairs of 1.1 M
    # within 6 bits, one of them across classes.
    near_duplicate_distance: int = Field(
        6,
        ge=-1,
        le=16,
        description="Perceptual-hash bits within which images are near-duplicates, kept in "
        "one split; -1: no perceptual hashing.",
    )
    near_duplicate_conflicts: Literal["report", "reject"] = Field(
        "report", description="Near-duplicates labelled differently: report them, or reject them."
    )

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> IngestConfig:
        total = self.train_fraction + self.valid_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                "train_fraction + valid_fraction + test_fraction must be 1. "
                f"Received: {self.train_fraction} + {self.valid_fraction} + "
                f"{self.test_fraction} = {total:g}"
            )
        return self


ResizeMode = Literal["stretch", "pad", "center_crop"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


class TransformConfig(_Section):
    """tf.Transform preprocessing: decode, resize, normalise, vocabulary."""

    image_size: int = Field(32, ge=8, le=1024, description="Square side in pixels.")
    resize_mode: ResizeMode = "stretch"


NAMED_WEIGHTS = ("none", "imagenet")  # trainer.weights that are no file


class TrainerConfig(_Section):
    """Model and training loop; model values are the hyperparameter defaults."""

    epochs: int = Field(
        0,
        ge=0,
        description="Epochs to train, as set; 0 (the default): auto, the epochs that make "
        "min_steps optimizer steps, and at least 3.",
    )
    min_steps: int = Field(
        750,
        ge=0,
        description="With epochs auto (0): train this many optimizer steps (at least 3 "
        "epochs), so small datasets get more epochs and large ones fewer.",
    )
    batch_size: int = Field(32, ge=1, description="The global batch, over all replicas.")
    learning_rate: float = Field(3e-3, gt=0, lt=1)
    scale_learning_rate: bool = Field(
        True, description="Multiply the learning rate by the number of replicas (linear rule)."
    )
    # The model family: a small CNN, or a keras.applications backbone with a new head.
    model: Literal["cnn", Backbone] = "cnn"
    weights: str = Field(
        "none", description="Backbone weights: none, imagenet, or a local .weights.h5 / .h5 file."
    )
    width: int = Field(16, ge=4, description="CNN: filters of the first conv block.")
    depth: int = Field(3, ge=1, le=6, description="CNN: number of conv blocks.")
    batch_norm: bool = Field(True, description="CNN: batch normalisation after each conv.")
    # Max: whether a feature is anywhere in the image. On the sample shapes (a small
    # shape on a textured background) the default run reached 0.972 test accuracy where
    # average pooling, which dilutes the shape in the background, reached 0.931; both
    # 1.0 on glyphs (`visionpipe run --set trainer.pooling=avg`, 2026-12-01).
    pooling: Literal["max", "avg"] = Field(
        "max", description="CNN: global pooling of the features."
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    fine_tune_epochs: int = Field(
        0, ge=0, description="Backbones: epochs with the top layers unfrozen, after the head."
    )
    fine_tune_layers: int = Field(20, ge=1, description="Backbone layers unfrozen to fine-tune.")
    fine_tune_learning_rate_factor: float = Field(0.1, gt=0, le=1)
    # Augmentation, active in training only; strengths are scaled by the tunable
    # ``augment_strength`` hyperparameter (default 1). None by default: a flip changes
    # the class of letters, digits, arrows and anything with a handedness (glyphs: 0.14
    # test accuracy with flips and rotation, 1.0 without). Where they keep the class they
    # can help (shapes: 1.0 against 0.98), so ``flip`` and ``rotation`` are tunable: list
    # choices in ``tuner.search_space`` to let validation data decide.
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: float = Field(
        0.0, ge=0, le=0.5, description="Fraction of a full turn (0.5: any angle)."
    )
    zoom: float = Field(0.0, ge=0, lt=1)
    translation: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    brightness: float = Field(0.0, ge=0, lt=1)
    augment_strength: float = Field(1.0, ge=0, le=2)
    mix: Literal["none", "mixup", "cutmix"] = "none"
    mix_alpha: float = Field(0.2, gt=0, description="Beta(alpha, alpha) mixing weights.")
    class_weights: Literal["auto", "balanced", "none"] = Field(
        "auto", description="auto: balanced when the largest class is 1.5x the smallest."
    )
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    early_stopping_patience: int = Field(8, ge=1, description="Epochs without val_loss gain.")
    checkpoint_every: int = Field(
        2, ge=1, description="Epochs between resume checkpoints (a kill loses fewer than this)."
    )
    tensorboard: bool = Field(False, description="Write TensorBoard logs (a train artifact).")
    mixed_precision: Literal["auto", "on", "off"] = Field(
        "auto", description="mixed_float16; auto: when a GPU is present."
    )
    xla: bool = Field(False, description="Compile the train step with XLA.")
    cache_max_mb: int = Field(
        2048, ge=0, description="Cache the decoded split in memory below this size."
    )
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    seed: int = 42

    @model_validator(mode="after")
    def _weights_fit_the_model(self) -> TrainerConfig:
        if self.model == "cnn" and self.weights != "none":
            raise ValueError(f"weights={self.weights!r} needs a backbone model, not 'cnn'")
        return self


class TunerConfig(_Section):
    """keras-tuner search; the search space maps hyperparameter names to choices."""

    algorithm: TunerAlgorithm = "random"
    # No search by default: on two cores, trials long enough to rank candidates as the
    # final training would (8+ epochs on the sample data; 4-epoch trials chose settings
    # that lost at full length, glyphs 0.76 against 1.0) do not fit a one-minute budget.
    max_trials: int = Field(0, ge=0, description="0 skips the search: defaults are used.")
    epochs: int = Field(8, ge=1, description="Epochs per trial.")
    search_space: dict[str, list[float | str]] = Field(
        default_factory=lambda: {"learning_rate": [2e-3, 3e-3], "dropout": [0.1, 0.2]}
    )
    max_consecutive_failed_trials: int = Field(
        3, ge=1, description="Stop the search after this many failed trials in a row."
    )

    @model_validator(mode="after")
    def _known_hyperparameters(self) -> TunerConfig:
        if self.max_trials and not self.search_space:
            raise ValueError(
                "search_space is empty: every trial would train the same model; "
                "give choices for some of " + ", ".join(TUNABLE) + " or set max_trials=0"
            )
        unknown = sorted(set(self.search_space) - set(TUNABLE))
        if unknown:
            raise ValueError(
                f"search_space names unknown hyperparameters {unknown}; tunable: {sorted(TUNABLE)}"
            )
        empty = sorted(k for k, v in self.search_space.items() if not v)
        if empty:
            raise ValueError(f"search_space has no choices for {empty}")
        for name, values in self.search_space.items():
            for value in values:
                _check_choice(name, value)
        return self


# Hyperparameters the tuner may search: each is the ``trainer`` key of the same name,
# whose default is the hyperparameter's default and whose bounds are the choices' bounds.
TUNABLE = (
    "learning_rate",
    "width",
    "depth",
    "dropout",
    "batch_size",
    "augment_strength",
    "flip",
    "rotation",
)


def _check_choice(name: str, value: float | str) -> None:
    """A search-space choice must be a valid value of the trainer key it tunes."""
    try:
        TrainerConfig.model_validate({name: value})
    except ValidationError as err:
        problem = err.errors()[0]["msg"]
        raise ValueError(
            f"search_space.{name}: choice {value!r} is not a valid trainer.{name} ({problem})"
        ) from None


class Threshold(_Section):
    """A bound on a metric's value: ``lower <= value <= upper`` (either may be omitted).

    With ``class_name`` the metric is per class (precision, recall or f1); ``"*"``
    applies the bound to every class. With ``slice`` (``camera=phone``, or
    ``camera=*`` for every value of a slice in ``evaluate.slices``) it bounds the
    metric on that slice's test examples, when there are ``evaluate.min_slice_examples``.
    """

    metric: str
    class_name: str | None = None
    slice: str | None = None
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _valid(self) -> Threshold:
        _check_metric(self.metric, self.class_name)
        if self.lower is None and self.upper is None:
            raise ValueError(f"threshold on {self.metric!r} needs lower and/or upper")
        if self.slice is not None:
            name, _, value = self.slice.partition("=")
            if not re.match(_SLICE_NAME, name) or not value:
                raise ValueError(
                    f"threshold slice {self.slice!r}: expected name=value or name=* "
                    "(camera=phone, camera=*)"
                )
            if self.class_name is not None or self.metric not in SLICE_METRICS:
                raise ValueError(
                    f"threshold slice {self.slice!r}: slices are scored on "
                    f"{', '.join(SLICE_METRICS)}"
                )
        return self

    @property
    def slice_name(self) -> str | None:
        """The slice's name (``camera`` of ``camera=*``)."""
        return None if self.slice is None else self.slice.partition("=")[0]


class SliceGap(_Section):
    """The largest gap a metric may have between the values of a slice (max - min)."""

    slice: str = Field(pattern=_SLICE_NAME)
    metric: str = "accuracy"
    max_gap: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _valid(self) -> SliceGap:
        _check_metric(self.metric, None)
        return self


class ChangeThreshold(_Section):
    """How the candidate must compare with the champion on a metric.

    The improvement is ``candidate - champion`` when higher is better, else
    ``champion - candidate``; ``absolute`` is its minimum (negative: a tolerated loss),
    ``relative`` its minimum as a fraction of the champion's value.
    """

    metric: str
    class_name: str | None = None
    direction: Literal["higher", "lower"] | None = None  # default: from the metric
    absolute: float | None = None
    relative: float | None = None

    @model_validator(mode="after")
    def _valid(self) -> ChangeThreshold:
        _check_metric(self.metric, self.class_name)
        if self.absolute is None and self.relative is None:
            raise ValueError(f"change threshold on {self.metric!r} needs absolute and/or relative")
        return self

    @property
    def higher_is_better(self) -> bool:
        """The direction, configured or from the metric."""
        if self.direction is not None:
            return self.direction == "higher"
        return self.metric not in LOWER_IS_BETTER


def _check_metric(metric: str, class_name: str | None) -> None:
    if class_name is None and metric not in MODEL_METRICS:
        hint = " (per-class: set class_name)" if metric in CLASS_METRICS else ""
        raise ValueError(f"unknown metric {metric!r}{hint}; known: {', '.join(MODEL_METRICS)}")
    if class_name is not None and metric not in CLASS_METRICS:
        raise ValueError(f"unknown per-class metric {metric!r}; known: {', '.join(CLASS_METRICS)}")


class SignificanceConfig(_Section):
    """Require the accuracy gain over the champion to be statistically real."""

    test: Literal["none", "mcnemar", "bootstrap"] = "none"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    resamples: int = Field(2000, ge=100, description="Bootstrap resamples.")


class EvaluateConfig(_Section):
    """The evaluation gate.

    ``min_accuracy`` and ``champion_tolerance`` are shorthands for the most common
    value and change thresholds (null disables them); ``thresholds`` and
    ``change_thresholds`` hold any others.
    """

    min_accuracy: float | None = Field(0.8, ge=0, le=1, description="Accuracy lower bound.")
    champion_tolerance: float | None = Field(
        0.0, ge=0, le=1, description="Candidate accuracy may trail the champion's by this."
    )
    thresholds: list[Threshold] = Field(default_factory=list)
    change_thresholds: list[ChangeThreshold] = Field(default_factory=list)
    significance: SignificanceConfig = SignificanceConfig()
    bless_without_thresholds: bool = Field(
        False, description="With no thresholds at all: bless (true) or never bless (false)."
    )
    top_k: int = Field(3, ge=1, description="k of top_k_accuracy (at most the class count).")
    calibration_bins: int = Field(15, ge=2)
    batch_size: int = Field(64, ge=1)
    gallery_size: int = Field(
        16, ge=0, le=200, description="Worst test mistakes in the Grad-CAM gallery; 0: none."
    )
    robustness: list[RobustnessVariant] = Field(
        default_factory=lambda: list(ROBUSTNESS_VARIANTS),
        description="Variants of the test images both models are scored on "
        "(accuracy_under_<variant>); empty: none.",
    )
    label_noise: bool = Field(
        True, description="List the training images whose label is probably wrong (cleanlab)."
    )
    label_noise_folds: int = Field(5, ge=2, le=20, description="Its cross-validation folds.")
    slices: list[str] = Field(
        default_factory=list,
        description="Slice the test metrics by these: CSV columns, folder, folder1.., "
        "size, brightness, format.",
    )
    slice_gaps: list[SliceGap] = Field(default_factory=list)
    min_slice_examples: int = Field(
        30, ge=1, description="Slices with fewer test examples are reported, not gated."
    )
    slice_resamples: int = Field(
        200, ge=50, description="Bootstrap resamples of each slice's confidence intervals."
    )

    @field_validator("slices")
    @classmethod
    def _slice_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(_SLICE_NAME, name):
                raise ValueError(f"slice {name!r}: a name of letters, digits and _")
        if len(set(names)) != len(names):
            raise ValueError(f"slices {names}: a name appears twice")
        return names

    @model_validator(mode="after")
    def _slices_named(self) -> EvaluateConfig:
        named = [(t.slice_name, f"threshold on {t.metric} [{t.slice}]") for t in self.thresholds]
        named += [(g.slice, f"slice gap of {g.metric} over {g.slice}") for g in self.slice_gaps]
        for name, what in named:
            if name is not None and name not in self.slices:
                raise ValueError(
                    f"{what}: {name!r} is not in evaluate.slices ({self.slices or 'none'})"
                )
        return self

    def value_thresholds(self) -> list[Threshold]:
        """Every value threshold, the shorthand included."""
        extra = (
            []
            if self.min_accuracy is None
            else [Threshold(metric="accuracy", lower=self.min_accuracy)]
        )
        return [*extra, *self.thresholds]

    def all_change_thresholds(self) -> list[ChangeThreshold]:
        """Every change threshold, the shorthand included."""
        extra = []
        if self.champion_tolerance is not None:
            extra = [ChangeThreshold(metric="accuracy", absolute=-self.champion_tolerance)]
        return [*extra, *self.change_thresholds]


class PushConfig(_Section):
    """Where blessed models go."""

    model_name: str = Field("visionpipe-classifier", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    serving_root: str = Field("", description="Empty: <VISIONPIPE_HOME>/serving.")
    keep_versions: int = Field(
        0,
        ge=0,
        description="Versions kept in the serving root (champion, previous always); 0: all.",
    )


class MlflowConfig(_Section):
    """Experiment tracking."""

    tracking_uri: str = Field("", description="Empty: SQLite under VISIONPIPE_HOME.")
    experiment: str = Field("visionpipe", min_length=1)
    system_metrics_interval_s: float = Field(
        10.0,
        ge=0,
        description="Seconds between samples of CPU, memory and disk (MLflow's system "
        "metrics) on the pipeline run and the long steps' runs; 0: none.",
    )


class BeamConfig(_Section):
    """Apache Beam runner options shared by ingest and transform."""

    runner: str = "DirectRunner"
    direct_num_workers: int = Field(1, ge=0, description="DirectRunner workers; 0 = one per core.")
    # multi_threading once lost records here (1 run in 7 on 3000 images: 2 examples
    # missing from the shards, 16 from the counts). The shard loss was TensorFlow's GZIP
    # reader (components/ingest/shards.py), now avoided; and ingest now fails, committing
    # nothing, on any loss in the shards or the counts. The repeat test (make bench
    # BENCH_ARGS="--only runners") found no loss in either mode since (README, Beam).
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"
    extra_args: list[str] = Field(default_factory=list, description="Passed to Beam as they are.")
    worker_start_timeout_s: float = Field(
        60,
        gt=0,
        description="With an external SDK worker pool: seconds its probe worker has to connect.",
    )


class EdgeConfig(_Section):
    """Edge exports of a pushed model (``pipeline.edge_export``, ``visionpipe export-edge``)."""

    max_int8_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="Fail when int8 accuracy is this far below the SavedModel's."
    )
    representative_images: int = Field(
        300, ge=1, le=100_000, description="Training images that calibrate int8 quantisation."
    )
    onnx_opset: int = Field(17, ge=13, le=21)
    latency_runs: int = Field(50, ge=1, description="Single-image calls timed per format.")


class PredictConfig(_Section):
    """Scoring images with a served model (``predict``, ``predict-batch``)."""

    top_k: int = Field(3, ge=1, description="Classes listed per image in batch predictions.")
    batch_size: int = Field(64, ge=1, description="Images per model call.")
    max_request_images: int = Field(
        256, ge=1, description="Images one request to the served MLflow Model may hold."
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Encoded bytes one request may hold."
    )


class MonitorConfig(_Section):
    """The prediction log and the drift detectors (``visionpipe monitor``)."""

    log: bool = Field(True, description="Log predictions of predict, predict-batch and serving.")
    log_uri: str = Field("", description="Folder or prefix of the log; empty: <home>/predictions.")
    sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of images logged, chosen by content hash."
    )
    flush_records: int = Field(1000, ge=1, description="Records per log file at most.")
    flush_seconds: float = Field(
        30.0, gt=0, description="A served model's buffer is written at least this often."
    )
    max_log_mb: float = Field(
        1024, ge=0, description="Oldest log files of a model are removed above this; 0: no cap."
    )
    log_images: bool = Field(False, description="Keep each logged image's bytes too.")
    reference_sample: int = Field(
        2000, ge=50, description="Test images whose embeddings the reference profile keeps."
    )
    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="False-alarm rate of all distribution tests together."
    )
    min_records: int = Field(50, ge=10, description="Fewer in a window: not enough data.")
    max_sample: int = Field(
        1000, ge=50, description="Records of a window the distribution tests read at most."
    )
    permutations: int = Field(500, ge=50, description="Permutations of the embedding test.")
    ood_false_alarm: float = Field(
        0.05, gt=0, lt=0.5, description="Share of test images the OOD threshold flags."
    )
    ood_neighbours: int = Field(5, ge=1, description="k of the k-th nearest neighbour distance.")
    accuracy_margin: float = Field(
        0.05, ge=0, le=1, description="Estimated or live accuracy this far below the gate alarms."
    )


AnomalyKind = Literal[
    "class_vanished",
    "class_appeared",
    "split_missing_class",
    "format_unseen",
    "property_outside",
    "split_imbalance",
]
ANOMALY_KINDS: tuple[str, ...] = get_args(AnomalyKind)  # components.validate checks each
Severity = Literal["fail", "warn", "off"]
DEFAULT_SEVERITY: dict[str, str] = {kind: "warn" for kind in ANOMALY_KINDS}
DEFAULT_SEVERITY["class_vanished"] = "fail"


class ValidateConfig(_Section):
    """Data validation between ingest and the data check (``components/validate``)."""

    enabled: bool = Field(True, description="Profile and check every run's data.")
    schema_uri: str = Field(
        "",
        description="A schema YAML (visionpipe schema infer); empty: the one inferred from "
        "the last successful run's profile.",
    )
    severity: dict[AnomalyKind, Severity] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY),
        description="fail (stops the run before transform), warn or off, per anomaly kind; "
        "kinds not named keep their default (class_vanished: fail, the rest: warn).",
    )
    outside_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of a split outside a property's range that alarms."
    )
    min_examples: int = Field(20, ge=1, description="Smaller splits are not range-checked.")
    balance_alpha: float = Field(
        0.001, gt=0, lt=0.5, description="Significance of the class-balance test per split."
    )
    sample: int = Field(
        5000, ge=1, description="Images per split whose pixel properties are measured."
    )

    @field_validator("severity", mode="before")
    @classmethod
    def _off_is_off(cls, value: Any) -> Any:
        # YAML reads a bare ``off`` as false.
        if isinstance(value, dict):
            return {k: "off" if v is False else v for k, v in value.items()}
        return value

    @field_validator("severity")
    @classmethod
    def _every_kind_has_a_severity(cls, value: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_SEVERITY, **value}


RetrainReason = Literal["always", "data_changed", "drift"]
RETRAIN_REASONS: tuple[str, ...] = get_args(RetrainReason)


class PipelineConfig(_Section):
    """The KFP pipeline itself."""

    name: str = Field("visionpipe", pattern=r"^[a-z0-9][a-z0-9-]*$")
    image: str = Field("visionpipe:0.1.0", min_length=1, description="Base image of every step.")
    gpu_image: str = Field(
        "", description="Image of tune and train when they get GPUs (empty: image + '-gpu')."
    )
    gpus: int = Field(0, ge=0, description="Accelerators per tune and train step on a cluster.")
    accelerator_type: str = Field("nvidia.com/gpu", min_length=1)
    retrain_when: list[RetrainReason] = Field(
        default_factory=lambda: ["always"],
        description="When a run trains: always; data_changed (data, settings or version "
        "differ from the last trained run); drift (a monitor run found drift or an accuracy "
        "drop since); several: any of them.",
    )
    edge_export: list[EdgeFormat] = Field(
        default_factory=list,
        description="Edge formats made after push (tflite_float16, tflite_int8, onnx); "
        "none by default.",
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a failed step whose failures can be transient (every step "
        "but tune and train); locally a step that failed on bad input is not retried.",
    )
    retry_backoff_s: int = Field(
        10, ge=0, le=3600, description="Seconds before a step's first retry; doubled after."
    )
    retry_training: bool = Field(
        False, description="Retry tune and train too (a retry repeats the whole search or fit)."
    )
    notify_url: str = Field(
        "",
        description="Webhook POSTed a JSON summary when a run ends (see notify_on); empty: none.",
    )
    notify_on: Literal["failure", "always"] = Field(
        "failure", description="When notify_url is called: on failure only, or always."
    )
    cache: bool = Field(
        True,
        description="Reuse ingest's and transform's outputs when what they depend on (the "
        "input's content, the step's settings, the version) is unchanged.",
    )
    cache_root: str = Field("", description="Where the step cache is kept; empty: <home>/cache.")

    @property
    def training_image(self) -> str:
        """The image of the tune and train steps."""
        if self.gpus == 0:
            return self.image
        return self.gpu_image or f"{self.image}-gpu"
