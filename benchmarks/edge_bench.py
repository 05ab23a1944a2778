"""Edge exports of the default model: SavedModel, TFLite float16, TFLite int8 and ONNX.

For the sample data (what the defaults were shaped on) and generated glyphs (not):
the default model trained by ``run_train``, then ``run_edge_export`` with every
format. Each row is scored by its own runtime on the test split: accuracy, top-1
agreement with the SavedModel, file size, and the median latency of a single-image
call on this machine, next to two plain ways to run the same model in TensorFlow: the
served SavedModel's ``serve_pixels`` signature on the same pixels, and the bare Keras
classifier in a ``tf.function`` (no resize, no signature).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.trainer_bench import prepare
from visionpipe.sections import EDGE_FORMATS

FORMATS = list(EDGE_FORMATS)
GLYPHS = dict(kind="glyphs", classes=8, per_class=200, size=64, seed=1)


def bench_edge(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note) for the sample data and for glyphs."""
    from pipelines.sample_data import SampleSpec, generate

    glyphs = work / "glyphs" / "images"
    generate(glyphs, SampleSpec(**GLYPHS))
    rows = []
    for name, images in (("sample", data), ("glyphs", str(glyphs))):
        rows += _one(work / name, name, images, overrides)
    return rows


def _one(work: Path, name: str, data: str, overrides: list[str]) -> list[tuple]:
    from components.edge.export import run_edge_export
    from trainer.train import run_train

    config, examples, graph = prepare(work, data, overrides)
    model = str(work / "model")
    train = run_train(examples, str(work / "t" / "transform_graph"), None, model, config)
    report = run_edge_export(model, str(work / "raw"), str(work / "edge"), FORMATS, config)
    ref = report.savedmodel
    keras_ms = _keras_latency(model, str(work / "raw"), config)
    rows = [
        (
            f"edge {name}: SavedModel (TensorFlow)",
            0.0,
            f"accuracy {ref['accuracy']:.4f}, {ref['size_bytes'] / 1e6:.2f} MB, "
            f"p50 {ref['latency_ms']:.2f} ms/image; {report.test_examples} test images, "
            f"{train.epochs_run} epochs",
        ),
        (
            f"edge {name}: bare Keras classifier (tf.function)",
            0.0,
            f"p50 {keras_ms:.3f} ms/image",
        ),
    ]
    for r in report.formats:
        rows.append(
            (
                f"edge {name}: {r.format} ({r.runtime}), convert",
                r.convert_seconds,
                f"accuracy {r.accuracy:.4f} ({(r.accuracy - ref['accuracy']) * 100:+.1f} pts), "
                f"agreement {r.agreement:.4f}, {r.size_bytes / 1e6:.2f} MB "
                f"({r.size_bytes / ref['size_bytes']:.2f}x), p50 {r.latency_ms:.3f} ms "
                f"({ref['latency_ms'] / r.latency_ms:.1f}x the SavedModel's speed, "
                f"{keras_ms / r.latency_ms:.1f}x bare Keras)",
            )
        )
    rows.append((f"edge {name}: int8 gate", 0.0, report.reason))
    return rows


def _keras_latency(model_dir: str, examples: str, config) -> float:
    import tensorflow as tf

    from components.edge.export import load_pixels
    from components.edge.runtimes import latency_ms
    from trainer.export import load_classifier

    classifier = load_classifier(model_dir)
    size, mode = config.transform.image_size, config.transform.resize_mode
    pixels, _ = load_pixels(examples, "test", size, mode, limit=1)
    call = tf.function(lambda x: classifier(x, training=False))
    return latency_ms(lambda x: call(tf.constant(x, tf.float32)).numpy(), pixels[0])
