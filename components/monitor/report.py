"""What a person reads after monitoring: the Markdown report and its pictures.

``distributions.png`` puts each compared distribution beside the reference's (top-1
confidence, predicted classes, the image properties, the out-of-distribution score
with its threshold); ``ood_gallery.png`` shows the most out-of-distribution images
of the window, when their bytes are at hand (a scored folder, a logged file still
readable, or ``monitor.log_images``).
"""

from __future__ import annotations

import io
import json

import numpy as np

from components.monitor.monitor import REPORT_JSON, REPORT_MD, MonitorResult
from visionpipe import storage
from visionpipe.drift import Observations
from visionpipe.profile import PIXEL_PROPERTIES

DISTRIBUTIONS_PNG = "distributions.png"
GALLERY_PNG = "ood_gallery.png"
GALLERY_SIZE = 16


def write_report(out_dir, result: MonitorResult, profile, obs: Observations, scores, image_of):
    """Writes ``report.md``, ``monitor.json`` and the pictures under ``out_dir``.

    ``image_of(row)`` gives a row's image bytes (b"" when unknown); only the gallery's
    few are asked for.
    """
    pictures = []
    if len(obs):
        storage.write_bytes(
            storage.join(out_dir, DISTRIBUTIONS_PNG), distributions_png(profile, obs, scores)
        )
        pictures.append(("Distributions: now against the reference", DISTRIBUTIONS_PNG))
        gallery = gallery_png(obs, scores, image_of, profile["ood"]["threshold"])
        if gallery is not None:
            storage.write_bytes(storage.join(out_dir, GALLERY_PNG), gallery)
            pictures.append(("The most out-of-distribution images", GALLERY_PNG))
    storage.write_bytes(storage.join(out_dir, REPORT_MD), markdown(result, pictures).encode())
    storage.write_bytes(
        storage.join(out_dir, REPORT_JSON), (json.dumps(result.to_dict(), indent=2) + "\n").encode()
    )


def markdown(result: MonitorResult, pictures: list[tuple[str, str]]) -> str:
    """The report: verdict, every detector, live accuracy, what was not used, the pictures."""
    report, model = result.report, result.model
    name = f"{model.get('name', '')} v{model.get('version') or '?'}"
    lines = [
        f"# Monitoring {name}: {'DRIFT' if report.drift else 'no drift'}",
        "",
        report.reason,
        "",
        f"- source: {result.source}",
        f"- read: {result.window}",
        f"- model digest: {model.get('digest', '')[:12]}",
    ]
    if report.estimated_accuracy is not None:
        lines.append(
            f"- estimated accuracy (no labels): {report.estimated_accuracy:.4f}; the gate's test "
            f"accuracy: {report.test_accuracy:.4f}"
        )
    lines += ["", "## Detectors", "", "| detector | statistic | p-value | threshold | verdict |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for d in report.detectors:
        p = "" if d.p_value is None else f"{d.p_value:.3g}"
        t = "" if d.threshold is None else f"{d.threshold:.4g}"
        verdict = "DRIFT" if d.drift else ("reported" if not d.alarms else "ok")
        lines.append(f"| {d.name} | {d.statistic:.4g} | {p} | {t} | {verdict}: {d.detail} |")
    if report.live:
        live = report.live
        lines += [
            "",
            "## Live accuracy (fresh labels)",
            "",
            f"{live['accuracy']:.4f} on {live['images']} images, 95% CI "
            f"{live['ci95'][0]:.3f}-{live['ci95'][1]:.3f}; the gate's {live['gate_accuracy']:.4f}",
            "",
            "| class | accuracy | images |",
            "| --- | --- | --- |",
        ]
        for c, acc in live["per_class"].items():
            lines.append(f"| {c} | {acc:.4f} | {live['class_images'][c]} |")
    if result.unscored or result.unreadable_records:
        lines += ["", "## Not used", ""]
        if result.unreadable_records:
            lines.append(f"- {result.unreadable_records} log lines that do not parse")
        for file, reason in result.unscored:
            lines.append(f"- {file}: {reason}")
    for title, png in pictures:
        lines += ["", f"## {title}", "", f"![{title}]({png})"]
    return "\n".join(lines) + "\n"


def distributions_png(profile, obs: Observations, scores: np.ndarray) -> bytes:
    """Side-by-side histograms of now and the reference; one panel per compared quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = profile["sample"]
    panels = [("confidence", np.asarray(sample["confidence"]), obs.confidence)]
    panels += [
        (p, np.asarray(sample["properties"][p]), obs.properties[p]) for p in PIXEL_PROPERTIES
    ]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    axes = axes.ravel()
    for ax, (name, ref, now) in zip(axes, panels, strict=False):
        bins = np.histogram_bin_edges(np.concatenate([ref, now]), bins=30)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference (test split)")
        ax.hist(now, bins=bins, density=True, alpha=0.5, label="now")
        ax.set_title(name)
    axes[0].legend(fontsize=7)
    labels = profile["labels"]
    ref_counts = np.array([profile["predicted_counts"].get(c, 0) for c in labels], float)
    now_counts = np.array([np.sum(obs.classes == c) for c in labels], float)
    x = np.arange(len(labels))
    ax = axes[5]
    ax.bar(x - 0.2, ref_counts / max(ref_counts.sum(), 1), 0.4, label="reference")
    ax.bar(x + 0.2, now_counts / max(now_counts.sum(), 1), 0.4, label="now")
    ax.set_xticks(x, labels, rotation=45, fontsize=7)
    ax.set_title("predicted classes")
    ax = axes[6]
    ax.hist(scores, bins=30, alpha=0.7, color="tab:orange")
    ax.axvline(profile["ood"]["threshold"], color="black", linestyle="--", label="threshold")
    ax.set_title("OOD score (k-th neighbour distance)")
    ax.legend(fontsize=7)
    axes[7].axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def gallery_png(obs: Observations, scores, image_of, threshold: float) -> bytes | None:
    """The most out-of-distribution images of the window with their scores; None without bytes.

    Reads images in score order until ``GALLERY_SIZE`` decode (at most four times as many
    tries), so a window of 100k records reads a few dozen files, not all of them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = []
    for i in np.argsort(-scores)[: 4 * GALLERY_SIZE]:
        data = image_of(int(i))
        if not data:
            continue
        try:
            shown.append((i, Image.open(io.BytesIO(data)).convert("RGB")))
        except Exception:  # noqa: BLE001, S112 - any undecodable image is left out
            continue
        if len(shown) == GALLERY_SIZE:
            break
    if not shown:
        return None
    cols = min(4, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, image) in zip(axes.ravel(), shown, strict=False):
        image.thumbnail((160, 160))
        ax.imshow(image)
        flag = " OOD" if scores[i] > threshold else ""
        ax.set_title(
            f"{obs.classes[i]} {obs.confidence[i]:.2f}\nscore {scores[i]:.2f}{flag}", fontsize=8
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
