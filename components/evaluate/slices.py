"""Sliced evaluation: every whole-model metric per slice of the test split, with intervals.

What a slice groups is defined in the core (``visionpipe.slicing``); this module scores
the candidate on each slice's examples (``metrics.evaluate_model`` on the subset) and
puts a 95 % percentile-bootstrap interval on every metric (``evaluate.slice_resamples``
resamples of the slice's examples). A slice with fewer than
``evaluate.min_slice_examples`` examples is reported but not judged by the gate.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from components.evaluate.metrics import evaluate_model
from visionpipe.config import SLICE_METRICS, EvaluateConfig
from visionpipe.slicing import SliceError, attribute_of, slice_values

SLICES_FILE = "slices.json"
SLICES_PNG = "slices.png"


def attributes_needed(slices: list[str]) -> list[str]:
    """The source attributes the slices read (``load_raw_split``'s ``attributes``)."""
    return sorted({a for a in map(attribute_of, slices) if a is not None})


def values_of(cfg: EvaluateConfig, test, brightness=None) -> dict[str, list[str]]:
    """Each configured slice's value per test example; ``brightness`` slices need it."""
    out = {}
    for name in cfg.slices:
        if name == "brightness" and brightness is None:
            continue
        out[name] = slice_values(
            name, test.attributes, test.formats, test.widths, test.heights, brightness
        )
    return out


def check_slice_thresholds(cfg: EvaluateConfig, values: dict[str, list[str]]) -> None:
    """Fails, naming it, on a threshold whose slice value no test example has.

    Raises:
        SliceError: the threshold, and the values the test split has.
    """
    for t in cfg.thresholds:
        if t.slice is None or t.slice_name not in values:
            continue
        wanted = t.slice.partition("=")[2]
        present = sorted(set(values[t.slice_name]))
        if wanted != "*" and wanted not in present:
            raise SliceError(
                f"evaluate threshold on {t.metric} [{t.slice}]: no test example has "
                f"{t.slice_name}={wanted} (values: {', '.join(present)})"
            )


def score_slices(
    cfg: EvaluateConfig,
    values: dict[str, list[str]],
    truth: list[str],
    probabilities: np.ndarray,
    labels: list[str],
) -> list[dict[str, Any]]:
    """Every slice's metrics, intervals and size, in slice-name then value order.

    Returns:
        ``[{slice, value, examples, judged, metrics: {m: v}, intervals: {m: [lo, hi]}}]``.
    """
    truth_array = np.asarray(truth, dtype=object)
    rng = np.random.default_rng(0)
    results = []
    for name, column in values.items():
        column = np.asarray(column, dtype=object)
        for value in sorted(set(column.tolist())):
            rows = np.flatnonzero(column == value)
            metrics = _metrics(truth_array[rows], probabilities[rows], labels, cfg)
            draws = rng.integers(0, len(rows), size=(cfg.slice_resamples, len(rows)))
            samples = [
                _metrics(truth_array[rows[d]], probabilities[rows[d]], labels, cfg) for d in draws
            ]
            intervals = {
                m: [float(q) for q in np.quantile([s[m] for s in samples], [0.025, 0.975])]
                for m in metrics
            }
            results.append(
                {
                    "slice": name,
                    "value": value,
                    "examples": int(len(rows)),
                    "judged": bool(len(rows) >= cfg.min_slice_examples),
                    "metrics": metrics,
                    "intervals": intervals,
                }
            )
    return results


def _metrics(truth, probabilities, labels, cfg: EvaluateConfig) -> dict[str, float]:
    flat, _ = evaluate_model(list(truth), probabilities, labels, cfg.top_k, cfg.calibration_bins)
    return {m: flat[m] for m in SLICE_METRICS}


def markdown(results: list[dict[str, Any]], min_examples: int, picture: str | None) -> list[str]:
    """The report's slices section: per slice, every metric with its 95 % interval."""
    if not results:
        return []
    lines = [
        "",
        "## Slices (candidate; 95 % bootstrap intervals)",
        "",
        f"Slices with fewer than {min_examples} test examples are shown but not gated.",
    ]
    if picture:
        lines += ["", f"![slices]({picture})"]
    for name in dict.fromkeys(r["slice"] for r in results):
        rows = [r for r in results if r["slice"] == name]
        lines += ["", f"### {name}", "", "| value | examples | " + " | ".join(SLICE_METRICS) + " |"]
        lines.append("| --- " * (len(SLICE_METRICS) + 2) + "|")
        for r in rows:
            cells = [
                f"{r['metrics'][m]:.3f} [{r['intervals'][m][0]:.3f}, {r['intervals'][m][1]:.3f}]"
                for m in SLICE_METRICS
            ]
            size = f"{r['examples']}" + ("" if r["judged"] else " (not judged)")
            lines.append(f"| {r['value']} | {size} | " + " | ".join(cells) + " |")
    return lines


def slices_png(results: list[dict[str, Any]], metric: str = "accuracy") -> bytes | None:
    """Accuracy per slice value with its interval, one panel per slice; pale: not judged."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(dict.fromkeys(r["slice"] for r in results))
    fig, axes = plt.subplots(
        1, len(names), figsize=(max(4.0, 2.6 * len(names)), 3.4), squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in results if r["slice"] == name]
        value = np.array([r["metrics"][metric] for r in rows])
        low = value - np.array([r["intervals"][metric][0] for r in rows])
        high = np.array([r["intervals"][metric][1] for r in rows]) - value
        colours = ["tab:blue" if r["judged"] else "lightgrey" for r in rows]
        ax.bar(range(len(rows)), value, color=colours, yerr=[low, high], capsize=3)
        ax.set_xticks(
            range(len(rows)), [f"{r['value']}\n(n={r['examples']})" for r in rows], fontsize=8
        )
        ax.set_ylim(0, 1.05)
        ax.set_title(name)
    axes[0][0].set_ylabel(metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["SliceError", "score_slices"]
