"""The built-in sample dataset: coloured shapes on noisy, textured backgrounds.

Each class is a shape; every image varies the shape's position, scale, rotation
and colour and the background's texture, so the task needs a real model, yet a
small CNN learns it on a CPU in minutes. Output is folder-per-class JPEG files
plus ``labels.csv`` (``path,label``, paths relative to the CSV). Deterministic for
a seed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "diamond")


@dataclass(frozen=True)
class SampleSpec:
    """What to generate."""

    classes: int = 5
    per_class: int = 300
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(SHAPES):
            raise ValueError(
                f"classes must be between 2 and {len(SHAPES)}. Received: {self.classes}"
            )
        if self.per_class < 1:
            raise ValueError(f"per_class must be at least 1. Received: {self.per_class}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels. Received: {self.size}")


def generate(out_dir: str | Path, spec: SampleSpec = SampleSpec()) -> dict[str, int]:
    """Writes the dataset to ``out_dir``; returns the image count per class."""
    out = Path(out_dir)
    rows: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for class_index, shape in enumerate(SHAPES[: spec.classes]):
        (out / shape).mkdir(parents=True, exist_ok=True)
        for i in range(spec.per_class):
            rng = np.random.default_rng([spec.seed, class_index, i])
            image = render(shape, spec.size, rng)
            rel = f"{shape}/{shape}_{i:05d}.jpg"
            image.save(out / rel, format="JPEG", quality=90)
            rows.append((rel, shape))
        counts[shape] = spec.per_class
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return counts


def render(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``shape`` on a random textured background."""
    image = _background(size, rng)
    scale = 4  # draw large, then downsample: anti-aliased edges
    layer = Image.new("L", (size * scale, size * scale), 0)
    radius = rng.uniform(0.22, 0.38) * size * scale
    margin = radius * 1.05
    cx = rng.uniform(margin, size * scale - margin)
    cy = rng.uniform(margin, size * scale - margin)
    angle = rng.uniform(0, 2 * math.pi)
    _draw_shape(ImageDraw.Draw(layer), shape, cx, cy, radius, angle)
    mask = layer.resize((size, size), Image.LANCZOS)
    image.paste(Image.new("RGB", (size, size), _shape_colour(image, rng)), (0, 0), mask)
    noise = rng.normal(0, 10, (size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 200, 3)
    gradient = rng.uniform(-50, 50, 3)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(direction) * xx + np.sin(direction) * yy
    freq = rng.uniform(3, 12)
    stripes = np.sin(2 * math.pi * freq * (np.cos(direction + 1) * xx + np.sin(direction + 1) * yy))
    texture = rng.uniform(5, 25) * stripes
    pixels = base + gradient * ramp[..., None] + texture[..., None]
    pixels = pixels + rng.normal(0, 18, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(radius=0.6))


def _shape_colour(background: Image.Image, rng: np.random.Generator) -> tuple[int, int, int]:
    mean = np.asarray(background, dtype=np.float32).mean(axis=(0, 1))
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - mean).sum() > 180:
            break
    return tuple(int(c) for c in colour)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * k / n),
            cy + r * math.sin(angle + 2 * math.pi * k / n),
        )
        for k, r in enumerate(radii)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float
):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=255)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, [r, r * 0.55] * 2, angle), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, [r] * 6, angle), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, r * 0.42] * 5, angle), fill=255)
    elif shape == "cross":
        arm = r * 0.33
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy, dx
            draw.polygon(
                [
                    (cx + dx * r + px * arm, cy + dy * r + py * arm),
                    (cx + dx * r - px * arm, cy + dy * r - py * arm),
                    (cx - dx * r - px * arm, cy - dy * r - py * arm),
                    (cx - dx * r + px * arm, cy - dy * r + py * arm),
                ],
                fill=255,
            )
    else:
        raise ValueError(f"Unknown shape {shape!r}; known: {', '.join(SHAPES)}")
