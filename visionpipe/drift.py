"""Whether what a model is given now still looks like its test split: the drift detectors.

Pure: columns of observations in (``Observations``, from the model's ``monitor``
signature), a reference profile (``make_profile``, made at evaluation) and verdicts
out. The statistics are scipy's and scikit-learn's; what is written here is only what
neither has for images: the kernel two-sample test on embeddings with its permutation
null, and the wiring.

The detectors, each with its statistic, p-value (or threshold) and verdict:

- ``class_prior``: chi-square goodness of fit of the predicted classes to their
  reference proportions;
- ``confidence``: two-sample Kolmogorov-Smirnov test of top-1 confidence;
- ``embedding``: maximum mean discrepancy (Gretton et al., 2012) with a Gaussian kernel
  of median-heuristic width, p-value from a permutation test;
- ``ood_rate``: the share of images whose distance to their k-th nearest reference
  embedding exceeds a threshold set on the test split (leave-one-out) at
  ``ood_false_alarm``; one-sided binomial test against that rate;
- ``property:<name>``: Kolmogorov-Smirnov test of each image property
  (``visionpipe.profile``); ``format`` is reported (total variation) but never alarms,
  since ingest re-encodes some formats;
- ``estimated_accuracy``: the mean calibrated confidence (isotonic calibration on the
  test split, the idea of NannyML's CBPE) against the gate's test accuracy, alarming
  below it by more than ``accuracy_margin``. The calibration is anchored at chance (a
  confidence of 1/K is right 1/K of the time, K classes): below the test split's least
  confidence it falls linearly to chance instead of staying at the lowest value seen,
  which for a test split without errors was 1.0 whatever the confidence;
- ``live_accuracy`` (with labels): the accuracy with its Wilson interval, alarming
  when the interval's upper end is below the gate's figure less the margin.

The distribution tests share one false-alarm budget, ``alpha``, split evenly
(Bonferroni), so a window from the reference distribution alarms with probability at
most ``alpha`` whatever the number of tests. They read a seeded sample of at most
``max_sample`` records of the window: their power then stops growing with traffic, so
at 100k records a shift too small to matter is not called drift.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from visionpipe.profile import PIXEL_PROPERTIES, PROPERTIES

PROFILE_VERSION = 1


@dataclass
class Observations:
    """Columns of what a model was given and answered, one row per image."""

    classes: np.ndarray  # predicted class names
    confidence: np.ndarray
    embedding: np.ndarray  # [n, dims]
    properties: dict[str, np.ndarray]
    formats: np.ndarray
    labels: np.ndarray | None = None  # true labels, when known
    keys: list[str] = field(default_factory=list)  # what each row is (file or hash)

    def __len__(self) -> int:
        return len(self.classes)

    def take(self, rows: np.ndarray) -> Observations:
        """The given rows."""
        return Observations(
            self.classes[rows],
            self.confidence[rows],
            self.embedding[rows],
            {k: v[rows] for k, v in self.properties.items()},
            self.formats[rows],
            None if self.labels is None else self.labels[rows],
            [self.keys[i] for i in rows] if self.keys else [],
        )

    @classmethod
    def from_outputs(cls, outputs: list[dict[str, Any]], keys: list[str]) -> Observations:
        """From ``monitor``-signature outputs (numpy), one dict per call, rows in order."""

        def column(name):
            return np.concatenate([o[name] for o in outputs]) if outputs else np.zeros(0)

        names = np.array([n.decode() for o in outputs for n in o["class_name"]], dtype=object)
        width, height = column("width").astype(float), column("height").astype(float)
        props = {p: column(p).astype(float) for p in PIXEL_PROPERTIES}
        ratio = np.divide(width, height, out=np.zeros_like(width), where=height > 0)
        props.update(width=width, height=height, aspect=ratio)  # as profile.aspect
        embedding = (
            np.concatenate([o["embedding"] for o in outputs]).astype(np.float64)
            if outputs
            else np.zeros((0, 0))
        )
        return cls(
            names,
            column("confidence").astype(float),
            embedding,
            props,
            np.array([f.decode() for o in outputs for f in o["format"]], dtype=object),
            None,
            list(keys),
        )

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> Observations:
        """From prediction-log records (``visionpipe.predlog``)."""
        props = {p: np.array([float(r.get(p, 0.0)) for r in records]) for p in PROPERTIES}
        dims = len(records[0]["embedding"]) if records else 0
        embedding = np.array([r["embedding"] for r in records], dtype=np.float64)
        return cls(
            np.array([r["class"] for r in records], dtype=object),
            np.array([float(r["confidence"]) for r in records]),
            embedding.reshape(len(records), dims),
            props,
            np.array([r.get("format", "") for r in records], dtype=object),
            None,
            [r.get("file") or r.get("sha256", "") for r in records],
        )


# The reference profile ---------------------------------------------------------------


def make_profile(
    obs: Observations,
    model_labels: list[str],
    test_accuracy: float,
    sample: int = 2000,
    neighbours: int = 5,
    false_alarm: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference a model is monitored against, from its test split's observations.

    ``obs.labels`` (the true test labels) calibrate the confidence; the embeddings,
    confidences and properties of at most ``sample`` test images are kept as they are
    (what the two-sample tests need), and the out-of-distribution threshold is the
    ``1 - false_alarm`` quantile of the test split's own leave-one-out neighbour
    distances.
    """
    from sklearn.isotonic import IsotonicRegression

    if obs.labels is None or not len(obs):
        raise ValueError("a reference profile needs labelled test observations")
    correct = (obs.classes == obs.labels).astype(float)
    chance = 1.0 / max(len(model_labels), 1)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    # One pseudo-observation at chance: a top-1 confidence is never below 1/K, and there
    # the model is right 1/K of the time; without it, confidences below every test
    # image's took the accuracy of the least confident test images.
    iso.fit(np.append(obs.confidence, chance), np.append(correct, chance))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(len(obs))[:sample])
    kept = obs.take(rows)
    unit = _unit(kept.embedding)
    k = max(1, min(neighbours, len(kept) - 1))
    own = np.sort(_knn_distance(unit, unit, k, leave_one_out=True))
    rank = min(len(own), int(math.ceil((1 - false_alarm) * (len(own) + 1))))
    threshold = float(own[rank - 1])
    counts = {c: int(np.sum(obs.classes == c)) for c in model_labels}
    return {
        "profile_version": PROFILE_VERSION,
        "examples": len(obs),
        "labels": list(model_labels),
        "test_accuracy": float(test_accuracy),
        "predicted_counts": counts,
        "true_counts": {c: int(np.sum(obs.labels == c)) for c in model_labels},
        "calibration": {
            "confidence": [round(float(x), 6) for x in iso.X_thresholds_],
            "accuracy": [round(float(y), 6) for y in iso.y_thresholds_],
        },
        "ood": {
            "method": "k-th nearest reference embedding (cosine, unit vectors)",
            "neighbours": k,
            "threshold": threshold,  # the rank-th smallest of the reference's own scores
            "rank": rank,
            "reference": len(own),
            "false_alarm": false_alarm,
        },
        "formats": {f: int(np.sum(obs.formats == f)) for f in sorted(set(obs.formats))},
        "sample": {
            "confidence": _rounded(kept.confidence),
            "classes": list(kept.classes),
            "embedding": [_rounded(row) for row in kept.embedding],
            "properties": {p: _rounded(v) for p, v in kept.properties.items()},
        },
    }


def _rounded(values) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(values).ravel()]


def check_profile(profile: dict[str, Any], where: str) -> None:
    """Raises ValueError unless ``profile`` is a reference profile this version reads."""
    found = profile.get("profile_version") if isinstance(profile, dict) else None
    if found != PROFILE_VERSION:
        raise ValueError(
            f"{where}: not a reference profile of this visionpipe "
            f"(profile_version {found!r}, expected {PROFILE_VERSION})"
        )


def estimated_accuracy(profile: dict[str, Any], confidence: np.ndarray) -> float:
    """The accuracy the calibrated confidences predict (no labels needed)."""
    cal = profile["calibration"]
    if not len(confidence):
        return float("nan")
    return float(np.mean(np.interp(confidence, cal["confidence"], cal["accuracy"])))


def ood_scores(profile: dict[str, Any], embedding: np.ndarray) -> np.ndarray:
    """Each image's distance to its k-th nearest reference embedding (higher: stranger)."""
    reference = _unit(np.asarray(profile["sample"]["embedding"], dtype=np.float64))
    return _knn_distance(_unit(embedding), reference, profile["ood"]["neighbours"])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _knn_distance(queries, reference, k: int, leave_one_out: bool = False) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    if not len(queries):
        return np.zeros(0)
    index = NearestNeighbors(n_neighbors=min(k + leave_one_out, len(reference))).fit(reference)
    distances, _ = index.kneighbors(queries)
    return distances[:, -1]


# The detectors -----------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """One test's outcome: its statistic, its p-value or threshold, and its verdict."""

    name: str
    drift: bool
    statistic: float
    p_value: float | None = None
    threshold: float | None = None
    detail: str = ""
    alarms: bool = True  # False: reported only, never a reason to retrain

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN as None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


DISTRIBUTION_TESTS = ("class_prior", "confidence", "embedding", "ood_rate") + tuple(
    f"property:{p}" for p in PROPERTIES
)
# Every test that can alarm; they share ``alpha`` (live_accuracy's share is kept for it
# whether or not labels are given, so thresholds do not move with the inputs).
ALARM_TESTS = (*DISTRIBUTION_TESTS, "estimated_accuracy", "live_accuracy")


@dataclass(frozen=True)
class Settings:
    """The detectors' thresholds (``visionpipe.sections.MonitorConfig``)."""

    alpha: float = 0.05
    min_records: int = 50
    max_sample: int = 1000
    permutations: int = 500
    accuracy_margin: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        level = self.alpha / len(ALARM_TESTS)
        if 1 / (self.permutations + 1) >= level:
            need = math.ceil(1 / level)
            raise ValueError(
                f"monitor.permutations={self.permutations}: the embedding test's smallest "
                f"p-value, 1/{self.permutations + 1}, is not below its share of alpha "
                f"({level:.4g}), so it could never find drift; use at least {need}"
            )


@dataclass(frozen=True)
class Report:
    """Every detector on one window, and the overall verdict."""

    records: int
    drift: bool
    reason: str
    detectors: list[Detector]
    enough_data: bool = True
    estimated_accuracy: float | None = None
    test_accuracy: float | None = None
    live: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["detectors"] = [d.to_dict() for d in self.detectors]
        return out

    @property
    def alarms(self) -> list[str]:
        """Names of the detectors that found drift."""
        return [d.name for d in self.detectors if d.drift]


def detect(
    profile: dict[str, Any],
    obs: Observations,
    settings: Settings = Settings(),  # noqa: B008 - frozen
    labels: Observations | None = None,
) -> Report:
    """Every detector on ``obs`` against ``profile``; ``labels``: labelled observations.

    Fewer than ``settings.min_records`` observations give a report that says so, with no
    drift found. Labelled observations add the live-accuracy verdict.
    """
    test_accuracy = float(profile["test_accuracy"])
    live, summary = (
        live_accuracy(profile, labels, settings)
        if labels is not None and len(labels)
        else (None, None)
    )
    if len(obs) < settings.min_records:
        reason = f"not enough data: {len(obs)} records (the tests need {settings.min_records})"
        detectors = [live] if live is not None else []
        drift = bool(live is not None and live.drift)
        if drift:
            reason += f"; {live.detail}"
        return Report(len(obs), drift, reason, detectors, False, None, test_accuracy, summary)
    rng = np.random.default_rng(settings.seed)
    window = (
        obs
        if len(obs) <= settings.max_sample
        else obs.take(np.sort(rng.permutation(len(obs))[: settings.max_sample]))
    )
    level = settings.alpha / len(ALARM_TESTS)
    sample = profile["sample"]
    detectors = [
        _class_prior(profile, window, level),
        _ks("confidence", np.asarray(sample["confidence"]), window.confidence, level),
        _embedding(np.asarray(sample["embedding"]), window.embedding, level, settings, rng),
        _ood_rate(profile, window, level),
    ]
    for name in PROPERTIES:
        ref = np.asarray(sample["properties"].get(name, []), dtype=float)
        detectors.append(_ks(f"property:{name}", ref, window.properties[name], level))
    detectors.append(_formats(profile, window))
    estimate = estimated_accuracy(profile, obs.confidence)
    detectors.append(_estimated(profile, obs, estimate, settings, level))
    if live is not None:
        detectors.append(live)
    found = [d for d in detectors if d.drift]
    reason = (
        "drift: " + "; ".join(f"{d.name} ({d.detail})" for d in found)
        if found
        else f"no drift: {len(detectors)} detectors on {len(obs)} records"
    )
    return Report(len(obs), bool(found), reason, detectors, True, estimate, test_accuracy, summary)


def _estimated(profile, obs: Observations, estimate: float, settings: Settings, level: float):
    """Whether the estimated accuracy is significantly below the gate's less the margin.

    A one-sided z-test with the variance of both figures: the estimate's as a sum of
    Bernoulli outcomes at the calibrated confidences, the gate's as binomial.
    """
    from scipy.stats import norm

    gate = float(profile["test_accuracy"])
    bound = gate - settings.accuracy_margin
    cal = np.interp(
        obs.confidence, profile["calibration"]["confidence"], profile["calibration"]["accuracy"]
    )
    var = float(np.sum(cal * (1 - cal))) / len(cal) ** 2 + gate * (1 - gate) / max(
        profile["examples"], 1
    )
    z = (estimate - bound) / math.sqrt(max(var, 1e-12))
    p = float(norm.cdf(z))
    return Detector(
        "estimated_accuracy",
        bool(p < level),
        estimate,
        p,
        level,
        f"estimated accuracy {estimate:.4f} (no labels) against the gate's {gate:.4f} less the "
        f"margin {settings.accuracy_margin:g}, p {p:.2g}",
    )


def _class_prior(profile, window: Observations, level: float) -> Detector:
    """Chi-square test of homogeneity of the two samples' predicted classes.

    Two-sample, not goodness of fit to the reference's shares: those come from a test
    split of finite size, and treating them as exact made a window of the same
    distribution alarm (2 of 5 windows of 60 against 126 test images).
    """
    from scipy.stats import chi2_contingency

    labels = profile["labels"]
    ref = np.array([profile["predicted_counts"].get(c, 0) for c in labels], dtype=float)
    observed = np.array([np.sum(window.classes == c) for c in labels], dtype=float)
    table = np.vstack([ref, observed])[:, (ref + observed) > 0]
    if table.shape[1] < 2:
        return Detector("class_prior", False, 0.0, 1.0, level, "one class predicted in both")
    stat, p, _, _ = chi2_contingency(table)
    ref = ref + 1e-12
    shares = observed / max(observed.sum(), 1)
    top = labels[int(np.argmax(np.abs(shares - ref / ref.sum())))]
    return Detector(
        "class_prior",
        bool(p < level),
        float(stat),
        float(p),
        level,
        f"chi-square {stat:.1f}, p {p:.2g}; most changed: {top} "
        f"{shares[labels.index(top)]:.0%} (reference {ref[labels.index(top)] / ref.sum():.0%})",
    )


def _ks(name: str, reference: np.ndarray, values: np.ndarray, level: float) -> Detector:
    from scipy.stats import ks_2samp

    if not len(reference) or not len(values):
        return Detector(name, False, float("nan"), None, level, "no values to compare")
    result = ks_2samp(reference, values)
    shift = float(np.median(values) - np.median(reference))
    return Detector(
        name,
        bool(result.pvalue < level),
        float(result.statistic),
        float(result.pvalue),
        level,
        f"KS D {result.statistic:.3f}, p {result.pvalue:.2g}; median "
        f"{np.median(values):.4g} (reference {np.median(reference):.4g}, {shift:+.3g})",
    )


def _embedding(reference, values, level, settings: Settings, rng) -> Detector:
    if len(reference) > settings.max_sample:
        reference = reference[rng.permutation(len(reference))[: settings.max_sample]]
    stat, p = mmd_test(reference, values, settings.permutations, rng)
    return Detector(
        "embedding",
        bool(p < level),
        stat,
        p,
        level,
        f"MMD^2 {stat:.4f}, permutation p {p:.2g} ({settings.permutations} permutations)",
    )


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, rng) -> tuple[float, float]:
    """Biased MMD^2 of samples ``x`` and ``y`` (Gaussian kernel, median heuristic), p-value.

    The null distribution comes from ``permutations`` random relabellings of the pooled
    sample, all evaluated at once as quadratic forms of one kernel matrix; the p-value
    counts the observed labelling too, so it is never 0.
    """
    from scipy.spatial.distance import cdist

    x, y = _unit(x), _unit(y)
    pooled = np.vstack([x, y])
    sq = cdist(pooled, pooled, "sqeuclidean")
    positive = sq[np.triu_indices_from(sq, k=1)]
    positive = positive[positive > 0]
    width = float(np.median(positive)) if len(positive) else 1.0
    kernel = np.exp(-sq / width)
    n, m = len(x), len(y)
    labels = np.zeros((n + m, permutations + 1))
    labels[:n, 0] = 1.0
    for column in range(1, permutations + 1):
        labels[rng.permutation(n + m)[:n], column] = 1.0
    kx = kernel @ labels  # [n+m, P+1]
    within_x = np.einsum("ip,ip->p", labels, kx) / n**2
    other = 1.0 - labels
    within_y = np.einsum("ip,ip->p", other, kernel @ other) / m**2
    between = np.einsum("ip,ip->p", other, kx) / (n * m)
    mmd = within_x + within_y - 2 * between
    observed = float(mmd[0])
    p = float((1 + np.sum(mmd[1:] >= observed)) / (permutations + 1))
    return observed, p


def _ood_rate(profile, window: Observations, level: float) -> Detector:
    """How many images lie beyond the reference's own neighbour-distance threshold.

    The threshold is the ``rank``-th smallest of ``N`` reference scores, so for images
    exchangeable with the reference the share beyond it is ``Beta(N - rank + 1, rank)``
    distributed and the count beta-binomial: the exact null (the conformal argument),
    which a binomial at the nominal rate is not, since it ignores that the threshold
    was itself estimated (it alarmed on 7.5% of same-distribution windows, not 5%).
    """
    from scipy.stats import betabinom

    ood = profile["ood"]
    scores = ood_scores(profile, window.embedding)
    flagged = int(np.sum(scores > ood["threshold"]))
    rate = flagged / len(scores)
    rank, total = ood["rank"], ood["reference"]
    p = float(betabinom.sf(flagged - 1, len(scores), total - rank + 1, rank))
    return Detector(
        "ood_rate",
        bool(p < level),
        rate,
        float(p),
        level,
        f"{flagged} of {len(scores)} ({rate:.1%}) beyond the test split's "
        f"{1 - ood['false_alarm']:.0%} neighbour distance {ood['threshold']:.3g} (expected "
        f"{ood['false_alarm']:.0%}), p {p:.2g}",
    )


def _formats(profile, window: Observations) -> Detector:
    ref = profile.get("formats", {})
    total = max(sum(ref.values()), 1)
    now = {f: float(np.mean(window.formats == f)) for f in set(window.formats) | set(ref)}
    tv = 0.5 * sum(abs(now.get(f, 0.0) - ref.get(f, 0) / total) for f in now)
    shown = ", ".join(f"{f} {share:.0%}" for f, share in sorted(now.items()) if share)
    return Detector(
        "property:format",
        False,
        float(tv),
        detail=f"{shown}; total variation {tv:.2f}",
        alarms=False,
    )


def live_accuracy(
    profile, labelled: Observations, settings: Settings
) -> tuple[Detector, dict[str, Any]]:
    """The accuracy on freshly labelled images, its Wilson interval, per class, vs the gate."""
    from scipy.stats import binomtest

    correct = labelled.classes == labelled.labels
    n, hits = len(correct), int(np.sum(correct))
    low, high = binomtest(hits, n).proportion_ci(0.95, method="wilson")
    gate = float(profile["test_accuracy"])
    bound = gate - settings.accuracy_margin
    level = settings.alpha / len(ALARM_TESTS)
    p = float(binomtest(hits, n, min(max(bound, 0.0), 1.0), alternative="less").pvalue)
    per_class = {
        c: round(float(np.mean(correct[labelled.labels == c])), 4)
        for c in sorted(set(labelled.labels))
    }
    worst = min(per_class, key=per_class.get)
    summary = {
        "images": n,
        "accuracy": hits / n,
        "ci95": [float(low), float(high)],
        "per_class": per_class,
        "class_images": {c: int(np.sum(labelled.labels == c)) for c in per_class},
        "gate_accuracy": gate,
    }
    detector = Detector(
        "live_accuracy",
        bool(p < level),
        hits / n,
        p,
        level,
        f"accuracy {hits / n:.4f} on {n} labelled images (95% CI {low:.3f}-{high:.3f}) "
        f"against the gate's {gate:.4f} less the margin, p {p:.2g}; weakest class {worst} "
        f"{per_class[worst]:.3f}",
    )
    return detector, summary
