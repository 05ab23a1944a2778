"""The artifact contracts between steps: feature keys, split names, file names."""

from __future__ import annotations

# Raw examples written by ingest (the conventional tf.train.Example image keys).
IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
LABEL_TEXT = "image/class/text"
FILENAME = "image/filename"
SHA256 = "image/key/sha256"

# A source's attributes (a CSV's extra columns, a folder dataset's ``folder``), as
# ``attribute/<name>`` bytes features of the raw example; evaluation slices by them.
ATTRIBUTE_PREFIX = "attribute/"

SPLITS = ("train", "valid", "test")

# Files in the ingest output directory.
STATS_FILE = "stats.json"
REJECTS_FILE = "rejects.jsonl"
NEAR_DUPLICATES_FILE = "near_duplicates.json"  # the groups of perceptually near-identical images
SHARD_SUFFIX = ".tfrecord.gz"

# Transformed examples and the transform graph.
TRANSFORMED_IMAGE = "image"
TRANSFORMED_LABEL = "label"
LABEL_VOCABULARY = "label_vocabulary"
LABEL_FREQUENCIES = "label_frequencies"
TRANSFORM_STATISTICS_FILE = "statistics.json"  # next to transform_fn/ in the graph dir

# Trainer / evaluate / push artifacts.
HYPERPARAMETERS_FILE = "hyperparameters.json"
BLESSING_FILE = "blessing.json"
REPORT_FILE = "report.md"  # the evaluation report, next to the blessing
EXAMPLE_IMAGE_FILE = "example_image"  # a test image's encoded bytes, next to the blessing
TRAINING_RECORD = "assets.extra/training.json"  # in the exported model: labels, metrics
# The served classifier as a Keras file, in the exported model: what explanations (its
# layers' gradients) and edge exports (TFLite, ONNX converters) start from.
CLASSIFIER_FILE = "assets.extra/classifier.keras"
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "image_bytes"


def split_pattern(examples_uri: str, split: str) -> str:
    """Glob of the shards of one split under an examples directory."""
    return f"{examples_uri.rstrip('/')}/{split}/*{SHARD_SUFFIX}"


# Monitoring: the reference profile evaluate makes for a candidate (next to its
# blessing) and push copies into the served version, beside the training record.
REFERENCE_PROFILE = "assets.extra/reference_profile.json"
PROFILE_FILE = "reference_profile.json"  # its name next to the blessing
MONITOR_SIGNATURE = "monitor"  # the exported model's signature of what monitoring compares
