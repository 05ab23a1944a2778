"""Serving that survives hostile input: headers are checked before anything is decoded.

The bombs are built small: a header that declares a huge image in front of a few bytes
of data. The checks read only headers, so what follows does not matter; the real,
fully decodable 16,000 x 16,000 PNG is in the benchmark (``make bench --only guard``).
"""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.cli import main
from pipelines.execute import run_step
from visionpipe.pixels import FORMAT_NAMES, check_declared, declared_size
from visionpipe.serving import Classifier, check_image


def _encoded(fmt: str, width: int, height: int, **kwargs) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if kwargs.pop("alpha", False) else "RGB"
    Image.new(mode, (width, height), (40, 80, 120)).save(out, fmt, **kwargs)
    return out.getvalue()


def _animated_gif(width: int, height: int, frames: int) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (width, height), (i * 40 % 256, 0, 0)) for i in range(frames)]
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=50)
    return out.getvalue()


def png_bomb(width: int = 16_000, height: int = 16_000) -> bytes:
    """A PNG whose IHDR declares ``width x height``, followed by a token of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A real small JPEG whose frame header is rewritten to declare ``width x height``."""
    data = bytearray(_encoded("JPEG", 16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    "data,fmt,size",
    [
        (_encoded("PNG", 37, 21), "png", (21, 37, 1)),
        (_encoded("JPEG", 37, 21), "jpeg", (21, 37, 1)),
        (_encoded("JPEG", 37, 21, progressive=True), "jpeg", (21, 37, 1)),
        (_encoded("BMP", 37, 21), "bmp", (21, 37, 1)),
        (_encoded("GIF", 37, 21), "gif", (21, 37, 1)),
        (_animated_gif(37, 21, 5), "gif", (21, 37, 5)),
        (_encoded("WEBP", 37, 21), "webp", (21, 37, 1)),
        (_encoded("WEBP", 37, 21, lossless=True), "webp", (21, 37, 1)),
        (_encoded("WEBP", 37, 21, alpha=True), "webp", (21, 37, 1)),  # VP8X
        (png_bomb(), "png", (16_000, 16_000, 1)),
        (jpeg_bomb(), "jpeg", (60_000, 60_000, 1)),
        (b"not an image at all", "unknown", (0, 0, 0)),
        (b"", "unknown", (0, 0, 0)),
    ],
)
def test_the_header_says_format_and_size_without_decoding(data, fmt, size):
    found = declared_size(tf.constant(data)).numpy()
    assert (FORMAT_NAMES[found[0]], tuple(found[1:])) == (fmt, size)


def test_what_the_header_declares_is_what_the_decoder_makes():
    for data in (_encoded("PNG", 37, 21), _encoded("WEBP", 37, 21), _encoded("BMP", 37, 21)):
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        assert tuple(declared_size(tf.constant(data)).numpy()[1:3]) == tuple(decoded.shape[:2])


def test_an_image_exactly_at_the_bound_passes_and_one_pixel_more_is_refused():
    exact = _encoded("PNG", 40, 25)  # 1000 pixels
    assert check_declared(tf.constant([exact]), 1000).shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image 0 declares 40x25 pixels"):
        check_declared(tf.constant([exact]), 999)


def test_gif_frames_count_against_the_bound():
    animation = _animated_gif(20, 10, 6)  # 200 pixels a frame, 1200 in all
    assert check_image(animation, 1200) == ("", 1200)
    problem, _ = check_image(animation, 1199)
    assert "gif declares 20x10 pixels x 6 frames, over the model's bound of 1199" in problem


def test_the_served_signature_refuses_a_request_with_a_bomb_naming_its_index(trained, tiny_dataset):
    good = next((Path(tiny_dataset) / "circle").glob("*.jpg")).read_bytes()
    model = tf.saved_model.load(trained.model_uri)
    serve = model.signatures["serving_default"]
    assert serve(image_bytes=tf.constant([good]))["class_id"].shape == (1,)
    for bomb in (png_bomb(), jpeg_bomb()):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image 2 declares"):
            serve(image_bytes=tf.constant([good, good, bomb, good]))
    record = json.loads((Path(trained.model_uri) / "assets.extra" / "training.json").read_text())
    assert record["preprocessing"]["max_pixels"] == 40_000_000  # ingest.max_pixels


def test_predict_names_the_bomb_and_answers_the_other_files(
    trained, tiny_dataset, tmp_path, capsys
):
    good = next((Path(tiny_dataset) / "circle").glob("*.jpg"))
    bombs = tmp_path / "bomb.png", tmp_path / "bomb.jpg"
    bombs[0].write_bytes(png_bomb())
    bombs[1].write_bytes(jpeg_bomb())
    assert main(["predict", "--model", trained.model_uri, str(good), *map(str, bombs)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith(f"{good}\t")
    errors = [line for line in captured.err.splitlines() if line.startswith("visionpipe: error")]
    assert errors == [
        f"visionpipe: error: {bombs[0]}: png declares 16000x16000 pixels, over the model's "
        "bound of 40000000 (a decompression bomb, or too large to serve)",
        f"visionpipe: error: {bombs[1]}: jpeg declares 60000x60000 pixels, over the model's "
        "bound of 40000000 (a decompression bomb, or too large to serve)",
    ]


def test_predict_batches_by_declared_pixels_and_a_corrupt_file_fails_alone(
    trained, tiny_dataset, tmp_path
):
    files = sorted(str(p) for p in (Path(tiny_dataset) / "circle").glob("*.jpg"))[:5]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(_encoded("JPEG", 16, 16)[:200])  # a header, then nothing
    classifier = Classifier(trained.model_uri)
    alone = classifier.predict_files(files)
    paths = [*files[:2], str(broken), *files[2:]]
    for limit in (0, 1):  # one call that fails and is retried file by file; a call per file
        mixed = classifier.predict_files(paths, max_batch_pixels=limit)
        assert [p.error for p in mixed].count(None) == 5
        assert mixed[2].error and "decode" in mixed[2].error
        answered = [p for p in mixed if p.error is None]
        assert [p.class_name for p in answered] == [p.class_name for p in alone]
        np.testing.assert_allclose(
            [p.probabilities for p in answered], [p.probabilities for p in alone], atol=1e-6
        )


def test_batch_prediction_rejects_a_bomb_with_its_reason_and_scores_the_rest(
    trained, tiny_dataset, tmp_path, tiny_config
):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for p in sorted((Path(tiny_dataset) / "circle").glob("*.jpg"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "bomb.png").write_bytes(png_bomb())
    out = tmp_path / "scored"
    result = run_step(
        "predict-batch", tiny_config, model=trained.model_uri, data=str(folder), out=str(out)
    )
    assert (result.inputs, result.predicted, result.rejected) == (4, 3, 1)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rejects] == ["bomb.png"]
    assert "png declares 16000x16000 pixels" in rejects[0]["reason"]


def test_the_mlflow_model_answers_per_row_and_refuses_a_request_over_its_limits(
    trained, tiny_dataset, tmp_path
):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from pipelines.adapters.mlflow_model import save_mlflow_model

    good = next((Path(tiny_dataset) / "circle").glob("*.jpg")).read_bytes()
    path = save_mlflow_model(trained.model_uri, str(tmp_path / "mlflow-model"), good, "d")
    model = mlflow.pyfunc.load_model(path)
    rows = [good, png_bomb(), b"junk", "%%% not base64", good]
    out = model.predict(pd.DataFrame({"image": rows}))
    assert [error == "" for error in out["error"]] == [True, False, False, False, True]
    assert out["error"][1].startswith("png declares 16000x16000 pixels, over the model's bound")
    assert "not an image the model can decode" in out["error"][2]
    assert "not base64" in out["error"][3]
    assert list(out["class_id"][1:4]) == [-1, -1, -1]
    assert out["class_name"][0] == out["class_name"][4]
    with pytest.raises(MlflowException, match="request has 257 images; this model answers at"):
        model.predict(pd.DataFrame({"image": [good] * 257}))


def test_explain_names_the_bomb_and_explains_the_other_file(
    trained, tiny_dataset, tmp_path, capsys
):
    good = str(next((Path(tiny_dataset) / "circle").glob("*.jpg")))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    out = tmp_path / "why"
    args = ["explain", "--model", trained.model_uri, "--out", str(out), good, str(bomb)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert f"{bomb}: png declares 16000x16000 pixels, over the model's bound" in captured.err
    assert captured.out.splitlines()[0].startswith(f"{good}\t")
    assert len(list(out.glob("*.png"))) == 1
