import io
import json
import shutil

import fsspec
import pytest
import tensorflow as tf
from PIL import Image

from components.ingest.images import Rejected, inspect
from components.ingest.ingest import assign_split, run_ingest
from pipelines.sample_data import SampleSpec, generate
from visionpipe import features as F
from visionpipe import storage
from visionpipe.config import load_config
from visionpipe.sources import DataError, check_classes, list_sources


def _encode(mode, fmt, size=(8, 6), **save):
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt, **save)
    return buf.getvalue()


def _records(pattern):
    files = tf.io.gfile.glob(pattern)
    return [
        tf.train.Example.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]


# --- sources -----------------------------------------------------------------


def test_folder_tree_labels_by_first_level_folder_including_nested(tmp_path):
    (tmp_path / "cat" / "indoor").mkdir(parents=True)
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "cat" / "indoor" / "b.jpg").write_bytes(b"x")
    (tmp_path / "dog" / "c.jpg").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("not a class")
    sources = list_sources(str(tmp_path))
    assert [(s.uri.split("/")[-1], s.label) for s in sources] == [
        ("a.jpg", "cat"),
        ("b.jpg", "cat"),
        ("c.jpg", "dog"),
    ]


def test_csv_with_header_and_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.jpg,cat\n/abs/b.jpg,dog\n\n")
    sources = list_sources(str(tmp_path / "list.csv"))
    assert [(s.uri, s.label) for s in sources] == [
        ("/abs/b.jpg", "dog"),
        (f"{tmp_path}/imgs/a.jpg", "cat"),
    ]


def test_csv_row_with_wrong_columns_names_the_line(tmp_path):
    (tmp_path / "list.csv").write_text("a.jpg,cat\nb.jpg\n")
    with pytest.raises(DataError, match="list.csv:2"):
        list_sources(str(tmp_path / "list.csv"))


def test_missing_empty_and_single_class_inputs_fail_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list_sources(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no labelled images"):
        list_sources(str(tmp_path / "empty"))
    (tmp_path / "one" / "cat").mkdir(parents=True)
    (tmp_path / "one" / "cat" / "a.jpg").write_bytes(b"x")
    one = str(tmp_path / "one")
    with pytest.raises(DataError, match="one.*at least 2 classes"):
        check_classes(one, list_sources(one), 1)


def test_object_store_uri_through_fsspec():
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/data/cat/a.jpg", b"x")
    fs.pipe("/bucket/data/dog/b.jpg", b"y")
    sources = list_sources("memory://bucket/data")
    assert [s.label for s in sources] == ["cat", "dog"]
    assert [storage.read_bytes(s.uri) for s in sources] == [b"x", b"y"]
    assert all(s.uri.startswith("memory://") for s in sources)


# --- one image ---------------------------------------------------------------


def test_plain_jpeg_and_png_keep_their_bytes():
    for fmt in ("JPEG", "PNG"):
        data = _encode("RGB", fmt)
        image = inspect(data, 10**6)
        assert image.encoded == data and (image.width, image.height) == (8, 6)


def test_rgba_png_and_bmp_are_reencoded_as_rgb_jpeg():
    for data in (_encode("RGBA", "PNG"), _encode("RGB", "BMP")):
        image = inspect(data, 10**6)
        assert image.format == "jpeg" and image.channels == 3
        assert Image.open(io.BytesIO(image.encoded)).mode == "RGB"


@pytest.mark.parametrize(
    "data,reason",
    [(b"", "empty_file"), (b"hello world", "not_an_image")],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected) as info:
        inspect(data, 10**6)
    assert info.value.reason == reason


def test_too_large_is_rejected_from_the_header():
    with pytest.raises(Rejected) as info:
        inspect(_encode("RGB", "PNG", size=(100, 100)), max_pixels=5000)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("perceptual", [False, True])
@pytest.mark.parametrize("size", [(64, 64), (320, 240)])
def test_truncated_image_is_rejected(size, perceptual):
    # JPEGs kept as they are are decoded at a reduced scale: still every block is read.
    data = _encode("RGB", "JPEG", size=size)
    with pytest.raises(Rejected) as info:
        inspect(data[: len(data) // 2], 10**6, perceptual=perceptual)
    assert info.value.reason == "undecodable"


# --- the Beam pipeline -------------------------------------------------------


def test_split_is_a_stable_function_of_content():
    config = load_config().ingest
    splits = [assign_split(f"{i:064x}", config) for i in range(2000)]
    assert splits == [assign_split(f"{i:064x}", config) for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85
    assert {"valid", "test"} <= set(splits)


def _permissive(config):
    ingest = config.ingest.model_copy(update={"max_reject_fraction": 1.0})
    return config.model_copy(update={"ingest": ingest})


def test_every_input_is_written_rejected_or_counted_as_duplicate(tmp_path, tiny_config):
    data = tmp_path / "data"
    generate(data, SampleSpec(classes=2, per_class=6, size=24, seed=3))
    (data / "circle" / "broken.jpg").write_bytes(b"not an image")
    (data / "circle" / "empty.png").write_bytes(b"")
    shutil.copy(data / "square" / "square_00000.jpg", data / "square" / "again.jpg")
    shutil.copy(data / "circle" / "circle_00001.jpg", data / "square" / "conflict.jpg")
    result = run_ingest(str(data), str(tmp_path / "out"), _permissive(tiny_config))
    stats = result.stats
    assert stats["inputs"] == 16
    assert stats["inputs"] == stats["written"] + stats["rejected"] + stats["duplicates"]
    assert stats["duplicates"] == 1
    assert stats["rejected_by_reason"] == {
        "conflicting_labels": 2,
        "empty_file": 1,
        "not_an_image": 1,
    }
    rejects = [json.loads(line) for line in open(tmp_path / "out" / F.REJECTS_FILE)]
    assert len(rejects) == 4 and all({"source", "label", "reason"} <= r.keys() for r in rejects)
    on_disk = {s: len(_records(F.split_pattern(str(tmp_path / "out"), s))) for s in F.SPLITS}
    assert on_disk == result.examples and sum(on_disk.values()) == stats["written"] == 11
    assert json.load(open(tmp_path / "out" / F.STATS_FILE)) == stats


def test_examples_carry_the_conventional_keys(ingested):
    example = _records(F.split_pattern(ingested.output_uri, "train"))[0]
    keys = set(example.features.feature)
    assert keys == {
        F.IMAGE_ENCODED,
        F.IMAGE_FORMAT,
        F.IMAGE_HEIGHT,
        F.IMAGE_WIDTH,
        F.IMAGE_CHANNELS,
        F.LABEL_TEXT,
        F.FILENAME,
        F.SHA256,
    }
    assert example.features.feature[F.IMAGE_HEIGHT].int64_list.value[0] == 32


def test_rerun_gives_the_same_splits_and_fingerprint_and_replaces_output(
    tmp_path, tiny_dataset, tiny_config, ingested
):
    out = tmp_path / "again"
    (out / "train").mkdir(parents=True)
    (out / "train" / "stale-00000-of-00001.tfrecord.gz").write_bytes(b"old")
    again = run_ingest(str(tiny_dataset), str(out), tiny_config)
    assert again.stats["per_split"] == ingested.stats["per_split"]
    assert again.stats["fingerprint"] == ingested.stats["fingerprint"]
    assert not (out / "train" / "stale-00000-of-00001.tfrecord.gz").exists()
    assert not list(tmp_path.glob("again.staging-*"))


def test_fingerprint_changes_when_data_changes(tmp_path, tiny_dataset, tiny_config, ingested):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "circle" / "circle_00000.jpg").unlink()
    changed = run_ingest(str(data), str(tmp_path / "out"), tiny_config)
    assert changed.stats["fingerprint"] != ingested.stats["fingerprint"]


def test_csv_input_gives_the_same_examples_as_the_folder(
    tmp_path, tiny_dataset, tiny_config, ingested
):
    result = run_ingest(str(tiny_dataset / "labels.csv"), str(tmp_path / "out"), tiny_config)
    assert result.stats["fingerprint"] == ingested.stats["fingerprint"]


def test_missing_file_listed_in_csv_is_rejected(tmp_path, tiny_dataset, tiny_config):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        f"{tiny_dataset}/circle/circle_00000.jpg,circle\n{tiny_dataset}/square/square_00000.jpg,square\n"
        f"{tmp_path}/gone.jpg,square\n"
    )
    result = run_ingest(str(csv_path), str(tmp_path / "out"), _permissive(tiny_config))
    assert result.stats["rejected_by_reason"] == {"missing_file": 1}
    assert result.stats["written"] == 2
