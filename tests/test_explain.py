"""Explanations: Grad-CAM and integrated gradients look where the evidence is; the command
writes one picture per image and refuses bad input in one line; evaluate's gallery."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from tests.conftest import fails_in_one_line

SIZE = 32


def _one_sided_shapes(n: int = 160, seed: int = 0):
    """Two classes told apart by a square that is always in the left half of the image:
    white in one class, red in the other, on noise that fills both halves alike."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 128, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(4, SIZE - 12), rng.integers(2, SIZE // 2 - 10)
        x[i, r : r + 8, c : c + 8] = (255.0, 255.0, 255.0) if y[i] else (255.0, 0.0, 0.0)
    return x, y


@pytest.fixture(scope="module")
def left_model():
    import keras

    from trainer.model import compile_model, make_classifier
    from visionpipe.config import TrainerConfig

    keras.utils.set_random_seed(1)
    trainer = TrainerConfig(depth=2, width=8)
    model = make_classifier((SIZE, SIZE, 3), 2, trainer, 8, 2, 0.0, [64.0] * 3, [40.0] * 3)
    compile_model(model, 3e-3, trainer)
    x, y = _one_sided_shapes()
    model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9  # it learned the shapes
    return model, x[:40], y[:40]


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_heat_maps_are_larger_on_the_side_holding_the_shapes(left_model, method):
    from trainer.explain import explain

    model, x, _ = left_model
    x = x[:16]
    maps = explain(model, x, model.predict(x, verbose=0).argmax(axis=1), method)
    assert maps.shape[1:] == (SIZE, SIZE) and 0.0 <= maps.min() and maps.max() <= 1.0
    left, right = maps[:, :, : SIZE // 2].mean(), maps[:, :, SIZE // 2 :].mean()
    assert left > 2 * right, (left, right)


def test_the_feature_layer_is_the_last_conv_block_also_inside_a_backbone():
    from trainer.explain import feature_layer, gradcam
    from trainer.model import make_classifier
    from visionpipe.config import TrainerConfig

    trainer = TrainerConfig(model="mobilenet_v2", weights="none")
    nested = make_classifier((SIZE, SIZE, 3), 3, trainer, 8, 2, 0.0, [0.0] * 3, [1.0] * 3)
    layer = feature_layer(nested)
    assert (layer.name, layer.container) == ("out_relu", "backbone")
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    assert gradcam(nested, x, np.array([0, 2])).shape == (2, SIZE, SIZE)
    chosen = feature_layer(nested, "block_16_project")
    assert chosen.container == "backbone" and len(chosen.shape) == 4


def test_a_named_layer_must_exist_and_be_a_feature_map(left_model):
    from trainer.explain import ExplainError, feature_layer

    model, _, _ = left_model
    auto = feature_layer(model)
    assert model.get_layer(auto.name).__class__.__name__ == "Activation"
    with pytest.raises(ExplainError, match="'nope' is not in the model; its last conv"):
        feature_layer(model, "nope")
    with pytest.raises(ExplainError, match="'probabilities' does not output a 4-D"):
        feature_layer(model, "probabilities")


def _images(tiny_dataset):
    return [str(tiny_dataset / c / f"{c}_00001.jpg") for c in ("circle", "square", "triangle")]


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_explain_writes_one_picture_per_image_and_an_index(
    trained, tiny_dataset, tmp_path, capsys, method
):
    from PIL import Image

    out = tmp_path / "why"
    images = _images(tiny_dataset)
    args = ["explain", "--model", trained.model_uri, *images, "--out", str(out)]
    assert main([*args, "--method", method]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == images
    index = json.loads((out / "explanations.json").read_text())
    assert index["method"] == method and len(index["images"]) == 3
    assert (index["layer"] is not None) == (method == "gradcam")
    for entry in index["images"]:
        picture = Image.open(entry["picture"])
        assert picture.format == "PNG" and picture.size[0] > 300
        assert 0.0 <= entry["probability"] <= 1.0


def test_explain_refuses_bad_input_in_one_line_writing_nothing(
    trained, tiny_dataset, tmp_path, capsys
):
    out = tmp_path / "why"
    good = _images(tiny_dataset)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    base = ["explain", "--model", trained.model_uri, "--out", str(out)]

    err = fails_in_one_line([*base, str(junk)], capsys, out)  # nothing to explain
    assert str(junk) in err and "not an image the model can decode" in err
    err = fails_in_one_line([*base, good[0], "--layer", "no_such_layer"], capsys, out)
    assert "'no_such_layer' is not in the model" in err
    err = fails_in_one_line(
        [*base, "--method", "integrated_gradients", "--layer", "x", good[0]], capsys, out
    )
    assert "--layer applies to gradcam only" in err

    other = tmp_path / "other_model"
    import tensorflow as tf

    tf.saved_model.save(tf.Module(), str(other))
    err = fails_in_one_line(
        ["explain", "--model", str(other), "--out", str(out), good[0]], capsys, out
    )
    assert "not a visionpipe model" in err
    with pytest.raises(SystemExit):
        main([*base, "--method", "saliency", good[0]])


def test_worst_mistakes_are_the_most_confident_wrong_ones():
    from components.evaluate.gallery import worst_mistakes

    labels = ["a", "b"]
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    truth = ["a", "a", "a", "a", "b"]
    assert worst_mistakes(truth, probabilities, labels, 10) == [3, 1, 4, 2]
    assert worst_mistakes(truth, probabilities, labels, 2) == [3, 1]
    assert worst_mistakes(truth, probabilities, labels, 0) == []


def test_evaluate_writes_the_mistakes_gallery_linked_from_the_report(
    trained, ingested, tiny_config, tmp_path
):
    from PIL import Image

    from components.evaluate.evaluate import run_evaluate

    out = tmp_path / "blessing"
    blessing = run_evaluate(ingested.output_uri, trained.model_uri, str(out), tiny_config)
    report = (out / "report.md").read_text()
    assert "![confusion matrix](confusion_matrix.png)" in report
    assert "![worst mistakes](mistakes.png)" in report and "(mistakes.html)" in report
    assert Image.open(out / "mistakes.png").format == "PNG"
    assert Image.open(out / "confusion_matrix.png").format == "PNG"
    page = (out / "mistakes.html").read_text()
    wrong = round((1 - blessing.candidate["accuracy"]) * blessing.candidate["examples"])
    assert f"{wrong} of {int(blessing.candidate['examples'])} test images misclassified" in page
    assert page.count("<tr>") == 1 + min(wrong, tiny_config.evaluate.gallery_size)
    assert page.count("data:image/png;base64,") == 2 * min(wrong, tiny_config.evaluate.gallery_size)


def test_explain_reports_a_file_it_cannot_explain_and_explains_the_others(
    trained, tiny_dataset, tmp_path, capsys
):
    out = tmp_path / "why"
    good = _images(tiny_dataset)[:2]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    args = ["explain", "--model", trained.model_uri, "--out", str(out), good[0], str(junk), good[1]]
    assert main(args) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("visionpipe: error")]
    assert errors == [
        f"visionpipe: error: {junk}: not an image the model can decode "
        "(JPEG, PNG, GIF, BMP or WebP)"
    ]
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == good
    index = json.loads((out / "explanations.json").read_text())
    assert [bool(i["error"]) for i in index["images"]] == [False, True, False]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        Path(i["picture"]).name for i in index["images"] if i["picture"]
    )
