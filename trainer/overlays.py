"""Pictures of explanations: heat maps over images, one per file or as a gallery grid and page.

Everything is rendered to bytes in memory; callers write each file in one call, so
a failure leaves no half-written picture.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np

_ALPHA = 0.45  # how much of the heat map shows over the image


@dataclass(frozen=True)
class Explained:
    """One image, its heat map (None when it could not be computed), and its captions."""

    image: np.ndarray  # uint8 [h, w, 3]
    heat: np.ndarray | None  # [h, w] in [0, 1]
    predicted: str
    probability: float
    truth: str | None = None
    name: str = ""

    def caption(self, sep: str = ", ", words: tuple[str, str] = ("true", "predicted")) -> str:
        """``true T<sep>predicted P (p)``, or ``P (p)`` without a truth."""
        said = f"{self.predicted} ({self.probability:.2f})"
        first, second = words
        return f"{first} {self.truth}{sep}{second} {said}" if self.truth is not None else said


def overlay(image: np.ndarray, heat: np.ndarray | None) -> np.ndarray:
    """The image with the heat map blended over it in the ``jet`` colours (uint8 RGB)."""
    if heat is None:
        return np.asarray(image, np.uint8)
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1 - _ALPHA) * np.asarray(image, np.float32) + _ALPHA * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    return buf.getvalue()


def explanation_png(item: Explained, method: str) -> bytes:
    """The image and its heat map side by side; the prediction in the title."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6))
    axes[0].imshow(item.image, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(overlay(item.image, item.heat), interpolation="nearest")
    axes[1].set_title(method.replace("_", " "), fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(item.caption(), fontsize=11)
    fig.tight_layout()
    return _png(fig)


def gallery_png(
    items: list[Explained],
    title: str,
    columns: int = 4,
    words: tuple[str, str] = ("true", "predicted"),
    empty: str = "no mistakes on the test split",
) -> bytes:
    """A grid of overlays, each captioned with its true and predicted class (``words``)."""
    plt = _pyplot()
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.2 * rows + 0.6))
    for ax in np.asarray(axes).ravel():
        ax.axis("off")
    for ax, item in zip(np.asarray(axes).ravel(), items, strict=False):
        ax.imshow(overlay(item.image, item.heat), interpolation="nearest")
        ax.set_title(item.caption("\n", words), fontsize=9)
    if not items:
        fig.text(0.5, 0.5, empty, ha="center", va="center")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _png(fig)


def _data_uri(image: np.ndarray, side: int = 160) -> str:
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, np.uint8))
    scale = max(1, side // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery_html(
    items: list[Explained],
    title: str,
    note: str = "",
    words: tuple[str, str] = ("true", "predicted"),
    empty: str = "no mistakes on the test split",
) -> bytes:
    """A self-contained page (images inline): one row per item, image and overlay."""
    rows = []
    for rank, item in enumerate(items, 1):
        heat = (
            f'<img src="{_data_uri(overlay(item.image, item.heat))}" alt="heat map">'
            if item.heat is not None
            else "-"
        )
        rows.append(
            "<tr>"
            f"<td>{rank}</td><td>{html.escape(item.name)}</td>"
            f"<td>{html.escape(str(item.truth))}</td><td>{html.escape(item.predicted)}</td>"
            f"<td>{item.probability:.3f}</td>"
            f'<td><img src="{_data_uri(item.image)}" alt="image"></td>'
            f"<td>{heat}</td>"
            "</tr>"
        )
    body = "\n".join(rows) or f'<tr><td colspan="7">{html.escape(empty)}</td></tr>'
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(note)}</p>
<table>
<tr><th>#</th><th>file</th><th>{words[0]}</th><th>{words[1]}</th><th>probability</th>
<th>image</th><th>Grad-CAM</th></tr>
{body}
</table></body></html>
"""
    return page.encode()
