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

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy.fft import dct
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_HASH_BITS = 64
THUMBNAIL_SIDE = 32  # imagehash.phash's image: hash_size 8 x highfreq_factor 4
_LOW = 8


def thumbnail(image: Image.Image) -> bytes:
    """The 32x32 grey pixels a perceptual hash is computed from (1 KiB).

    phash scales to 32x32 with LANCZOS from full size, which cost more than decoding a
    320x240 JPEG (0.42 ms against 0.38 ms). Pillow's ``reducing_gap`` does the same
    resize in two steps (a whole-pixel box reduction to within 2x of 32, then LANCZOS):
    0.13-0.15 ms. On the sample's edits (JPEG q30 and q50, down-up scaling, 3x up) it
    catches 99 % within 6 bits, with the same 26 close pairs of distinct images as phash.
    Cheaper ones (a reduction to 32-63 px, then bilinear or box: 0.08 ms) move the hash
    of a 96 px image scaled to 200 px by up to 12 bits. A JPEG that ingest keeps as it is
    arrives here already decoded in grey at 1/2 to 1/8 scale (``images.inspect``: 80x60
    for 320x240, then 0.11 ms here); its hash is within 2 bits of the full-size one for
    each of 600 of the benchmark's 320x240 photos, and the edits of 400 stay within 6 bits.
    """
    grey = image if image.mode == "L" else image.convert("L")  # convert("L") of L copies
    return grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.LANCZOS, reducing_gap=2.0).tobytes()


def hashes(thumbnails: Sequence[bytes]) -> list[str]:
    """The 64-bit perceptual hashes of ``thumbnail``s, as 16 hex digits each.

    ``imagehash.phash``'s computation (the 2-D DCT-II of the 32x32 pixels; the 8x8 lowest
    frequencies against their median), over a whole batch in one call: per image, its
    Python overhead held the GIL for 0.2 ms, which cost ingest 1.6x its time on 2 threads.
    A test holds them equal to ``str(imagehash.phash(...))``.
    """
    if not thumbnails:
        return []
    pixels = np.frombuffer(b"".join(thumbnails), dtype=np.uint8).astype(np.float64)
    pixels = pixels.reshape(len(thumbnails), THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    low = dct(dct(pixels, axis=1), axis=2)[:, :_LOW, :_LOW].reshape(len(thumbnails), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]  # as str(ImageHash)


def perceptual_hash(image: Image.Image) -> str:
    """The perceptual hash of one decoded image (``hashes`` of its ``thumbnail``)."""
    return hashes([thumbnail(image)])[0]


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
        starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
        sizes = np.diff(np.r_[starts, len(order)])
        shared = sizes > 1  # only buckets of two or more: few
        for start, size in zip(starts[shared].tolist(), sizes[shared].tolist(), strict=True):
            bucket = order[start : start + size]
            xor = codes[bucket][:, None] ^ codes[bucket][None, :]
            i, j = np.nonzero(np.triu(np.bitwise_count(xor) <= distance, k=1))
            rows.append(bucket[i])
            cols.append(bucket[j])
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
