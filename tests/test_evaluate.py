import json

import pytest

from components.evaluate.evaluate import classification_metrics, gate, run_evaluate
from visionpipe import features as F
from visionpipe.config import load_config


def _cfg(*overrides):
    return load_config(overrides=list(overrides)).evaluate


def test_metrics_on_a_known_confusion():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "a"]
    m = classification_metrics(truth, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1: a = 2*2/(4+1+1)=0.667, b = 2*2/(4+1+0)=0.8, c = 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)


@pytest.mark.parametrize(
    "candidate,champion,overrides,blessed",
    [
        (0.90, None, ["evaluate.min_accuracy=0.8"], True),  # no champion: threshold only
        (0.70, None, ["evaluate.min_accuracy=0.8"], False),  # below threshold
        (0.90, 0.85, ["evaluate.min_accuracy=0.8"], True),  # better than champion
        (0.90, 0.90, ["evaluate.min_accuracy=0.8"], True),  # equal is not worse
        (0.88, 0.90, ["evaluate.min_accuracy=0.8"], False),  # worse than champion
        (0.88, 0.90, ["evaluate.min_accuracy=0.8", "evaluate.champion_tolerance=0.05"], True),
        (0.70, 0.60, ["evaluate.min_accuracy=0.8"], False),  # beats champion, fails threshold
    ],
)
def test_gate_matrix(candidate, champion, overrides, blessed):
    champ = None if champion is None else {"accuracy": champion, "macro_f1": champion}
    result = gate({"accuracy": candidate, "macro_f1": candidate}, champ, _cfg(*overrides))
    assert result.blessed is blessed
    assert result.reason.startswith("blessed" if blessed else "not blessed")
    assert len(result.checks) == (1 if champion is None else 2)


def test_evaluate_scores_candidate_and_champion_on_the_same_examples(ingested, trained, tmp_path):
    config = load_config(overrides=["evaluate.min_accuracy=0.0"])
    blessing = run_evaluate(
        ingested.output_uri,
        trained.model_uri,
        str(tmp_path),
        config,
        champion_model_uri=trained.model_uri,
    )
    assert blessing.candidate == blessing.champion
    assert blessing.candidate["examples"] == ingested.examples["test"]
    assert blessing.blessed
    saved = json.loads((tmp_path / F.BLESSING_FILE).read_text())
    assert saved["blessed"] is True and saved["checks"][1]["passed"] is True


def test_evaluate_records_the_threshold_check_it_decided_on(ingested, trained, tmp_path):
    config = load_config(overrides=["evaluate.min_accuracy=1.0"])
    blessing = run_evaluate(ingested.output_uri, trained.model_uri, str(tmp_path), config)
    [check] = blessing.checks  # no champion given: the threshold alone decides
    assert check.threshold == 1.0 and check.value == blessing.candidate["accuracy"]
    assert check.passed == (check.value >= 1.0) == blessing.blessed
    assert ("min_accuracy failed" in blessing.reason) == (not blessing.blessed)
