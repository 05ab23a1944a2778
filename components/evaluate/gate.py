"""The gate: whether the candidate is blessed, from its metrics and the champion's.

Value thresholds (bounds on any metric, per class too), change thresholds against the
champion (absolute or relative, in the metric's better direction), an optional
significance test of the accuracy gain (McNemar or bootstrap). No thresholds at all
never blesses unless ``evaluate.bless_without_thresholds``; without a champion only
value thresholds apply. Pure: metrics in, a ``Blessing`` out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from visionpipe.config import ROBUSTNESS_PREFIX, ChangeThreshold, EvaluateConfig, Threshold
from visionpipe.errors import UserError


class ThresholdError(UserError, ValueError):
    """A threshold names a class the test data does not have, or a metric not computed."""


def _metric(metrics: dict[str, float], key: str, label: str, whose: str) -> float:
    """``metrics[key]``; a threshold on a metric that was not computed is an error, not 0.

    Raises:
        ThresholdError: evaluation computed no ``key`` for ``whose`` model.
    """
    if key not in metrics:
        known = ", ".join(sorted(k for k in metrics if "/" not in k))
        raise ThresholdError(
            f"evaluate threshold on {label}: the {whose}'s evaluation computed no {key!r} "
            f"(computed: {known})"
        )
    return metrics[key]


@dataclass(frozen=True)
class Check:
    """One condition of the gate, with the values it compared."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str = ""


@dataclass(frozen=True)
class Blessing:
    """The gate's decision, every check, a one-line reason, and both models' metrics."""

    blessed: bool
    reason: str
    candidate: dict[str, float]
    champion: dict[str, float] | None
    checks: list[Check] = field(default_factory=list)
    candidate_report: dict[str, Any] | None = None
    champion_report: dict[str, Any] | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)  # the candidate's, per slice
    label_issues: int | None = None  # training images whose label is probably wrong

    def to_dict(self) -> dict:
        """JSON-ready form (written as ``blessing.json``)."""
        return asdict(self)


def gate(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    cfg: EvaluateConfig,
    classes: list[str] | None = None,
    correct: dict[str, tuple[list[bool], list[bool]]] | None = None,
    slices: list[dict[str, Any]] | None = None,
) -> Blessing:
    """The decision: every configured check on the candidate (and against the champion).

    Args:
        candidate: the candidate's flat metrics (``evaluate_model``).
        champion: the champion's, or None when there is no champion.
        cfg: the thresholds.
        classes: the test data's classes (for ``class_name: "*"``); default: from metrics.
        correct: per-example correctness of candidate and champion, by accuracy metric
            (``accuracy``, ``accuracy_under_<variant>``), for significance tests: of the
            accuracy, and of every robustness metric a change threshold names.
        slices: the candidate's per-slice results (``slices.score_slices``), for
            thresholds with a ``slice`` and ``evaluate.slice_gaps``.
    """
    if classes is None:
        classes = sorted({k.split("/", 1)[1] for k in candidate if "/" in k})
    checks: list[Check] = []
    for t in cfg.value_thresholds():
        if t.slice is not None:
            checks.extend(_slice_checks(t, slices or []))
            continue
        for key, label in _keys(t, classes):
            checks.extend(_bound_checks(t, label, _metric(candidate, key, label, "candidate")))
    checks.extend(_gap_checks(cfg, slices or []))
    changes = cfg.all_change_thresholds()
    if champion is not None:
        for t in changes:
            for key, label in _keys(t, classes):
                checks.extend(_change_checks(t, key, label, candidate, champion))
        if cfg.significance.test != "none" and correct:
            named = {"accuracy"} | {t.metric for t in changes if t.class_name is None}
            for metric, (mine, theirs) in sorted(correct.items()):
                if metric in named:
                    checks.append(significance_check(mine, theirs, cfg, metric))
    if not checks:  # nothing configured, or only champion checks and no champion yet
        blessed = cfg.bless_without_thresholds
        what = (
            "no thresholds configured" if not changes else "no champion yet and no value thresholds"
        )
        reason = (
            f"blessed: {what}, and evaluate.bless_without_thresholds is true"
            if blessed
            else f"not blessed: {what} (configure evaluate thresholds, or set "
            "evaluate.bless_without_thresholds: true)"
        )
        return Blessing(blessed, reason, candidate, champion, checks, slices=slices or [])
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "not blessed: " + "; ".join(
            f"{c.name} failed ({c.value:.4f} vs {c.threshold:.4f})" for c in failed
        )
    else:
        vs = "no champion yet" if champion is None else "champion comparison passed"
        reason = (
            f"blessed: {len(checks)} checks passed ({vs}); accuracy {candidate['accuracy']:.4f}"
        )
    return Blessing(not failed, reason, candidate, champion, checks, slices=slices or [])


def _slice_checks(t: Threshold, slices: list[dict[str, Any]]) -> list[Check]:
    """A slice threshold's checks: one per bound and judged slice value it covers."""
    wanted = t.slice.partition("=")[2]
    checks = []
    for r in slices:
        if r["slice"] != t.slice_name or not r["judged"] or wanted not in ("*", r["value"]):
            continue
        label = f"{t.metric}[{r['slice']}={r['value']}]"
        checks += _bound_checks(t, label, r["metrics"][t.metric], f"{r['examples']} examples")
    return checks


def _bound_checks(t: Threshold, label: str, value: float, detail: str = "") -> list[Check]:
    """A value threshold's lower and upper bound (those set) on one value."""
    checks = []
    if t.lower is not None:
        checks.append(Check(f"{label} >= {t.lower:g}", value >= t.lower, value, t.lower, detail))
    if t.upper is not None:
        checks.append(Check(f"{label} <= {t.upper:g}", value <= t.upper, value, t.upper, detail))
    return checks


def _gap_checks(cfg: EvaluateConfig, slices: list[dict[str, Any]]) -> list[Check]:
    """The largest gap of each ``evaluate.slice_gaps`` metric between judged slice values."""
    checks = []
    for g in cfg.slice_gaps:
        judged = [r for r in slices if r["slice"] == g.slice and r["judged"]]
        if len(judged) < 2:
            continue
        best = max(judged, key=lambda r: r["metrics"][g.metric])
        worst = min(judged, key=lambda r: r["metrics"][g.metric])
        gap = best["metrics"][g.metric] - worst["metrics"][g.metric]
        checks.append(
            Check(
                f"{g.metric} gap over {g.slice} <= {g.max_gap:g}",
                gap <= g.max_gap + 1e-12,
                gap,
                g.max_gap,
                f"best {g.slice}={best['value']} {best['metrics'][g.metric]:.4f}, "
                f"worst {g.slice}={worst['value']} {worst['metrics'][g.metric]:.4f}",
            )
        )
    return checks


def _keys(t: Threshold | ChangeThreshold, classes: list[str]) -> list[tuple[str, str]]:
    """The metric keys a threshold covers, with readable names."""
    if t.class_name is None:
        return [(t.metric, t.metric)]
    names = classes if t.class_name == "*" else [t.class_name]
    return [(f"{t.metric}/{c}", f"{t.metric}[{c}]") for c in names]


def _change_checks(t: ChangeThreshold, key, label, candidate, champion) -> list[Check]:
    new = _metric(candidate, key, label, "candidate")
    old = _metric(champion, key, label, "champion")
    gain = new - old if t.higher_is_better else old - new
    word = "gain" if t.higher_is_better else "reduction"
    checks = []
    if t.absolute is not None:
        checks.append(
            Check(
                f"{label} {word} vs champion >= {t.absolute:g}",
                gain >= t.absolute - 1e-12,
                gain,
                t.absolute,
                f"candidate {new:.4f}, champion {old:.4f}",
            )
        )
    if t.relative is not None:
        ratio = gain / abs(old) if old else (math.inf if gain > 0 else 0.0)
        checks.append(
            Check(
                f"{label} relative {word} vs champion >= {t.relative:g}",
                ratio >= t.relative - 1e-12,
                ratio,
                t.relative,
                f"candidate {new:.4f}, champion {old:.4f}",
            )
        )
    return checks


def significance_check(
    candidate_correct: list[bool],
    champion_correct: list[bool],
    cfg: EvaluateConfig,
    metric: str = "accuracy",
) -> Check:
    """Whether the candidate's gain in ``metric`` (an accuracy) over the champion is significant.

    ``mcnemar``: the exact one-sided McNemar test on the examples where the two
    disagree (p < alpha). ``bootstrap``: the lower end of the (1 - 2 alpha) bootstrap
    interval of the accuracy difference is above 0 (equivalently one-sided at alpha).
    """
    a = np.asarray(candidate_correct, dtype=bool)
    b = np.asarray(champion_correct, dtype=bool)
    sig = cfg.significance
    if sig.test == "mcnemar":
        wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
        p = _binomial_upper_tail(wins, wins + losses)
        return Check(
            f"{metric} gain significant (McNemar, p < {sig.alpha:g})",
            p < sig.alpha,
            p,
            sig.alpha,
            f"candidate right/champion wrong {wins}, the reverse {losses}",
        )
    rng = np.random.default_rng(0)
    n = len(a)
    draws = rng.integers(0, n, size=(sig.resamples, n))
    diffs = a[draws].mean(axis=1) - b[draws].mean(axis=1)
    low = float(np.quantile(diffs, sig.alpha))
    return Check(
        f"{metric} gain significant (bootstrap {1 - sig.alpha:.0%} lower bound > 0)",
        low > 0,
        low,
        0.0,
        f"difference {a.mean() - b.mean():+.4f}, {sig.resamples} resamples",
    )


def _binomial_upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2); 1 when there are no disagreements."""
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


def check_threshold_classes(cfg: EvaluateConfig, classes: list[str]) -> None:
    """Raises ThresholdError if a threshold names a class the test data does not have.

    Or a robustness metric whose variant ``evaluate.robustness`` does not make.
    """
    made = {ROBUSTNESS_PREFIX + v for v in cfg.robustness}
    for t in (*cfg.value_thresholds(), *cfg.all_change_thresholds()):
        if t.metric.startswith(ROBUSTNESS_PREFIX) and t.metric not in made:
            raise ThresholdError(
                f"evaluate threshold on {t.metric}: evaluate.robustness does not make the "
                f"{t.metric.removeprefix(ROBUSTNESS_PREFIX)} variant "
                f"(it makes: {', '.join(cfg.robustness) or 'none'})"
            )
    named = [
        t.class_name
        for t in (*cfg.value_thresholds(), *cfg.all_change_thresholds())
        if t.class_name not in (None, "*")
    ]
    unknown = sorted(set(named) - set(classes))
    if unknown:
        raise ThresholdError(
            f"evaluate thresholds name classes {unknown} that the test data does not have; "
            f"classes: {classes}"
        )
