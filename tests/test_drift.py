"""The drift detectors on generated observations: known distributions, known shifts."""

import numpy as np
import pytest

from visionpipe.drift import (
    ALARM_TESTS,
    Observations,
    Settings,
    detect,
    make_profile,
    mmd_test,
)
from visionpipe.profile import PROPERTIES

CLASSES = ["a", "b", "c"]


def _draw(
    n, seed, embedding_shift=0.0, brightness=0.5, confident=True, classes=CLASSES, spread=1.0
):
    """Observations of a 3-class model: class clusters in 8 dims, calibrated confidence."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, n)
    centres = {c: np.eye(8)[i] * 4 for i, c in enumerate(CLASSES + ["d", "e"])}
    embedding = np.stack([centres[c] for c in labels]) + rng.normal(0, spread, (n, 8))
    embedding[:, 0] += embedding_shift
    confidence = rng.beta(8, 1.2, n) if confident else rng.beta(2, 2, n) * 0.6 + 0.34
    right = rng.random(n) < confidence  # calibrated: right as often as it is confident
    wrong = np.array([CLASSES[(CLASSES.index(c) + 1) % 3] if c in CLASSES else "a" for c in labels])
    predicted = np.where(right & np.isin(labels, CLASSES), labels, wrong).astype(object)
    props = {p: rng.normal(1.0, 0.1, n) for p in PROPERTIES}
    props["brightness"] = rng.normal(brightness, 0.08, n)
    return Observations(
        predicted,
        confidence,
        embedding,
        props,
        np.array(["jpeg"] * n, dtype=object),
        labels.astype(object),
    )


@pytest.fixture(scope="module")
def profile():
    test = _draw(400, seed=1)
    accuracy = float(np.mean(test.classes == test.labels))
    return make_profile(test, CLASSES, accuracy)


def test_the_same_distribution_alarms_at_most_alpha_of_the_time():
    # 200 windows against 8 test splits: the rate over references and windows both.
    alarms = 0
    for ref in range(8):
        test = _draw(400, seed=1000 + ref)
        profile = make_profile(test, CLASSES, float(np.mean(test.classes == test.labels)))
        alarms += sum(
            detect(profile, _draw(150, seed=5000 + 100 * ref + i)).drift for i in range(25)
        )
    assert alarms <= 10  # alpha = 0.05 for all tests together


@pytest.mark.parametrize(
    "shifted,detector",
    [
        (dict(brightness=0.3), "property:brightness"),
        (dict(embedding_shift=2.5), "embedding"),
        (dict(classes=["d", "e"]), "ood_rate"),
        (dict(confident=False), "confidence"),
    ],
)
def test_each_shift_is_found_by_the_detector_it_concerns(profile, shifted, detector):
    report = detect(profile, _draw(150, seed=7, **shifted))
    assert report.drift and detector in report.alarms, report.reason
    assert detector in report.reason


def test_estimated_accuracy_follows_the_real_accuracy_without_labels(profile):
    same = _draw(300, seed=11)
    report = detect(profile, same)
    real = float(np.mean(same.classes == same.labels))
    assert abs(report.estimated_accuracy - real) <= 0.05
    unsure = _draw(300, seed=12, confident=False)  # a shift the model is unsure on
    report = detect(profile, unsure)
    assert report.estimated_accuracy < report.test_accuracy - 0.1
    assert "estimated_accuracy" in report.alarms


def test_a_test_split_without_errors_still_estimates_lower_accuracy_for_unsure_images():
    test = _draw(400, seed=21)
    test.classes[:] = test.labels  # a model that made no test error (test accuracy 1.0)
    test.confidence[:] = np.random.default_rng(21).beta(40, 1, 400)  # and sure of it
    perfect = make_profile(test, CLASSES, 1.0)
    same = test.take(np.arange(300))
    same.labels = None
    report = detect(perfect, same)  # what it was tested on
    assert report.estimated_accuracy > 0.97 and "estimated_accuracy" not in report.alarms
    unsure = detect(perfect, _draw(300, seed=23, confident=False))  # confidences 0.34-0.94
    # Below every test confidence the estimate falls towards chance (1/3), not 1.0.
    assert unsure.estimated_accuracy < 0.85 and "estimated_accuracy" in unsure.alarms


def test_live_accuracy_is_a_verdict_with_an_interval_and_per_class(profile):
    labelled = _draw(200, seed=13, confident=False)
    report = detect(profile, _draw(150, seed=14), labels=labelled)
    live = report.live
    assert live["images"] == 200 and live["ci95"][0] < live["accuracy"] < live["ci95"][1]
    assert set(live["per_class"]) == set(CLASSES)
    assert "live_accuracy" in report.alarms  # far below the gate's figure


def test_too_few_records_is_a_verdict_of_its_own(profile):
    report = detect(profile, _draw(20, seed=3))
    assert not report.drift and not report.enough_data
    assert report.reason == "not enough data: 20 records (the tests need 50)"


def test_the_distribution_tests_share_one_false_alarm_budget(profile):
    report = detect(profile, _draw(150, seed=5), Settings(alpha=0.05))
    levels = {d.threshold for d in report.detectors if d.name in ALARM_TESTS}
    assert levels == {0.05 / len(ALARM_TESTS)}
    assert {d.name for d in report.detectors if d.alarms} <= set(ALARM_TESTS)


def test_a_permutation_count_that_could_never_find_drift_is_refused():
    with pytest.raises(ValueError, match="could never find drift; use at least 260"):
        Settings(permutations=200)


def test_mmd_tells_two_samples_apart_only_when_they_differ():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (100, 4)), rng.normal(0, 1, (100, 4))
    _, p_same = mmd_test(x, y, 500, rng)
    _, p_shift = mmd_test(x, y + [1.0, 0, 0, 0], 500, rng)
    assert p_same > 0.05 and p_shift < 0.01
