"""Ingest in depth: formats, reject reasons, failure modes, stability, crash safety."""

import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.ingest.images import Rejected, inspect
from components.ingest.ingest import TooManyRejectsError, run_ingest
from components.ingest.shards import tfrecord
from pipelines.sample_data import SampleSpec, generate
from visionpipe import features as F
from visionpipe.config import load_config
from visionpipe.example_codec import encode_example
from visionpipe.sources import list_sources


def _save(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decoded(inspected):
    return Image.open(io.BytesIO(inspected.encoded))


def _config(*overrides):
    return load_config(overrides=["ingest.min_images_per_class=1", *overrides])


def test_example_codec_matches_tensorflow():
    features = {
        "image/encoded": b"\x00\xffbytes",
        "image/class/text": "caf\u00e9",
        "image/height": 480,
        "image/width": 2**40,
        "zero": 0,
    }
    parsed = tf.train.Example.FromString(encode_example(features))
    expected = tf.train.Example()
    for key, value in features.items():
        feature = expected.features.feature[key]
        if isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            feature.bytes_list.value.append(value.encode() if isinstance(value, str) else value)
    assert parsed == expected


def test_gif_first_frame_becomes_rgb_jpeg():
    frames = [Image.new("P", (10, 8), i) for i in (1, 2)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = inspect(data, 10**6)
    assert (
        out.format == "jpeg" and _decoded(out).mode == "RGB" and (out.width, out.height) == (10, 8)
    )


def test_webp_cmyk_and_grayscale_alpha_become_rgb():
    for data in (
        _save(Image.new("RGB", (9, 7), (10, 200, 30)), "WEBP"),
        _save(Image.new("CMYK", (9, 7), (0, 255, 0, 0)), "JPEG"),
        _save(Image.new("LA", (9, 7), (100, 0)), "PNG"),
    ):
        out = inspect(data, 10**6)
        assert out.format == "jpeg" and out.channels == 3 and _decoded(out).mode == "RGB"


def test_alpha_is_composited_on_white():
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    pixels = np.asarray(_decoded(inspect(_save(transparent, "PNG"), 10**6)))
    assert pixels.min() > 240  # fully transparent red -> white, not black or red


def test_palette_png_with_transparency_and_16_bit_png():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 255] * 256)
    assert _decoded(inspect(_save(palette, "PNG", transparency=0), 10**6)).mode == "RGB"
    deep = Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16))
    pixels = np.asarray(_decoded(inspect(_save(deep, "PNG"), 10**6)))
    assert pixels.min() > 250  # 16-bit white stays white (scaled, not clipped garbage)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = inspect(_save(image, "JPEG", exif=exif), 10**6)
    assert (out.width, out.height) == (20, 40)


def test_plain_grayscale_jpeg_is_kept_and_large_images_can_be_scaled_down():
    gray = _save(Image.new("L", (30, 10), 50), "JPEG")
    assert inspect(gray, 10**6).encoded == gray
    big = inspect(_save(Image.new("RGB", (400, 100)), "JPEG"), 10**6, max_side=100, jpeg_quality=80)
    assert (big.width, big.height) == (100, 25)


def test_bomb_sized_header_is_rejected_before_decoding(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own guard trips too
    with pytest.raises(Rejected) as info:
        inspect(_save(Image.new("RGB", (100, 100)), "PNG"), max_pixels=10**9)
    assert info.value.reason == "too_large"


def test_several_csvs_by_glob(tmp_path, tiny_dataset):
    (tmp_path / "a.csv").write_text(f"{tiny_dataset}/circle/circle_00000.jpg,circle\n")
    (tmp_path / "b.csv").write_text(f"{tiny_dataset}/square/square_00000.jpg,square\n")
    assert [s.label for s in list_sources(str(tmp_path / "*.csv"))] == ["circle", "square"]
    with pytest.raises(ValueError, match="no files match"):
        list_sources(str(tmp_path / "*.tsv"))


def test_unknown_labels_are_rejected_when_a_label_list_is_configured(tmp_path, tiny_dataset):
    config = _config("ingest.labels=[circle, square]", "ingest.max_reject_fraction=1")
    result = run_ingest(str(tiny_dataset), str(tmp_path / "out"), config)
    assert result.stats["rejected_by_reason"] == {"unknown_label": 12}
    assert result.stats["classes"] == ["circle", "square"]


def test_too_many_rejects_writes_the_report_then_fails(tmp_path, tiny_dataset):
    config = _config("ingest.labels=[circle, square]")  # a third of the images rejected
    with pytest.raises(TooManyRejectsError, match="rejects.jsonl"):
        run_ingest(str(tiny_dataset), str(tmp_path / "out"), config)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        F.NEAR_DUPLICATES_FILE,
        F.REJECTS_FILE,
        F.STATS_FILE,
    ]
    stats = json.loads((tmp_path / "out" / F.STATS_FILE).read_text())
    assert stats["status"] == "too_many_rejects" and stats["rejected"] == 12
    assert len((tmp_path / "out" / F.REJECTS_FILE).read_text().splitlines()) == 12


def _splits_by_hash(out):
    found = {}
    for split in F.SPLITS:
        files = tf.io.gfile.glob(F.split_pattern(str(out), split))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            found[example.features.feature[F.SHA256].bytes_list.value[0]] = split
    return found


def test_adding_images_never_moves_existing_ones_between_splits(tmp_path, tiny_config):
    data = tmp_path / "data"
    generate(data, SampleSpec(classes=2, per_class=10, size=24, seed=1))
    before = _splits_by_hash(run_ingest(str(data), str(tmp_path / "a"), tiny_config).output_uri)
    generate(tmp_path / "more", SampleSpec(classes=2, per_class=30, size=24, seed=2))
    for path in (tmp_path / "more").rglob("*.jpg"):
        (data / path.parent.name / f"new_{path.name}").write_bytes(path.read_bytes())
    after = _splits_by_hash(run_ingest(str(data), str(tmp_path / "b"), tiny_config).output_uri)
    assert len(after) == 80
    assert {h: after[h] for h in before} == before


def test_shards_roll_over_at_the_size_limit_and_hold_every_record_once(tmp_path, tiny_dataset):
    config = _config("ingest.shard_size_mb=0.01")  # ~10 KB shards of ~1.5 KB images
    result = run_ingest(str(tiny_dataset), str(tmp_path / "out"), config)
    train = sorted((tmp_path / "out" / "train").iterdir())
    n = len(train)
    assert n >= 2 and result.stats["shards"]["train"] == n
    assert [p.name for p in train] == [f"data-{i:05d}-of-{n:05d}.tfrecord.gz" for i in range(n)]
    assert len(_splits_by_hash(tmp_path / "out")) == result.stats["written"] == 36


@pytest.mark.processes
def test_a_killed_run_leaves_no_committed_output_and_a_rerun_starts_clean(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    generate(data, SampleSpec(classes=2, per_class=400, size=64, seed=4))
    script = (
        "from components.ingest.ingest import run_ingest\n"
        "from visionpipe.config import load_config\n"
        f"run_ingest({str(data)!r}, {str(out)!r}, load_config())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("out.staging-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave output that looks complete"
    result = run_ingest(str(data), str(out), load_config())
    assert result.stats["written"] == 800 and not list(tmp_path.glob("out.staging-*"))


def test_a_file_changed_between_reads_is_rejected_not_written(tmp_path):
    from components.ingest.ingest import _encode

    path = tmp_path / "a.jpg"
    path.write_bytes(_save(Image.new("RGB", (8, 8)), "JPEG"))
    rec = {
        "source": str(path),
        "label": "x",
        "sha256": "0" * 64,
        "reencoded": False,
        "format": "jpeg",
        "height": 8,
        "width": 8,
        "channels": 3,
    }
    out = _encode(rec, load_config().ingest)
    assert out["reason"] == "changed_during_ingest" and out["source"] == str(path)


def gzip_record(data: bytes, level: int) -> bytes:
    """One TFRecord as a complete gzip member: what shards were once made of."""
    import zlib

    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(tfrecord(data)) + compressor.flush()


def _members_ending_past(boundary: int, past: int) -> list[bytes]:
    """Records whose gzip members (one each) put a member's end ``past`` bytes past ``boundary``."""
    records, size = [], 0
    while size < boundary - 8000:
        records.append(b"r" * 3000)
        size += len(gzip_record(records[-1], 0))
    payload = next(
        n for n in range(1, 20000) if size + len(gzip_record(b"x" * n, 0)) == boundary + past
    )
    return [*records, b"x" * payload, b"tail" * 500, b"end" * 700]


def test_tensorflow_stops_at_a_gzip_member_whose_trailer_straddles_its_buffer(tmp_path):
    # Why shards are one gzip stream each (components/ingest/shards.py): TF's GZIP reader
    # silently drops every record after such a member. Valid gzip: Python reads it all.
    import gzip

    records = _members_ending_past(256 * 1024, 6)
    path = tmp_path / "members.tfrecord.gz"
    path.write_bytes(b"".join(gzip_record(r, 0) for r in records))
    assert len(gzip.decompress(path.read_bytes())) == sum(len(r) + 16 for r in records)
    read = list(tf.data.TFRecordDataset(str(path), compression_type="GZIP"))
    assert len(read) == len(records) - 2


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("past", [1, 6, 8, 10])
def test_shards_read_back_whole_wherever_the_buffer_boundaries_fall(tmp_path, level, past):
    from components.ingest.shards import RollingFileWriteFn

    records = _members_ending_past(256 * 1024, past)
    writer = RollingFileWriteFn(str(tmp_path), 2**30, gzip_level=level)
    writer.start_bundle()
    for record in records:
        writer.process(("test", tfrecord(record)))
    [done] = [str(v.value) for v in writer.finish_bundle()]
    read = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(done, compression_type="GZIP")]
    assert read == records


def test_an_ingested_split_reads_back_through_tensorflow_as_ingest_counted_it(tmp_path):
    # What training and evaluation read is what ingest counted: the TF reader once
    # dropped 56 of a 145-image test split whose counts said 145 all the same.
    data = tmp_path / "images"
    generate(data, SampleSpec(classes=5, per_class=60, size=64, seed=0))
    result = run_ingest(str(data), str(tmp_path / "raw"), _config())
    for split in F.SPLITS:
        files = tf.io.gfile.glob(F.split_pattern(result.output_uri, split))
        count = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
        assert count == sum(result.stats["per_split"][split].values()), split


def test_thread_count_and_batch_size_do_not_change_the_output(tmp_path, tiny_dataset):
    one = run_ingest(str(tiny_dataset), str(tmp_path / "one"), _config("ingest.threads=1"))
    many = run_ingest(
        str(tiny_dataset),
        str(tmp_path / "many"),
        _config("ingest.threads=4", "ingest.batch_size=5", "ingest.gzip_level=1"),
    )
    for key in ("inputs", "written", "per_split", "fingerprint"):
        assert one.stats[key] == many.stats[key], key
    assert one.stats["written"] == 36


def test_shards_that_hold_fewer_records_than_were_written_fail_and_commit_nothing(
    tmp_path, tiny_dataset, monkeypatch
):
    from components.ingest import shards
    from components.ingest.ingest import ShardLossError

    real = shards.RollingFileWriteFn.process
    seen = []

    def losing(self, element):  # a writer that drops one record of the train split
        if element[0] == "train":
            seen.append(1)
            if len(seen) == 3:
                return
        real(self, element)

    monkeypatch.setattr(shards.RollingFileWriteFn, "process", losing)
    out = tmp_path / "examples"
    with pytest.raises(
        ShardLossError, match=r"the train shards hold \d+ records but \d+ were written"
    ):
        run_ingest(str(tiny_dataset), str(out), _config())
    assert not out.exists() and not list(tmp_path.glob("examples.staging-*"))


def test_an_image_whose_outcome_was_lost_fails_ingest_and_commits_nothing(
    tmp_path, tiny_dataset, monkeypatch
):
    # The loss once seen under threads: the shards were whole, the counts 16 short.
    from components.ingest import ingest
    from components.ingest.ingest import InputLossError, run_ingest

    real = ingest._SummaryFn.add_input
    seen = []

    def losing(self, acc, item):  # the summary misses one image's outcome
        if item[0] == "rejected" or item[0] == "written":
            seen.append(1)
            if len(seen) == 5:
                return acc
        return real(self, acc, item)

    monkeypatch.setattr(ingest._SummaryFn, "add_input", losing)
    out = tmp_path / "examples"
    with pytest.raises(InputLossError, match=r"36 images were listed but 35 accounted for"):
        run_ingest(str(tiny_dataset), str(out), _config())
    assert not out.exists() and not list(tmp_path.glob("examples.staging-*"))


def test_the_local_runner_is_pinned_and_named_and_an_unknown_runner_is_one_line(
    tmp_path, tiny_dataset, caplog, capsys
):
    import logging

    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    from pipelines.cli import main
    from tests.conftest import fails_in_one_line
    from visionpipe.beam import beam_pipeline
    from visionpipe.sections import BeamConfig

    with caplog.at_level(logging.INFO, logger="visionpipe.beam"):
        pipeline = beam_pipeline(BeamConfig(), "ingest")
    assert type(pipeline.runner) is FnApiRunner  # not DirectRunner's Prism-first switch
    assert "Beam job ingest: runner FnApiRunner, in this process (in_memory, 1 worker(s))" in (
        caplog.text
    )
    args = ["ingest", "--data", str(tiny_dataset), "--out", str(tmp_path / "out")]
    err = fails_in_one_line([*args, "--set", "beam.runner=Nope"], capsys, tmp_path / "out")
    assert "beam.runner='Nope': not a runner Beam knows" in err
    assert (
        main(
            [
                *args,
                "--set",
                "beam.direct_running_mode=multi_processing",
                "--set",
                "beam.direct_num_workers=2",
            ]
        )
        == 0
    )
