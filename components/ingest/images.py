"""Inspecting one image's bytes: format from content, size from the header, safe decode."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# Formats ingest accepts, detected from content (never from the file name).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})
# Formats whose bytes are kept as they are when already plain RGB or grayscale.
KEPT_FORMATS = frozenset({"JPEG", "PNG"})
REENCODE_QUALITY = 95


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


def inspect(data: bytes, max_pixels: int) -> InspectedImage:
    """Validates one image and returns bytes the transform step can decode.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb never reaches memory. JPEG and PNG that are already RGB or
    grayscale (8-bit, no EXIF rotation) keep their original bytes; anything else is
    converted to RGB (EXIF orientation applied) and re-encoded as JPEG.

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
    except Exception as err:  # noqa: BLE001 - PIL raises many types on bad headers
        raise Rejected("undecodable", str(err)) from None
    if image.format not in ACCEPTED_FORMATS:
        raise Rejected(
            "unsupported_format", f"{image.format} is not one of {sorted(ACCEPTED_FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise Rejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
    try:
        image.load()
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data
        raise Rejected("undecodable", str(err)) from None
    if _keep_as_is(image):
        channels = 1 if image.mode == "L" else 3
        return InspectedImage(data, image.format.lower(), height, width, channels, digest)
    rgb = ImageOps.exif_transpose(image).convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=REENCODE_QUALITY)
    return InspectedImage(out.getvalue(), "jpeg", rgb.height, rgb.width, 3, digest)


def _keep_as_is(image: Image.Image) -> bool:
    if image.format not in KEPT_FORMATS or image.mode not in ("RGB", "L"):
        return False
    orientation = image.getexif().get(0x0112, 1)
    return orientation == 1
