"""Near-duplicates: perceptual hashes, the groups they form, and where each group goes.

Exact copies are found by content hash; a re-compressed, re-scaled or lightly edited copy
is not. A 64-bit perceptual hash (``imagehash.phash``: the signs of a 32x32 grey DCT's
low frequencies) changes by a few bits under such edits, so images whose hashes are
within ``ingest.near_duplicate_distance`` bits are one group. A group is placed in one
split, by the content hash of its first member, so no near-copy of a test image is
trained on. A group whose members carry different labels is reported, and rejected
when ``ingest.near_duplicate_conflicts`` is ``reject``.

The search is written here: no library finds Hamming neighbours of 64-bit codes at this
scale (scikit-learn's ball tree and brute force took 89 s and 71 s for 30,000 hashes).
It is multi-index hashing (Norouzi et al.): split each hash into ``distance + 1`` bands;
two hashes within ``distance`` bits agree exactly on at least one band, so only hashes
sharing a band value are compared. The groups are scipy's connected components.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from scipy.fft import dct
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_HASH_BITS = 64
THUMBNAIL_SIDE = 32  # imagehash.phash's image: hash_size 8 x highfreq_factor 4
_LOW = 8


class Reduced(NamedTuple):
    """The grey pixels a perceptual hash is computed from, and the extent they cover."""

    pixels: np.ndarray  # uint8 [h, w], sides under 128
    extent: tuple[float, float]  # (height, width) in these pixels; a last one may be partial


def reduced(image: Image.Image) -> Reduced:
    """The grey pixels of ``image`` that ``hashes`` resizes to 32x32, as Pillow would.

    What Pillow's ``reducing_gap=2`` does before its LANCZOS resize: a whole-pixel box
    reduction to within 2x of 32 (so memory is bounded whatever the image's size); the
    last row and column may average fewer pixels, and the resize then covers a fractional
    extent. A JPEG that ingest keeps as it is arrives here already decoded in grey at 1/2
    to 1/8 scale (``images.inspect``: 80x60 for 320x240) and is not reduced further.
    """
    grey = image if image.mode == "L" else image.convert("L")  # convert("L") of L copies
    fx = max(grey.width // (2 * THUMBNAIL_SIDE), 1)
    fy = max(grey.height // (2 * THUMBNAIL_SIDE), 1)
    extent = (grey.height / fy, grey.width / fx)
    if (fx, fy) != (1, 1):
        grey = grey.reduce((fx, fy))
    return Reduced(np.asarray(grey), extent)


def hashes(images: Sequence[Reduced]) -> list[str]:
    """The 64-bit perceptual hashes of ``reduced`` images, as 16 hex digits each.

    ``imagehash.phash``'s computation: LANCZOS to 32x32, the 2-D DCT-II, the 8x8 lowest
    frequencies against their median. Both the resize and the DCT are linear, so their
    low frequencies are one product per axis, ``P(h) @ pixels @ P(w).T`` with
    ``P(n) = DCT[:8] @ LANCZOS(n -> 32)``: one batched product per image size, instead of
    a resize per image. Pillow's resize of an 80x60 image took 60 us holding the GIL
    (2 threads ran it 1.3x slower than one), the largest part of what hashing cost
    ingest's threads. The difference from phash is only the resize's rounding to 8 bits
    between its two passes; a test bounds it.
    """
    out: list[str] = [""] * len(images)
    by_size: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault((image.pixels.shape, image.extent), []).append(i)
    for ((height, width), (tall, wide)), members in by_size.items():
        stack = np.stack([images[i].pixels for i in members]).astype(np.float64)
        rows, cols = _projection(height, tall), _projection(width, wide)
        low = (rows @ stack @ cols.T).reshape(len(members), -1)
        bits = low > np.median(low, axis=1, keepdims=True)
        for i, row in zip(members, np.packbits(bits, axis=1), strict=True):
            out[i] = row.tobytes().hex()  # as str(ImageHash)
    return out


def perceptual_hash(image: Image.Image) -> str:
    """The perceptual hash of one decoded image (``hashes`` of it ``reduced``)."""
    return hashes([reduced(image)])[0]


@functools.lru_cache(maxsize=256)
def _projection(n: int, extent: float) -> np.ndarray:
    """``[8, n]``: a side of ``n`` pixels to the 8 lowest DCT-II frequencies of its 32."""
    return _DCT_LOW @ _lanczos(n, extent, THUMBNAIL_SIDE)


def _lanczos(n_in: int, extent: float, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: Pillow's LANCZOS resampling (a=3) of one axis, as a matrix.

    Pillow's ``precompute_coeffs`` for the box ``[0, extent)``: the kernel widened by
    the reduction factor, centred on each output pixel, clipped to the image, normalised.
    """
    scale = extent / n_out
    widen = max(scale, 1.0)
    support = 3.0 * widen
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = (np.arange(lo, hi) - centre + 0.5) / widen
        kernel = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
        weights[i, lo:hi] = kernel / kernel.sum()
    return weights


_DCT_LOW = dct(np.eye(THUMBNAIL_SIDE), axis=0)[:_LOW]  # scipy's unnormalised DCT-II, as phash


def groups(hashes: Sequence[str], distance: int) -> np.ndarray:
    """A group number per hash: linked when within ``distance`` bits, transitively.

    Args:
        hashes: hex perceptual hashes.
        distance: the largest Hamming distance of near-duplicates (0: equal hashes only).

    Returns:
        An int array, one group number per hash; equal numbers are one group.
    """
    codes = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    unique, inverse = np.unique(codes, return_inverse=True)
    rows, cols = _close_pairs(unique, distance)
    n = len(unique)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels[inverse.reshape(-1)]


def _close_pairs(codes: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of distinct codes within ``distance`` bits (multi-index hashing)."""
    if distance <= 0 or len(codes) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bands = min(distance + 1, _HASH_BITS)
    width = -(-_HASH_BITS // bands)
    rows, cols = [], []
    for start in range(0, _HASH_BITS, width):
        bits = min(width, _HASH_BITS - start)
        key = (codes >> np.uint64(start)) & np.uint64((1 << bits) - 1)
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        # Equal band values are contiguous once sorted: the pairs d apart within a bucket
        # are the positions d apart with equal values, for every bucket at once; there are
        # none past the largest bucket (a loop per bucket cost 0.1 s at 3000 hashes).
        for d in range(1, len(order)):
            same = ordered[d:] == ordered[:-d]
            if not same.any():
                break
            i, j = order[:-d][same], order[d:][same]
            close = np.bitwise_count(codes[i] ^ codes[j]) <= distance
            rows.append(i[close])
            cols.append(j[close])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def plan(items: Iterable[tuple[str, str, str, str]], distance: int) -> dict[str, Any]:
    """Where each near-duplicate goes, and the report of every group.

    Args:
        items: ``(sha256, phash, label, source)`` of every image kept after exact
            de-duplication.
        distance: ``ingest.near_duplicate_distance``.

    Returns:
        ``{"placement": {sha256: key}, "conflicting": {sha256: labels}, "groups": [...]}``:
        the split key (the group's smallest content hash) of every image in a group of
        two or more, the images of groups with more than one label (with the group's
        labels), and per group its members (``source``, ``label``) and labels, largest
        groups first.
    """
    items = sorted(i for i in items if i[1])  # an image without a hash is in no group
    if not items:
        return {"placement": {}, "conflicting": {}, "groups": []}
    numbers = groups([phash for _, phash, _, _ in items], distance)
    members: dict[int, list[tuple[str, str, str, str]]] = {}
    for number, item in zip(numbers.tolist(), items, strict=True):
        members.setdefault(number, []).append(item)
    placement: dict[str, str] = {}
    conflicting: dict[str, list[str]] = {}
    report = []
    for group in members.values():
        if len(group) < 2:
            continue
        key = group[0][0]  # items are sorted by content hash
        labels = sorted({label for _, _, label, _ in group})
        for sha, _, _, _ in group:
            placement[sha] = key
            if len(labels) > 1:
                conflicting[sha] = labels
        report.append(
            {
                "labels": labels,
                "members": [
                    {"source": s, "label": lab} for _, _, lab, s in sorted(group, key=_by_source)
                ],
            }
        )
    report.sort(key=lambda g: (-len(g["members"]), g["members"][0]["source"]))
    return {"placement": placement, "conflicting": conflicting, "groups": report}


def _by_source(item: tuple[str, str, str, str]) -> str:
    return item[3]
