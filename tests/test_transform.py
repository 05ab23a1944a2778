import io
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from components.transform.preprocessing import make_preprocessing_fn
from components.transform.transform import pixel_statistics
from trainer.data import parse_transformed
from visionpipe import features as F
from visionpipe.pixels import decode_and_resize, resize_batch
from visionpipe.transform_graph import TransformGraph, raw_feature_spec, transform_output


def _png(colour, size=(6, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_preprocessing_fn_statistics_vocabulary_and_frequencies(tmp_path):
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
        (out, _), transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(4, "stretch")
        )
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path))
    # Pixels stay 8-bit values; the statistics are per channel over the training data:
    # mean = v/4 and std = sqrt(3)/4 * v for a channel value v in one of four images.
    dark, bright = np.asarray(out[0][F.TRANSFORMED_IMAGE]), np.asarray(out[3][F.TRANSFORMED_IMAGE])
    assert dark.shape == (4, 4, 3) and dark.max() == 0
    assert (bright == [200, 100, 40]).all()
    assert set(out[0]) == {F.TRANSFORMED_IMAGE, F.TRANSFORMED_LABEL}  # nothing else per request
    # The vocabulary is ordered by frequency: "dark" (3) gets id 0.
    assert [row[F.TRANSFORMED_LABEL] for row in out] == [0, 0, 0, 1]
    output = transform_output(str(tmp_path))
    assert output.vocabulary_by_name(F.LABEL_FREQUENCIES) == [b"3 dark", b"1 bright"]


@pytest.mark.parametrize("mode", ["stretch", "pad", "center_crop"])
def test_every_resize_mode_gives_the_target_square(mode):
    wide = _png((255, 255, 255), size=(40, 20))
    images = decode_and_resize(tf.constant([wide, _png((9, 9, 9), size=(7, 30))]), 16, mode)
    assert images.shape == (2, 16, 16, 3)


def test_decoded_pixels_resize_exactly_like_the_bytes_path():
    sizes = [(40, 20), (7, 30)]
    rng = np.random.default_rng(0)
    for mode in ("stretch", "pad", "center_crop"):
        for w, h in sizes:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            from_bytes = decode_and_resize(tf.constant([buf.getvalue()]), 16, mode)
            from_pixels = resize_batch(tf.constant(pixels[None]), 16, mode)
            assert from_bytes.dtype == tf.uint8
            np.testing.assert_array_equal(from_bytes.numpy(), from_pixels.numpy())


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
    graph = TransformGraph.load(transformed.transform_graph_uri)
    assert graph.image_shape == (16, 16, 3) and graph.labels == transformed.labels
    train_counts = ingested.stats["per_split"]["train"]
    assert graph.statistics["label_counts"] == {c: train_counts[c] for c in graph.labels}
    assert len(graph.statistics["image_mean"]) == len(graph.statistics["image_std"]) == 3
    assert all(0 < m < 255 for m in graph.statistics["image_mean"])
    files = tf.io.gfile.glob(F.split_pattern(transformed.examples_uri, "train"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP"))
    assert len(records) == ingested.examples["train"]
    images, labels = parse_transformed(tf.stack(records), graph.image_shape)
    assert images.dtype == tf.uint8 and images.shape[1:] == (16, 16, 3)
    assert set(labels.numpy()) == {0, 1, 2}
    # One byte per pixel value, plus the example's framing and the label.
    per_example = np.mean([len(r.numpy()) for r in records])
    assert 16 * 16 * 3 < per_example < 16 * 16 * 3 + 40


def test_pixel_statistics_from_exact_sums():
    # Four 4x4 images, three black and one (200, 100, 40): per channel over the 64
    # pixels, mean = v/4 and std = sqrt(3)/4 * v.
    value = np.array([200, 100, 40])
    mean, std = pixel_statistics(list(16 * value), list(16 * value**2), 64)
    np.testing.assert_allclose(mean, value / 4, rtol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(3) / 4 * value, rtol=1e-12)
    assert pixel_statistics([64, 0, 0], [64, 0, 0], 64)[1] == [pytest.approx(1e-3)] * 3
    with pytest.raises(ValueError, match="no pixels"):
        pixel_statistics([0, 0, 0], [0, 0, 0], 0)


def test_transform_statistics_match_the_training_pixels(transformed):
    graph = TransformGraph.load(transformed.transform_graph_uri)
    files = tf.io.gfile.glob(F.split_pattern(transformed.examples_uri, "train"))
    records = tf.stack(list(tf.data.TFRecordDataset(files, compression_type="GZIP")))
    images, _ = parse_transformed(records, graph.image_shape)
    values = images.numpy().astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(graph.statistics["image_mean"], values.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(graph.statistics["image_std"], values.std(axis=0), rtol=1e-3)


def test_transform_graph_serves_raw_bytes_without_a_label(transformed, tiny_dataset):
    layer = transform_output(transformed.transform_graph_uri).transform_features_layer()
    data = (tiny_dataset / "circle" / "circle_00000.jpg").read_bytes()
    out = layer({F.IMAGE_ENCODED: tf.constant([data, data])})
    assert out[F.TRANSFORMED_IMAGE].shape == (2, 16, 16, 3)
    assert F.TRANSFORMED_LABEL not in out


class _Counter:
    def __init__(self, name, committed, attempted):
        from types import SimpleNamespace

        self.key = SimpleNamespace(metric=SimpleNamespace(name=name))
        self.committed, self.attempted = committed, attempted


class _Result:
    """A finished job as a runner reports it: only what ``counter_values`` reads."""

    def __init__(self, counters):
        self._counters = counters

    def metrics(self):
        from types import SimpleNamespace

        return SimpleNamespace(query=lambda _filter: {"counters": self._counters})


def test_counters_are_committed_or_else_attempted_and_never_a_silent_zero():
    from visionpipe.beam import MetricsUnavailableError, counter_values

    both = _Result([_Counter("examples_train", 7, 9), _Counter("examples_train", 3, 3)])
    assert counter_values(both, "transform") == {"examples_train": 10}
    attempted = _Result([_Counter("examples_train", None, 12)])  # a runner without committed
    assert counter_values(attempted, "transform") == {"examples_train": 12}
    with pytest.raises(MetricsUnavailableError, match=r"the Beam runner \(_Result\) reported no"):
        counter_values(_Result([]), "transform")
    with pytest.raises(MetricsUnavailableError, match="without a committed or attempted value"):
        counter_values(_Result([_Counter("examples_train", None, None)]), "transform")


def test_a_split_that_writes_fewer_examples_than_it_read_or_ingest_wrote_fails_and_keeps_nothing(
    ingested, tmp_path
):
    # The loss once seen on the FnApiRunner's worker processes (transform.py): whatever
    # the runner, a split must write what it read and read what ingest wrote.
    from components.transform.transform import TransformLossError, _check_counts

    written = {s: sum(n.values()) for s, n in ingested.stats["per_split"].items()}
    read = {f"read_{s}": n for s, n in written.items()}
    outputs = [tmp_path / "examples", tmp_path / "graph"]
    for out in outputs:
        (out / "train").mkdir(parents=True)
    _check_counts(ingested.output_uri, read, written, [str(o) for o in outputs])  # all there
    short = {**written, "train": written["train"] - 1}
    with pytest.raises(TransformLossError, match=r"the train split wrote \d+ examples of \d+ read"):
        _check_counts(ingested.output_uri, read, short, [str(o) for o in outputs])
    assert not any(o.exists() for o in outputs)
    unread = {**read, "read_test": read["read_test"] - 1}
    with pytest.raises(TransformLossError, match=r"the test split wrote \d+ examples of \d+ read"):
        _check_counts(ingested.output_uri, unread, {**written, "test": written["test"] - 1}, [])
