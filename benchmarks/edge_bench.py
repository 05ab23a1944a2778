"""Edge exports of the default model: SavedModel, TFLite float16, TFLite int8 and ONNX.

For the sample data (what the defaults were shaped on) and generated glyphs (not):
the default model trained by ``run_train``, then ``run_edge_export`` with every
format. Each row is scored by its own runtime on the test split: accuracy, top-1
agreement with the SavedModel, file size, and the median latency of a single-image
call on this machine, next to the SavedModel's (the served model's ``serve_pixels``
signature on the same pixels: the plain way to run it).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.trainer_bench import prepare

FORMATS = ["tflite_float16", "tflite_int8", "onnx"]
GLYPHS = dict(kind="glyphs", classes=8, per_class=200, size=64, seed=1)


def bench_edge(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note) for the sample data and for glyphs."""
    from visionpipe.sample_data import SampleSpec, generate

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
    rows = [
        (
            f"edge {name}: SavedModel (TensorFlow)",
            0.0,
            f"accuracy {ref['accuracy']:.4f}, {ref['size_bytes'] / 1e6:.2f} MB, "
            f"p50 {ref['latency_ms']:.2f} ms/image; {report.test_examples} test images, "
            f"{train.epochs_run} epochs",
        )
    ]
    for r in report.formats:
        rows.append(
            (
                f"edge {name}: {r.format} ({r.runtime}), convert",
                r.convert_seconds,
                f"accuracy {r.accuracy:.4f} ({(r.accuracy - ref['accuracy']) * 100:+.1f} pts), "
                f"agreement {r.agreement:.4f}, {r.size_bytes / 1e6:.2f} MB "
                f"({r.size_bytes / ref['size_bytes']:.2f}x), p50 {r.latency_ms:.3f} ms "
                f"({ref['latency_ms'] / r.latency_ms:.1f}x faster)",
            )
        )
    rows.append((f"edge {name}: int8 gate", 0.0, report.reason))
    return rows
