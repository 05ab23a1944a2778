import json

import numpy as np
import pytest

from components.evaluate.evaluate import run_evaluate
from components.evaluate.gate import ThresholdError, gate, significance_check
from components.evaluate.metrics import evaluate_model
from components.evaluate.report import markdown_report
from visionpipe import features as F
from visionpipe.config import ConfigError, load_config


def _cfg(*overrides):
    return load_config(overrides=list(overrides)).evaluate


def test_metrics_on_a_known_confusion():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "a"]
    labels = ["a", "b", "c"]
    onehot = np.eye(len(labels))[[labels.index(p) for p in pred]]
    m, _ = evaluate_model(truth, onehot, labels)
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
    def evaluate(out, *overrides, champion=None):
        config = load_config(overrides=list(overrides))
        return run_evaluate(
            ingested.output_uri, trained.model_uri, str(tmp_path / out), config, champion
        )

    accuracy = evaluate("measured", "evaluate.min_accuracy=0.0").candidate["accuracy"]
    # No champion: the accuracy threshold alone decides; at the model's own accuracy it passes.
    blessing = evaluate("at", f"evaluate.min_accuracy={accuracy!r}")
    [check] = blessing.checks
    assert check.threshold == accuracy and check.value == accuracy and check.passed
    assert blessing.blessed and blessing.reason.startswith("blessed: 1 checks passed")
    assert (tmp_path / "at" / "report.md").read_text().startswith("# Evaluation: BLESSED")
    # Against itself as champion, a required gain of 0.01 cannot be met: not blessed.
    blessing = evaluate(
        "gain",
        "evaluate.min_accuracy=0.0",
        "evaluate.champion_tolerance=null",
        "evaluate.change_thresholds=[{metric: accuracy, absolute: 0.01}]",
        champion=trained.model_uri,
    )
    assert not blessing.blessed
    assert blessing.reason == (
        "not blessed: accuracy gain vs champion >= 0.01 failed (0.0000 vs 0.0100)"
    )
    assert (tmp_path / "gain" / "report.md").read_text().startswith("# Evaluation: NOT BLESSED")


def test_every_metric_on_known_probabilities():
    labels = ["a", "b", "c"]
    truth = ["a", "a", "b", "c"]
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # a, right, confident
            [0.4, 0.5, 0.1],  # a predicted b; a is 2nd
            [0.1, 0.8, 0.1],  # b right
            [0.5, 0.1, 0.4],  # c predicted a; c is 2nd
        ]
    )
    m, report = evaluate_model(truth, probs, labels, top_k=2, bins=10)
    assert m["accuracy"] == 0.5 and m["top_k_accuracy"] == 1.0
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.4, 0.8, 0.4])))
    # precision a = 1/2, b = 1/2, c = 0; recall a = 1/2, b = 1, c = 0
    assert m["precision/a"] == 0.5 and m["recall/b"] == 1.0 and m["f1/c"] == 0.0
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["weighted_recall"] == pytest.approx((2 * 0.5 + 1 + 0) / 4)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert report["per_class"]["a"]["support"] == 2
    # ECE with 10 bins: 0.7 (right), 0.5 (wrong), 0.8 (right), 0.5 (wrong):
    # bin (0.6,0.7]: |1-0.7|*1/4, (0.4,0.5]: |0-0.5|*2/4, (0.7,0.8]: |1-0.8|*1/4
    assert m["expected_calibration_error"] == pytest.approx(0.3 / 4 + 0.5 * 2 / 4 + 0.2 / 4)


def test_a_true_class_the_model_does_not_know_counts_as_a_miss():
    m, _ = evaluate_model(["a", "new"], np.array([[0.9, 0.1], [0.6, 0.4]]), ["a", "b"])
    assert m["accuracy"] == 0.5 and m["recall/new"] == 0.0
    assert m["log_loss"] > 10  # probability 0 for the unknown class, clipped


def _metrics(acc, recalls, log_loss=0.5):
    m = {"accuracy": acc, "log_loss": log_loss, "macro_f1": acc}
    m.update({f"recall/{c}": r for c, r in recalls.items()})
    return m


@pytest.mark.parametrize(
    "candidate,champion,overrides,blessed,checks",
    [
        # every class's recall at least 0.8
        (
            _metrics(0.9, {"x": 0.9, "y": 0.85}),
            None,
            ['evaluate.thresholds=[{metric: recall, class_name: "*", lower: 0.8}]'],
            True,
            3,
        ),
        (
            _metrics(0.9, {"x": 0.9, "y": 0.7}),
            None,
            ['evaluate.thresholds=[{metric: recall, class_name: "*", lower: 0.8}]'],
            False,
            3,
        ),
        (
            _metrics(0.9, {"x": 0.9, "y": 0.7}),
            None,
            ["evaluate.thresholds=[{metric: recall, class_name: x, lower: 0.8}]"],
            True,
            2,
        ),
        # an upper bound, on a lower-is-better metric
        (
            _metrics(0.9, {}, log_loss=0.6),
            None,
            ["evaluate.thresholds=[{metric: log_loss, upper: 0.5}]"],
            False,
            2,
        ),
        # change thresholds: log loss must drop by 10% relative to the champion
        (
            _metrics(0.9, {}, log_loss=0.40),
            _metrics(0.9, {}, log_loss=0.5),
            ["evaluate.change_thresholds=[{metric: log_loss, relative: 0.1}]"],
            True,
            3,
        ),
        (
            _metrics(0.9, {}, log_loss=0.48),
            _metrics(0.9, {}, log_loss=0.5),
            ["evaluate.change_thresholds=[{metric: log_loss, relative: 0.1}]"],
            False,
            3,
        ),
        # accuracy must improve by at least 0.02 (absolute)
        (
            _metrics(0.91, {}),
            _metrics(0.90, {}),
            ["evaluate.change_thresholds=[{metric: accuracy, absolute: 0.02}]"],
            False,
            3,
        ),
        # no thresholds at all: never bless ...
        (
            _metrics(1.0, {}),
            None,
            ["evaluate.min_accuracy=null", "evaluate.champion_tolerance=null"],
            False,
            0,
        ),
        # ... unless told to
        (
            _metrics(0.1, {}),
            None,
            [
                "evaluate.min_accuracy=null",
                "evaluate.champion_tolerance=null",
                "evaluate.bless_without_thresholds=true",
            ],
            True,
            0,
        ),
        # only champion checks configured and no champion yet: no check applies
        (_metrics(1.0, {}), None, ["evaluate.min_accuracy=null"], False, 0),
        # with a champion the same config decides on the comparison
        (_metrics(0.9, {}), _metrics(0.8, {}), ["evaluate.min_accuracy=null"], True, 1),
    ],
)
def test_gate_thresholds(candidate, champion, overrides, blessed, checks):
    result = gate(candidate, champion, _cfg(*overrides))
    assert result.blessed is blessed, result.reason
    assert len(result.checks) == checks
    assert result.reason.startswith("blessed" if blessed else "not blessed")


def test_thresholds_naming_unknown_metrics_fail_in_config():
    with pytest.raises(ConfigError, match="unknown metric 'acuracy'"):
        _cfg("evaluate.thresholds=[{metric: acuracy, lower: 0.5}]")
    with pytest.raises(ConfigError, match="per-class: set class_name"):
        _cfg("evaluate.thresholds=[{metric: recall, lower: 0.5}]")
    with pytest.raises(ConfigError, match="needs lower and/or upper"):
        _cfg("evaluate.thresholds=[{metric: accuracy}]")


def test_threshold_on_an_unknown_class_fails_before_scoring(ingested, tmp_path):
    config = load_config(
        overrides=["evaluate.thresholds=[{metric: recall, class_name: hexagon, lower: 0.5}]"]
    )
    with pytest.raises(ThresholdError, match="hexagon"):
        run_evaluate(ingested.output_uri, str(tmp_path / "no-model-needed"), str(tmp_path), config)


@pytest.mark.parametrize("test", ["mcnemar", "bootstrap"])
def test_significance_requires_a_real_gain(test):
    cfg = _cfg(f"evaluate.significance={{test: {test}, alpha: 0.05}}")
    rng = np.random.default_rng(3)
    champion = rng.random(400) < 0.80
    clearly_better = champion | (rng.random(400) < 0.6)  # fixes many, breaks none
    barely = champion.copy()
    barely[np.flatnonzero(~champion)[:1]] = True  # one more right out of 400
    assert significance_check(clearly_better, champion, cfg).passed
    assert not significance_check(barely, champion, cfg).passed
    m = {"accuracy": 0.9}
    result = gate(m, {"accuracy": 0.8}, cfg, [], {"accuracy": (barely.tolist(), champion.tolist())})
    assert not result.blessed and "significant" in result.reason


def test_report_has_checks_per_class_and_confusion(ingested, trained, tmp_path):
    config = load_config(overrides=["evaluate.min_accuracy=0.0"])
    blessing = run_evaluate(ingested.output_uri, trained.model_uri, str(tmp_path), config)
    text = markdown_report(blessing)
    assert "## Per class" in text and "## Confusion matrix" in text and "accuracy >= 0" in text
    report = blessing.candidate_report
    assert sum(map(sum, report["confusion_matrix"])) == ingested.examples["test"]
    from visionpipe.transform_graph import load_raw_split

    truth = load_raw_split(ingested.output_uri, "test").labels
    assert set(report["per_class"]) >= set(truth)
    assert sum(m["support"] for m in report["per_class"].values()) == len(truth)


def test_a_threshold_on_a_metric_that_was_not_computed_is_an_error_not_zero():
    # An upper bound would pass on a silent 0.0; the gate names the metric instead.
    cfg = _cfg("evaluate.thresholds=[{metric: log_loss, upper: 0.5}]", "evaluate.min_accuracy=null")
    with pytest.raises(ThresholdError, match="computed no 'log_loss'"):
        gate({"accuracy": 0.9}, None, cfg)


def test_an_unknown_metric_name_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="unknown metric 'acuracy'"):
        _cfg("evaluate.thresholds=[{metric: acuracy, lower: 0.5}]")
