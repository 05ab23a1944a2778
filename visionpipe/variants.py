"""Fixed, seeded variants of an image's encoded bytes: what the robustness gate scores.

Each variant is what happens to photos on their way to a served model: re-compression,
a smaller upload scaled back up, other exposure, sensor noise, a lens out of focus, the
same picture saved as PNG. The variant of an image depends only on its bytes and the
variant's name (the noise is seeded by both), so candidate and champion are scored on
the very same variants, run after run. The bytes go through the served signature, so
the whole served model is tested, decoder included.

- ``jpeg_q30``: re-encoded as JPEG at quality 30;
- ``rescale``: scaled to half size (bilinear), then back (bilinear);
- ``exposure``: brightness x 0.7 and contrast x 0.7 (PIL's ``ImageEnhance``);
- ``noise``: Gaussian noise, standard deviation 12 of 255, clipped;
- ``blur``: Gaussian blur of radius 1.5 px per 64 px of width;
- ``png``: the same pixels, saved as PNG (lossless).

Every variant but ``png`` is saved as JPEG at quality 95.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from visionpipe.sections import ROBUSTNESS_VARIANTS

VARIANTS = ROBUSTNESS_VARIANTS  # the config's list: evaluate.robustness names these


def _save(image: Image.Image, kind: str = "JPEG", quality: int = 95) -> bytes:
    out = io.BytesIO()
    if kind == "JPEG":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format=kind)
    return out.getvalue()


def make_variant(data: bytes, name: str) -> bytes:
    """The ``name`` variant of one encoded image (``VARIANTS``).

    Raises:
        ValueError: ``name`` is not a variant, or ``data`` is not an image PIL decodes.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown robustness variant {name!r}; known: {', '.join(VARIANTS)}")
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"not an image PIL decodes: {err}") from None
    if name == "jpeg_q30":
        return _save(image, quality=30)
    if name == "rescale":
        width, height = image.size
        small = image.resize((max(1, width // 2), max(1, height // 2)), Image.BILINEAR)
        return _save(small.resize((width, height), Image.BILINEAR))
    if name == "exposure":
        darker = ImageEnhance.Brightness(image).enhance(0.7)
        return _save(ImageEnhance.Contrast(darker).enhance(0.7))
    if name == "noise":
        seed = int.from_bytes(hashlib.sha256(name.encode() + data).digest()[:8], "big")
        pixels = np.asarray(image, dtype=np.float32)
        noisy = pixels + np.random.default_rng(seed).normal(0, 12, pixels.shape)
        return _save(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    if name == "blur":
        return _save(image.filter(ImageFilter.GaussianBlur(1.5 * image.width / 64)))
    return _save(image, "PNG")
