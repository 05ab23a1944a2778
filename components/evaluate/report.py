"""What a person reads and looks at: the Markdown report and the confusion-matrix picture."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from components.evaluate.gate import Blessing
from components.evaluate.slices import markdown as slice_lines
from visionpipe.config import ROBUSTNESS_PREFIX

CONFUSION_PNG = "confusion_matrix.png"
ROBUSTNESS_PNG = "robustness.png"


def markdown_report(
    blessing: Blessing,
    confusion_picture: str | None = None,
    gallery: tuple[str, str, str] | None = None,
    robustness_picture: str | None = None,
    slices: tuple[int, str | None] | None = None,
    label_issues: tuple[str, str, str] | None = None,
) -> str:
    """A human-readable report: decision, checks, metrics, per-class table, confusion matrix.

    Args:
        blessing: the decision and the scores.
        confusion_picture: the confusion matrix PNG's file name beside the report.
        gallery: ``(note, png, html)`` of the worst-mistakes gallery beside the report.
        robustness_picture: the robustness chart's file name beside the report.
        slices: ``(evaluate.min_slice_examples, the slices chart's file name)``; the
            section lists ``blessing.slices``.
        label_issues: ``(note, png, html)`` of the suspect training labels.
    """
    lines = [
        f"# Evaluation: {'BLESSED' if blessing.blessed else 'NOT BLESSED'}",
        "",
        blessing.reason,
        "",
    ]
    lines += [
        "## Checks",
        "",
        "| check | value | threshold | passed |",
        "| --- | --- | --- | --- |",
    ]
    for c in blessing.checks:
        lines.append(
            f"| {c.name} | {c.value:.4f} | {c.threshold:.4f} | {'yes' if c.passed else 'NO'} |"
        )
    lines += ["", "## Metrics", "", "| metric | candidate | champion |", "| --- | --- | --- |"]
    for key, value in blessing.candidate.items():
        if "/" in key:
            continue
        old = blessing.champion.get(key) if blessing.champion else None
        lines.append(f"| {key} | {value:.4f} | {'' if old is None else f'{old:.4f}'} |")
    if robustness_picture:
        lines += ["", "## Robustness (accuracy on changed test images)", ""]
        lines += [f"![robustness]({robustness_picture})"]
    if slices is not None:
        lines += slice_lines(blessing.slices, *slices)
    report = blessing.candidate_report or {}
    if report:
        lines += [
            "",
            "## Per class (candidate)",
            "",
            "| class | precision | recall | f1 | support |",
        ]
        lines.append("| --- | --- | --- | --- | --- |")
        for c, m in report["per_class"].items():
            scores = " | ".join(f"{m[k]:.4f}" for k in ("precision", "recall", "f1"))
            lines.append(f"| {c} | {scores} | {m['support']} |")
        classes = report["classes"]
        lines += ["", "## Confusion matrix (rows: truth, columns: predicted)", ""]
        lines.append("| | " + " | ".join(classes) + " |")
        lines.append("| --- " * (len(classes) + 1) + "|")
        for c, row in zip(classes, report["confusion_matrix"], strict=True):
            lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
        if confusion_picture:
            lines += ["", f"![confusion matrix]({confusion_picture})"]
    if gallery:
        note, png, page = gallery
        lines += ["", "## Worst mistakes", "", note, "", f"![worst mistakes]({png})", ""]
        lines.append(f"[Every mistake shown, with its file and Grad-CAM]({page})")
    if label_issues:
        note, png, page = label_issues
        lines += ["", "## Training labels that are probably wrong", "", note + ".", ""]
        lines += [f"![suspect labels]({png})", "", f"[Each with its file]({page}); "]
        lines[-1] += "`visionpipe relabel` writes them as a CSV to correct."
    return "\n".join(lines) + "\n"


def confusion_png(report: dict[str, Any]) -> bytes:
    """The confusion matrix as a PNG heat map with counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = report["classes"]
    matrix = np.asarray(report["confusion_matrix"])
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def robustness_png(blessing: Blessing) -> bytes | None:
    """Accuracy on the clean test images and on each variant, candidate next to champion."""
    names = [k for k in blessing.candidate if k.startswith(ROBUSTNESS_PREFIX)]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = ["accuracy", *names]
    labels = ["clean", *(k.removeprefix(ROBUSTNESS_PREFIX) for k in names)]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(1.1 * len(keys) + 2, 3.5))
    models = [("candidate", blessing.candidate)]
    if blessing.champion:
        models.append(("champion", blessing.champion))
    width = 0.8 / len(models)
    for i, (name, metrics) in enumerate(models):
        values = [metrics.get(k, np.nan) for k in keys]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
