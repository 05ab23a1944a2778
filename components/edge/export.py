"""The edge export: convert a served model, score every export in its own runtime, report.

Parity is measured, not assumed: each export is run by its runtime (the TFLite
interpreter, ONNX Runtime) on ingest's test split, prepared by the model's
preprocessing contract, and compared with the SavedModel on the same pixels (its
``serve_pixels`` signature): accuracy, the agreement of top-1 classes, file size and
the median single-image latency on this machine. The export fails when int8 accuracy
falls more than ``edge.max_int8_accuracy_drop`` below the SavedModel's.

Layout of the output folder, written whole or not at all (a staging folder renamed at
the end)::

    <out>/edge_report.json, edge_report.md
    <out>/<format>/model.tflite | model.onnx, labels.txt, preprocessing.json

When the int8 gate fails, only the report is written, so nothing downstream picks up
the model that failed.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np

from components.edge.convert import FILE_NAMES, check_formats, convert
from components.edge.runtimes import latency_ms, runner
from trainer.export import load_classifier, model_record
from visionpipe import progress, storage
from visionpipe.config import Config
from visionpipe.errors import UserError
from visionpipe.pixels import decode_one
from visionpipe.transform_graph import load_raw_split

log = logging.getLogger(__name__)

REPORT_JSON = "edge_report.json"
REPORT_MD = "edge_report.md"
LABELS_FILE = "labels.txt"
CONTRACT_FILE = "preprocessing.json"
INT8 = "tflite_int8"


class EdgeParityError(UserError, RuntimeError):
    """An export lost more accuracy than allowed; the report says by how much."""


@dataclass(frozen=True)
class FormatResult:
    """One export scored in its runtime on the test split."""

    format: str
    runtime: str
    file: str
    size_bytes: int
    accuracy: float
    agreement: float  # share of test images whose top-1 class equals the SavedModel's
    latency_ms: float
    convert_seconds: float


@dataclass
class EdgeReport:
    """Every export next to the SavedModel, and the int8 gate's decision."""

    model: str
    test_examples: int
    representative_images: int
    savedmodel: dict
    formats: list[FormatResult] = field(default_factory=list)
    max_int8_accuracy_drop: float = 0.02
    passed: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    def markdown(self) -> str:
        """The report a person reads: verdict, reason, then ``table()``."""
        verdict = f"# Edge exports: {'PASSED' if self.passed else 'FAILED'}"
        return "\n".join([verdict, "", self.reason, "", self.table()])

    def table(self) -> str:
        """What was scored, and every format beside the SavedModel."""
        ref = self.savedmodel
        lines = [
            f"Scored on {self.test_examples} test images, each format in its own runtime; "
            f"int8 calibrated on {self.representative_images} training images. Latency: "
            "median of single-image calls on this machine.",
            "",
            "| format | runtime | size | accuracy | top-1 agreement | p50 latency |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            f"| SavedModel | TensorFlow | {_mb(ref['size_bytes'])} | {ref['accuracy']:.4f} "
            f"| 1.0000 | {ref['latency_ms']:.2f} ms |",
        ]
        for r in self.formats:
            lines.append(
                f"| {r.format} | {r.runtime} | {_mb(r.size_bytes)} | {r.accuracy:.4f} "
                f"| {r.agreement:.4f} | {r.latency_ms:.2f} ms |"
            )
        return "\n".join(lines) + "\n"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def load_pixels(raw_examples_uri: str, split: str, size: int, mode: str, limit=None):
    """A split's images as uint8 pixels by the contract, and their label names."""
    raw = load_raw_split(raw_examples_uri, split, limit)
    pixels = [decode_one(data, size, mode) for data in raw.images]
    kept = [i for i, p in enumerate(pixels) if p is not None]  # ingest kept decodable ones
    if not kept:
        raise ValueError(f"{raw_examples_uri}: no decodable {split} images")
    return np.stack([pixels[i] for i in kept]), [raw.labels[i] for i in kept]


def saved_model_size(model_dir: str) -> int:
    """Bytes of the SavedModel's graph and variables (what a server loads)."""
    files = storage.walk_files(model_dir)
    keep = [f for f in files if "/assets.extra/" not in f]
    return sum(len(storage.read_bytes(f)) for f in keep)


def run_edge_export(
    model_dir: str,
    raw_examples_uri: str,
    out_uri: str,
    formats: list[str],
    config: Config,
    overwrite: bool = False,
) -> EdgeReport:
    """Exports ``model_dir`` in ``formats`` to ``out_uri`` and scores each export.

    Raises:
        EdgeFormatError: an unknown format (before any work).
        NotAVisionpipeModel: the model lacks the classifier or its training record.
        OutputFolderError: ``out_uri`` is not empty and ``overwrite`` is not set.
        EdgeParityError: int8 accuracy fell more than allowed (the report is written).
    """
    formats = check_formats(formats)
    record = model_record(model_dir)
    storage.check_output_folder(out_uri, overwrite)
    settings = config.edge
    contract = record["preprocessing"]
    labels = list(record["labels"])
    size, mode = int(contract["image_size"]), str(contract["resize_mode"])
    classifier = load_classifier(model_dir)
    test, truth = load_pixels(raw_examples_uri, "test", size, mode)
    index = {label: i for i, label in enumerate(labels)}
    truth_ids = np.array([index.get(t, -1) for t in truth])
    savedmodel = _score_savedmodel(model_dir, test, truth_ids, settings.latency_runs)
    reference = savedmodel.pop("predicted")
    representative = np.zeros((0, size, size, 3), np.uint8)
    if INT8 in formats:
        limit = settings.representative_images
        representative, _ = load_pixels(raw_examples_uri, "train", size, mode, limit)
    report = EdgeReport(
        model_dir, len(test), len(representative), savedmodel, [], settings.max_int8_accuracy_drop
    )
    staging = f"{out_uri.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    files: dict[str, bytes] = {}
    try:
        for n, fmt in enumerate(formats):
            progress.report("edge-export", f"{fmt}: converting", n / len(formats))
            started = time.monotonic()
            data = convert(classifier, fmt, representative, settings.onnx_opset)
            seconds = time.monotonic() - started
            progress.report("edge-export", f"{fmt}: scoring", (n + 0.5) / len(formats))
            run = runner(fmt, data)
            probabilities = run.predict(test)
            predicted = probabilities.argmax(axis=1)
            path = f"{fmt}/{FILE_NAMES[fmt]}"
            report.formats.append(
                FormatResult(
                    fmt,
                    run.runtime,
                    path,
                    len(data),
                    float(np.mean(predicted == truth_ids)),
                    float(np.mean(predicted == reference)),
                    latency_ms(run.predict, test[0], settings.latency_runs),
                    seconds,
                )
            )
            files[path] = data
            files[f"{fmt}/{LABELS_FILE}"] = ("\n".join(labels) + "\n").encode()
            files[f"{fmt}/{CONTRACT_FILE}"] = _contract_json(contract, fmt, run, len(labels))
        _gate(report)
        if not report.passed:
            files = {}  # only the report: nothing downstream may take the failed model
        files[REPORT_JSON] = storage.json_bytes(report.to_dict())
        files[REPORT_MD] = report.markdown().encode()
        for name, data in files.items():
            storage.write_bytes(storage.join(staging, name), data)
        if storage.exists(out_uri):
            storage.remove(out_uri)
        storage.rename(staging, out_uri)
    finally:
        if storage.exists(staging):
            storage.remove(staging)
    if not report.passed:
        raise EdgeParityError(f"{report.reason}; see {storage.join(out_uri, REPORT_MD)}")
    log.debug("edge-export: %s", report.reason)
    return report


def _score_savedmodel(model_dir: str, pixels: np.ndarray, truth_ids, runs: int) -> dict:
    """The reference: the served SavedModel's pixel signature on the same pixels."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serve_pixels"]

    def predict(batch: np.ndarray) -> np.ndarray:
        return signature(images=tf.constant(batch))["probabilities"].numpy()

    predicted = np.concatenate(
        [predict(pixels[s : s + 64]) for s in range(0, len(pixels), 64)]
    ).argmax(axis=1)
    return {
        "format": "savedmodel",
        "size_bytes": saved_model_size(model_dir),
        "accuracy": float(np.mean(predicted == truth_ids)),
        "latency_ms": latency_ms(predict, pixels[0], runs),
        "predicted": predicted,
    }


def _gate(report: EdgeReport) -> None:
    reference = report.savedmodel["accuracy"]
    int8 = next((r for r in report.formats if r.format == INT8), None)
    if int8 is None:
        report.reason = f"{len(report.formats)} formats exported; no int8 model to gate"
        return
    drop = reference - int8.accuracy
    limit = report.max_int8_accuracy_drop
    report.passed = drop <= limit + 1e-9
    report.reason = (
        f"int8 accuracy {int8.accuracy:.4f} vs SavedModel {reference:.4f}: "
        f"{'a drop of' if drop >= 0 else 'a gain of'} {abs(drop) * 100:.1f} points "
        f"({'within' if report.passed else 'over'} the allowed {limit * 100:.1f})"
    )


def _contract_json(contract: dict, fmt: str, run, classes: int) -> bytes:
    """The preprocessing contract of one export: how to prepare its input, read its output."""
    tensor = {
        "name": run.input_name,
        "shape": ["batch", contract["image_size"], contract["image_size"], 3],
    }
    if fmt == INT8:
        (scale, zero), (out_scale, out_zero) = run.quantization()
        tensor.update(dtype="uint8", quantization={"scale": scale, "zero_point": zero})
        output = {
            "dtype": "uint8",
            "dequantize": {"scale": out_scale, "zero_point": out_zero},
            "meaning": f"probabilities of {classes} classes, in labels.txt order",
        }
    else:
        tensor["dtype"] = "float32"
        output = {"dtype": "float32", "meaning": f"probabilities of {classes} classes"}
    return storage.json_bytes({"format": fmt, **contract, "input": tensor, "output": output})
