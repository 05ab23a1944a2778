"""Edge exports: each format loads in its own runtime and agrees with the SavedModel; the
int8 gate fails a badly calibrated model; bad input is one line with nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from tests.conftest import fails_in_one_line
from visionpipe import features as F
from visionpipe.config import load_config
from visionpipe.sections import EDGE_FORMATS

OVERRIDES = [
    "transform.image_size=24",
    "trainer.epochs=6",
    "trainer.min_steps=0",
    "trainer.width=8",
    "trainer.depth=2",
    "trainer.batch_size=16",
    "evaluate.min_accuracy=0.0",
    "edge.representative_images=64",
    "edge.latency_runs=5",
]


def _coloured_squares(root: Path, per_class: int = 40, seed: int = 3) -> None:
    """Three classes told apart by the colour of a square on noise: learnt in a few epochs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, colour in enumerate([(220, 40, 40), (40, 200, 40), (40, 40, 220)]):
        folder = root / f"class_{k}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            x = rng.integers(0, 120, (32, 32, 3)).astype(np.uint8)
            r, c = rng.integers(0, 16, 2)
            x[r : r + 16, c : c + 16] = colour
            Image.fromarray(x).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A small model that has learned the shapes (confident predictions), and its examples."""
    from components.ingest.ingest import run_ingest
    from components.transform.transform import run_transform
    from trainer.train import run_train

    config = load_config(overrides=OVERRIDES)
    root = tmp_path_factory.mktemp("edge")
    _coloured_squares(root / "data")
    ingested = run_ingest(str(root / "data"), str(root / "raw"), config)
    t = run_transform(ingested.output_uri, str(root / "ex"), str(root / "graph"), config)
    trained = run_train(t.examples_uri, t.transform_graph_uri, None, str(root / "model"), config)
    return config, ingested.output_uri, trained


def test_every_export_loads_in_its_runtime_and_agrees_with_the_savedmodel(learned, tmp_path):
    import tensorflow as tf

    from components.edge.export import run_edge_export

    config, examples, trained = learned
    out = tmp_path / "edge"
    formats = list(EDGE_FORMATS)
    report = run_edge_export(trained.model_uri, examples, str(out), formats, config)

    assert report.passed and report.savedmodel["accuracy"] > 0.8  # a model worth exporting
    by_format = {r.format: r for r in report.formats}
    assert list(by_format) == formats
    assert by_format["onnx"].agreement == 1.0
    assert by_format["tflite_float16"].agreement >= 0.95
    assert by_format["tflite_int8"].agreement >= 0.9
    int8_drop = report.savedmodel["accuracy"] - by_format["tflite_int8"].accuracy
    assert int8_drop <= config.edge.max_int8_accuracy_drop
    assert by_format["tflite_int8"].size_bytes < by_format["tflite_float16"].size_bytes

    labels = json.loads(Path(trained.model_uri, F.TRAINING_RECORD).read_text())["labels"]
    for fmt in formats:
        folder = out / fmt
        assert (folder / "labels.txt").read_text().split() == labels
        contract = json.loads((folder / "preprocessing.json").read_text())
        assert contract["image_size"] == 24 and contract["channel_order"] == "RGB"
        assert contract["input"]["shape"][1:] == [24, 24, 3]
    int8 = json.loads((out / "tflite_int8" / "preprocessing.json").read_text())
    assert int8["input"]["dtype"] == "uint8" and int8["output"]["dequantize"]["scale"] > 0
    interpreter = tf.lite.Interpreter(model_path=str(out / "tflite_int8" / "model.tflite"))
    assert int8["input"]["name"] == interpreter.get_input_details()[0]["name"]
    onnx = json.loads((out / "onnx" / "preprocessing.json").read_text())
    assert onnx["input"] == {"name": "pixels", "dtype": "float32", "shape": ["batch", 24, 24, 3]}
    saved = json.loads((out / "edge_report.json").read_text())
    assert saved["passed"] and len(saved["formats"]) == 3
    assert "| tflite_int8 | TFLite interpreter |" in (out / "edge_report.md").read_text()
    assert not list(tmp_path.glob("edge.tmp-*")), "the staging folder is gone"


def test_runtimes_match_the_classifier_on_pixels(learned):
    """The runners' own (de)quantisation: ONNX to float precision, int8 within a step."""
    from components.edge.convert import convert
    from components.edge.export import load_pixels
    from components.edge.runtimes import runner
    from trainer.export import load_classifier

    config, examples, trained = learned
    classifier = load_classifier(trained.model_uri)
    pixels, _ = load_pixels(examples, "train", 24, "stretch", limit=48)
    expected = classifier.predict(pixels.astype(np.float32), verbose=0)
    onnx = runner("onnx", convert(classifier, "onnx")).predict(pixels)
    assert np.abs(onnx - expected).max() < 1e-4
    int8 = runner("tflite_int8", convert(classifier, "tflite_int8", pixels)).predict(pixels)
    assert np.abs(int8 - expected).mean() < 0.05 and np.allclose(int8.sum(axis=1), 1, atol=0.05)


def test_a_badly_calibrated_int8_model_fails_the_gate_and_only_the_report_is_written(
    learned, tmp_path, monkeypatch
):
    """Calibrating on black images leaves int8 no range for real ones: the gate must see it."""
    import components.edge.export as edge
    from components.edge.export import EdgeParityError, run_edge_export

    config, examples, trained = learned
    real = edge.load_pixels

    def black_training_images(uri, split, size, mode, limit=None):
        pixels, labels = real(uri, split, size, mode, limit)
        return (np.zeros_like(pixels) if split == "train" else pixels), labels

    monkeypatch.setattr(edge, "load_pixels", black_training_images)
    out = tmp_path / "edge"
    with pytest.raises(EdgeParityError, match="over the allowed 2.0"):
        run_edge_export(trained.model_uri, examples, str(out), ["tflite_int8", "onnx"], config)
    assert sorted(p.name for p in out.iterdir()) == ["edge_report.json", "edge_report.md"]
    assert json.loads((out / "edge_report.json").read_text())["passed"] is False


def test_export_edge_command_records_and_refuses_bad_input(learned, tmp_path, capsys):
    import tensorflow as tf

    from pipelines.adapters import mlflow_tracking as tracking

    config, examples, trained = learned
    out = tmp_path / "edge"
    base = ["export-edge", "--examples", examples, "--out", str(out)]
    base += [f"--set={o}" for o in OVERRIDES]

    err = fails_in_one_line(
        [*base, "--model", trained.model_uri, "--format", "coreml"], capsys, out
    )
    assert "unknown edge format 'coreml'" in err
    other = tmp_path / "other"
    tf.saved_model.save(tf.Module(), str(other))
    err = fails_in_one_line([*base, "--model", str(other), "--format", "onnx"], capsys, out)
    assert "not a visionpipe model" in err
    err = fails_in_one_line(
        [*base, "--model", str(tmp_path / "nowhere"), "--format", "onnx"], capsys, out
    )
    assert "nowhere" in err
    no_examples = [a for a in base if a not in ("--examples", examples)]
    err = fails_in_one_line(
        [*no_examples, "--model", trained.model_uri, "--format", "onnx"], capsys, out
    )
    assert "--examples is needed" in err and "only a models:/ version" in err

    assert (
        main([*base, "--model", trained.model_uri, "--format", "onnx", "--format", "tflite_int8"])
        == 0
    )
    shown = capsys.readouterr().out
    assert "| onnx | ONNX Runtime |" in shown and str(out) in shown
    assert len(shown.splitlines()) == 8, shown  # the table and the verdict, no converter chatter
    assert (out / "onnx" / "model.onnx").stat().st_size > 1000
    assert main([*base, "--model", trained.model_uri, "--format", "onnx"]) == 2  # not empty
    assert "is not empty" in capsys.readouterr().err

    client = tracking.client(tracking.tracking_uri(load_config()))
    experiment = client.get_experiment_by_name("visionpipe")
    (run,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.info.run_name == "edge-export" and r.info.status == "FINISHED"
    ]
    assert run.data.metrics["edge_onnx_agreement"] == 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "edge")}
    assert {"edge/edge_report.json", "edge/onnx"} <= artifacts


def test_errors_name_the_model_as_the_user_gave_it(tmp_path):
    from trainer.export import NotAVisionpipeModel, model_record, naming

    downloaded = str(tmp_path / "download" / "model")
    with pytest.raises(NotAVisionpipeModel, match=r"^models:/shapes@champion: no assets"):
        with naming(downloaded, "models:/shapes@champion"):
            model_record(downloaded)
    with pytest.raises(NotAVisionpipeModel, match=f"^{downloaded}: no assets"):
        with naming(downloaded, downloaded):
            model_record(downloaded)
