"""The robustness gate: fixed variants of the test images, scored through the served model."""

import io

import numpy as np
import pytest
from PIL import Image

from components.evaluate.evaluate import run_evaluate
from components.evaluate.gate import ThresholdError, gate
from visionpipe.config import ConfigError, load_config
from visionpipe.variants import VARIANTS, make_variant


def _photo(seed=0, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_is_fixed_changes_the_image_and_keeps_its_size(name):
    data = _photo()
    once, again = make_variant(data, name), make_variant(data, name)
    assert once == again  # seeded: the same variant run after run
    assert Image.open(io.BytesIO(once)).size == (48, 40)
    if name == "png":
        assert Image.open(io.BytesIO(once)).format == "PNG"
        assert np.array_equal(_pixels(once), _pixels(data))  # lossless: the same pixels
    else:
        assert np.abs(_pixels(once) - _pixels(data)).mean() > 1.0, name


def test_an_unknown_variant_or_undecodable_bytes_are_refused():
    with pytest.raises(ValueError, match="unknown robustness variant 'fog'"):
        make_variant(_photo(), "fog")
    with pytest.raises(ValueError, match="not an image PIL decodes"):
        make_variant(b"not an image", "blur")


def test_both_models_are_scored_under_every_variant_and_the_report_shows_it(
    ingested, trained, tmp_path
):
    config = load_config(overrides=["evaluate.min_accuracy=0.0"])
    blessing = run_evaluate(
        ingested.output_uri, trained.model_uri, str(tmp_path), config, trained.model_uri
    )
    for variant in VARIANTS:
        metric = f"accuracy_under_{variant}"
        assert 0.0 <= blessing.candidate[metric] <= 1.0
        assert blessing.champion[metric] == blessing.candidate[metric]  # the same model
    # Lossless PNG of the same pixels: the served model answers as on the originals.
    assert blessing.candidate["accuracy_under_png"] == pytest.approx(blessing.candidate["accuracy"])
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    assert "## Robustness" in (tmp_path / "report.md").read_text()


def test_the_gate_bounds_robustness_and_tests_its_gain_for_significance():
    cfg = load_config(
        overrides=[
            "evaluate.min_accuracy=null",
            "evaluate.thresholds=[{metric: accuracy_under_jpeg_q30, lower: 0.8}]",
            "evaluate.change_thresholds=[{metric: accuracy_under_noise, absolute: 0.0}]",
            "evaluate.significance={test: mcnemar, alpha: 0.05}",
        ]
    ).evaluate
    candidate = {"accuracy": 0.95, "accuracy_under_jpeg_q30": 0.6, "accuracy_under_noise": 0.9}
    champion = {"accuracy": 0.94, "accuracy_under_jpeg_q30": 0.7, "accuracy_under_noise": 0.85}
    same = [True] * 90 + [False] * 10
    correct = {"accuracy": (same, same), "accuracy_under_noise": (same, same)}
    result = gate(candidate, champion, cfg, [], correct)
    failed = {c.name for c in result.checks if not c.passed}
    assert "accuracy_under_jpeg_q30 >= 0.8" in failed
    assert "accuracy_under_noise gain significant (McNemar, p < 0.05)" in failed
    assert not result.blessed


def test_a_threshold_on_a_variant_not_made_or_not_known_is_refused_before_scoring(
    ingested, trained, tmp_path
):
    config = load_config(
        overrides=[
            "evaluate.robustness=[png]",
            "evaluate.thresholds=[{metric: accuracy_under_blur, lower: 0.5}]",
        ]
    )
    with pytest.raises(ThresholdError, match="does not make the blur variant .it makes: png."):
        run_evaluate(ingested.output_uri, trained.model_uri, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown metric 'accuracy_under_fog'"):
        load_config(overrides=["evaluate.thresholds=[{metric: accuracy_under_fog, lower: 0.5}]"])
