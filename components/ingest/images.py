"""Inspecting one image's bytes: format from content, size from the header, safe decode."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.ingest.near_duplicates import THUMBNAIL_SIDE, Reduced, reduced
from visionpipe import storage
from visionpipe.config import IngestConfig

# Formats ingest accepts, detected from content (never from the file name).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})
# Formats whose bytes are kept as they are when already plain RGB or grayscale.
KEPT_FORMATS = frozenset({"JPEG", "PNG"})
_ORIENTATION_TAG = 0x0112


class Rejected(Exception):
    """An input image cannot be used; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class InspectedImage:
    """An accepted image, ready to be written as an example."""

    encoded: bytes
    format: str  # "jpeg" or "png"
    height: int
    width: int
    channels: int
    sha256: str  # of the original bytes: identical files are duplicates
    grey: Reduced | None = None  # what the perceptual hash is made of, when asked


def inspect(
    data: bytes,
    max_pixels: int,
    max_side: int = 0,
    jpeg_quality: int = 95,
    perceptual: bool = False,
) -> InspectedImage:
    """Validates one image and returns bytes the transform step can decode.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb never reaches memory. JPEG and PNG that are already 8-bit RGB or
    grayscale, upright and within ``max_side`` keep their original bytes; anything else
    (other formats, CMYK, alpha, palette, 16-bit, EXIF-rotated, too large a side) is
    converted to RGB (alpha composited on white, EXIF orientation applied, longest side
    scaled down to ``max_side`` when that is set) and re-encoded as JPEG.

    Args:
        data: the file's bytes.
        max_pixels: reject images with more pixels than this.
        max_side: scale images whose longest side exceeds this down to it (0: never).
        jpeg_quality: quality of re-encoded JPEGs.
        perceptual: also keep the grey pixels of the perceptual hash (``near_duplicates``).

    Raises:
        Rejected: empty, not an image, too large, or undecodable/truncated.
    """
    if not data:
        raise Rejected("empty_file")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Rejected("not_an_image", "content is not a recognised image format") from None
    except Image.DecompressionBombError as err:
        raise Rejected("too_large", str(err)) from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types on bad headers
        raise Rejected("undecodable", str(err)) from None
    if image.format not in ACCEPTED_FORMATS:
        raise Rejected(
            "unsupported_format", f"{image.format} is not one of {sorted(ACCEPTED_FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise Rejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
    keep = _keep_as_is(image, max_side)
    channels = 1 if image.mode == "L" else 3
    if keep and image.format == "JPEG":
        # Only checked, never used at full size: libjpeg still reads every entropy-coded
        # block (so truncation and corruption are found) but inverse-transforms at 1/2 to
        # 1/8 scale, to no less than the hash's 32 pixels.
        image.draft("L" if perceptual else image.mode, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    try:
        image.load()
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data
        raise Rejected("undecodable", str(err)) from None
    small = None
    if perceptual:  # other modes (16-bit, CMYK, palette, alpha) as the model will see them
        small = reduced(image if image.mode in ("L", "RGB") else to_rgb(image))
    if keep:
        return InspectedImage(data, image.format.lower(), height, width, channels, digest, small)
    rgb = to_rgb(image)
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=jpeg_quality)
    return InspectedImage(out.getvalue(), "jpeg", rgb.height, rgb.width, 3, digest, small)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, upright.

    EXIF orientation is applied, alpha composited on white, 16-bit scaled to 8-bit,
    CMYK and palette converted.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 257.0 if pixels.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(pixels / scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _keep_as_is(image: Image.Image, max_side: int) -> bool:
    if image.format not in KEPT_FORMATS or image.mode not in ("RGB", "L"):
        return False
    if max_side and max(image.size) > max_side:
        return False
    return image.getexif().get(_ORIENTATION_TAG, 1) == 1


def inspect_source(
    source: tuple[str, str, tuple[tuple[str, str], ...]], config: IngestConfig
) -> tuple[str, object]:
    """Reads and inspects one ``(uri, label, attributes)``; runs on ingest's workers.

    Returns:
        ``("ok", (sha256, metadata tuple))`` for an accepted image (the metadata is
        ``(uri, label, sha256, reencoded, format, height, width, channels, grey pixels,
        attributes)``; ingest swaps the pixels for their hash, per batch), or
        ``("rejected", {source, label, reason, detail})``.
    """
    uri, label, attributes = source

    def reject(reason: str, detail: str) -> tuple[str, object]:
        return "rejected", {"source": uri, "label": label, "reason": reason, "detail": detail}

    if config.labels and label not in config.labels:
        return reject("unknown_label", f"not in ingest.labels {sorted(config.labels)}")
    try:
        data = storage.read_bytes(uri)
        image = inspect(
            data,
            config.max_pixels,
            config.max_side,
            config.jpeg_quality,
            perceptual=config.near_duplicate_distance >= 0,
        )
    except (FileNotFoundError, IsADirectoryError):
        return reject("missing_file", "no such file")
    except Rejected as rejection:
        return reject(rejection.reason, rejection.detail)
    except OSError as err:
        return reject("unreadable", str(err))
    metadata = (
        uri,
        label,
        image.sha256,
        image.encoded != data,
        image.format,
        image.height,
        image.width,
        image.channels,
        image.grey,
        attributes,
    )
    return "ok", (image.sha256, metadata)
