import io
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from components.transform.preprocessing import (
    decode_and_resize,
    make_preprocessing_fn,
    raw_feature_spec,
)
from components.transform.transform import transform_output
from visionpipe import features as F


def _png(colour, size=(6, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_preprocessing_fn_normalises_with_training_statistics_and_builds_vocabulary():
    raw = [
        {F.IMAGE_ENCODED: _png((0, 0, 0)), F.LABEL_TEXT: b"dark"},
        {F.IMAGE_ENCODED: _png((0, 0, 0)), F.LABEL_TEXT: b"dark"},
        {F.IMAGE_ENCODED: _png((0, 0, 0)), F.LABEL_TEXT: b"dark"},
        {F.IMAGE_ENCODED: _png((200, 100, 40)), F.LABEL_TEXT: b"bright"},
    ]
    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(raw_feature_spec())
    )
    with tempfile.TemporaryDirectory() as temp, tft_beam.Context(temp_dir=temp):
        (out, _), _ = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(4, "stretch")
        )
    # Per channel: mean = v/4, std = sqrt(3)/4 * v, so dark -> -1/sqrt(3), bright -> sqrt(3).
    dark, bright = np.asarray(out[0][F.TRANSFORMED_IMAGE]), np.asarray(out[3][F.TRANSFORMED_IMAGE])
    assert dark.shape == (4, 4, 3)
    np.testing.assert_allclose(dark, -1 / np.sqrt(3), atol=1e-3)
    np.testing.assert_allclose(bright, np.sqrt(3), atol=1e-3)
    # The vocabulary is ordered by frequency: "dark" (3) gets id 0.
    assert [row[F.TRANSFORMED_LABEL] for row in out] == [0, 0, 0, 1]


@pytest.mark.parametrize("mode", ["stretch", "pad", "center_crop"])
def test_every_resize_mode_gives_the_target_square(mode):
    wide = _png((255, 255, 255), size=(40, 20))
    images = decode_and_resize(tf.constant([wide, _png((9, 9, 9), size=(7, 30))]), 16, mode)
    assert images.shape == (2, 16, 16, 3)


def test_pad_keeps_aspect_and_crop_fills_the_square():
    wide = tf.constant([_png((255, 255, 255), size=(40, 20))])
    padded = decode_and_resize(wide, 16, "pad")[0].numpy()
    cropped = decode_and_resize(wide, 16, "center_crop")[0].numpy()
    stretched = decode_and_resize(wide, 16, "stretch")[0].numpy()
    assert padded[0].max() == 0 and padded[-1].max() == 0  # letterbox bars above and below
    assert padded[8].min() == pytest.approx(255)
    assert cropped.min() == pytest.approx(255) and stretched.min() == pytest.approx(255)


def test_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="resize mode"):
        decode_and_resize(tf.constant([_png((0, 0, 0))]), 8, "squash")


def test_transform_step_writes_every_split_and_the_graph(ingested, transformed):
    assert transformed.examples == ingested.examples
    assert sorted(transformed.labels) == ["circle", "square", "triangle"]
    output = transform_output(transformed.transform_graph_uri)
    spec = output.transformed_feature_spec()
    assert spec[F.TRANSFORMED_IMAGE].shape == [16, 16, 3]
    files = tf.io.gfile.glob(F.split_pattern(transformed.examples_uri, "train"))
    count = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    assert count == ingested.examples["train"]


def test_transform_graph_serves_raw_bytes_without_a_label(transformed, tiny_dataset):
    layer = transform_output(transformed.transform_graph_uri).transform_features_layer()
    data = (tiny_dataset / "circle" / "circle_00000.jpg").read_bytes()
    out = layer({F.IMAGE_ENCODED: tf.constant([data, data])})
    assert out[F.TRANSFORMED_IMAGE].shape == (2, 16, 16, 3)
    assert F.TRANSFORMED_LABEL not in out
