"""Built-in generated datasets, three kinds that need different training choices.

- ``shapes`` (the sample dataset): coloured shapes on noisy, textured backgrounds. A
  shape keeps its class when mirrored or rotated.
- ``glyphs``: letters and digits rendered with several fonts, sizes, small shifts and
  tilts. Mirroring changes their class (b/d, p/q, L/J horizontally; b/p, d/q vertically;
  6/9 under both flips; 2/5 are near mirror images of each other).
- ``thumbnails``: small, low-detail layouts (bands, checks, blobs, frames) of a few
  pixels, upscaled several times and JPEG-compressed, as thumbnails are; colour carries
  no class information.

Each image varies its drawing (position, scale, rotation, colour, texture), so the task
needs a real model, yet a small CNN learns it on a CPU in a minute. Output is
folder-per-class JPEG files plus ``labels.csv`` (``path,label``, paths relative to the
CSV). Deterministic for a seed.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "diamond")
GLYPHS = ("b", "d", "p", "q", "2", "5", "6", "9", "L", "J")
PATTERNS = ("bands_h", "bands_v", "checks", "blob", "ring", "frame", "halves_h", "halves_v")
# Fonts shipped with matplotlib (a dependency), so every machine has the same ones.
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
)


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: ``classes`` of the kind's class list, in its order."""

    classes: int = 5
    per_class: int = 300
    size: int = 64
    seed: int = 0
    kind: str = "shapes"
    first_class: int = 0  # classes from this one of the kind's list on (unseen ones)
    shift: str = "none"  # a change of every image (SHIFTS): data a model was not shown

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}. Received: {self.kind!r}")
        names = KINDS[self.kind][0]
        if self.shift not in SHIFTS:
            raise ValueError(f"shift must be one of {', '.join(SHIFTS)}. Received: {self.shift!r}")
        if not 0 <= self.first_class <= len(names) - 2:
            raise ValueError(
                f"first_class must be between 0 and {len(names) - 2} for {self.kind}. "
                f"Received: {self.first_class}"
            )
        if not 2 <= self.classes <= len(names) - self.first_class:
            raise ValueError(
                f"classes must be between 2 and {len(names) - self.first_class} for "
                f"{self.kind} from class {self.first_class}. Received: {self.classes}"
            )
        if self.per_class < 1:
            raise ValueError(f"per_class must be at least 1. Received: {self.per_class}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels. Received: {self.size}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The generated classes."""
        return KINDS[self.kind][0][self.first_class : self.first_class + self.classes]


def generate(out_dir: str | Path, spec: SampleSpec | None = None) -> dict[str, int]:
    """Writes the dataset to ``out_dir`` (default spec: the sample shapes); returns counts."""
    spec = spec or SampleSpec()
    out = Path(out_dir)
    draw = KINDS[spec.kind][1]
    rows: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for class_index, name in enumerate(spec.class_names):
        folder = _folder_name(name)
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i in range(spec.per_class):
            rng = np.random.default_rng([spec.seed, class_index, i])
            rel = f"{folder}/{folder}_{i:05d}.jpg"
            image = shifted(draw(name, spec.size, rng), spec.shift)
            image.save(out / rel, format="JPEG", quality=90)
            rows.append((rel, name))
        counts[name] = spec.per_class
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return counts


# Changes of every image, for monitoring's tests and demos: what drift looks like.
SHIFTS = ("none", "darker", "blurred", "inverted")


def shifted(image: Image.Image, shift: str) -> Image.Image:
    """``image`` under ``shift``, what a camera or a pipeline upstream might do to it.

    ``darker``: pixels x 0.45 (underexposed); ``blurred``: Gaussian, radius 1.5 per 64
    px (out of focus); ``inverted``: 255 - x (a negative, or the other polarity).
    """
    if shift == "darker":
        return Image.fromarray((np.asarray(image, dtype=np.float32) * 0.45).astype(np.uint8))
    if shift == "blurred":
        return image.filter(ImageFilter.GaussianBlur(1.5 * image.width / 64))
    if shift == "inverted":
        return Image.fromarray(255 - np.asarray(image, dtype=np.uint8))
    return image


def _folder_name(name: str) -> str:
    """A folder name that differs on case-insensitive filesystems too (``L`` vs ``l``)."""
    return f"upper_{name}" if name.isupper() else name


def render(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``shape`` on a random textured background (kind ``shapes``)."""
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


def render_glyph(glyph: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``glyph`` in a random font, size, shift and tilt (kind ``glyphs``)."""
    scale = 4
    big = size * scale
    font = ImageFont.truetype(str(_font_path(FONTS[rng.integers(len(FONTS))])), 16 * scale)
    layer = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), glyph, font=font)
    glyph_img = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(glyph_img).text((4 - left, 4 - top), glyph, font=font, fill=255)
    height = rng.uniform(0.5, 0.8) * big
    width = glyph_img.width * height / glyph_img.height * rng.uniform(0.85, 1.15)
    glyph_img = glyph_img.resize((max(1, int(width)), max(1, int(height))), Image.LANCZOS)
    glyph_img = glyph_img.rotate(rng.uniform(-8, 8), resample=Image.BICUBIC, expand=True)
    shift = 0.08 * big
    x = (big - glyph_img.width) / 2 + rng.uniform(-shift, shift)
    y = (big - glyph_img.height) / 2 + rng.uniform(-shift, shift)
    layer.paste(glyph_img, (int(x), int(y)), glyph_img)
    mask = layer.resize((size, size), Image.LANCZOS)
    ink, paper = _contrasting_pair(rng)
    image = Image.new("RGB", (size, size), paper)
    image.paste(Image.new("RGB", (size, size), ink), (0, 0), mask)
    return _with_noise(image, rng, 8)


def render_thumbnail(pattern: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A layout of a few pixels, upscaled to ``size`` (kind ``thumbnails``)."""
    cells = int(rng.integers(6, 11))
    yy, xx = (np.mgrid[0:cells, 0:cells] + 0.5) / cells
    phase = rng.uniform(0, 1)
    if pattern in ("bands_h", "bands_v"):
        coord = yy if pattern == "bands_h" else xx
        mask = np.sin(2 * math.pi * (rng.uniform(1.5, 2.5) * coord + phase)) > 0
    elif pattern == "checks":
        n = rng.uniform(1.5, 2.5)
        mask = (np.floor(n * xx + phase) + np.floor(n * yy + phase)) % 2 == 0
    elif pattern in ("blob", "ring"):
        cx, cy = rng.uniform(0.35, 0.65, 2)
        dist = np.hypot(xx - cx, yy - cy)
        radius = rng.uniform(0.22, 0.32)
        mask = dist < radius if pattern == "blob" else np.abs(dist - radius) < 0.1
    elif pattern == "frame":
        width = rng.uniform(0.08, 0.14)
        mask = (np.minimum(np.minimum(xx, 1 - xx), np.minimum(yy, 1 - yy))) < width
    elif pattern in ("halves_h", "halves_v"):
        coord = yy if pattern == "halves_h" else xx
        mask = coord < rng.uniform(0.4, 0.6)
    else:
        raise ValueError(f"Unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    fore, back = _contrasting_pair(rng)
    pixels = np.where(mask[..., None], fore, back) + rng.normal(0, 12, (cells, cells, 3))
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    resample = (Image.BILINEAR, Image.BICUBIC, Image.NEAREST)[rng.integers(3)]
    return small.resize((size, size), resample)


def _contrasting_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours far enough apart to tell apart."""
    first = rng.uniform(0, 255, 3)
    for _ in range(50):
        second = rng.uniform(0, 255, 3)
        if np.abs(second - first).sum() > 200:
            break
    return tuple(int(c) for c in first), tuple(int(c) for c in second)


def _with_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    noise = rng.normal(0, sigma, (image.height, image.width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@cache
def _font_path(name: str) -> Path:
    """A TrueType font file shipped with matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the glyphs dataset needs matplotlib's bundled fonts: pip install matplotlib"
        )
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / name
    if not path.is_file():
        raise RuntimeError(f"font {name} is missing from matplotlib's data ({path})")
    return path


# kind -> (class names, renderer)
KINDS: dict[str, tuple[tuple[str, ...], Callable[[str, int, np.random.Generator], Image.Image]]] = {
    "shapes": (SHAPES, render),
    "glyphs": (GLYPHS, render_glyph),
    "thumbnails": (PATTERNS, render_thumbnail),
}
