"""Near-duplicates: perceptual hashes, their groups, one split per group, and conflicts."""

import io
import json

import imagehash
import numpy as np
import pytest
from PIL import Image
from scipy.sparse.csgraph import connected_components

from components.ingest import near_duplicates as nd
from components.ingest.ingest import run_ingest
from pipelines.sample_data import SampleSpec, generate
from visionpipe import features as F
from visionpipe.config import load_config

from .conftest import TINY_OVERRIDES


def _brute_force_groups(hashes, distance):
    codes = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    close = np.bitwise_count(codes[:, None] ^ codes[None, :]) <= distance
    return connected_components(close, directed=False)[1]


def _same_partition(a, b):
    pairs = {(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("distance", [0, 2, 4, 8])
def test_groups_equal_the_brute_force_components(distance):
    rng = np.random.default_rng(distance)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = rng.integers(0, 64, (300, 3))
    near = base.copy()
    for k in range(rng.integers(1, 4)):  # 1 to 3 flipped bits: some within distance, some not
        near ^= np.uint64(1) << flips[:, k].astype(np.uint64)
    chain = near ^ (np.uint64(1) << np.uint64(63))  # a neighbour of a neighbour
    hashes = [f"{int(c):016x}" for c in np.concatenate([base, near, chain, base[:5]])]
    got = nd.groups(hashes, distance)
    assert _same_partition(got, _brute_force_groups(hashes, distance))
    if distance >= 4:  # base - near - chain is one group, though base and chain can differ by 4+
        assert (got[:300] == got[600:900]).all()


def test_hashes_equal_imagehash_phash_where_no_resize_rounds():
    # 32x32 needs no resize: the DCT, the median and the bit order are phash's exactly
    images = [_photo(seed, 32).convert("L") for seed in range(12)]
    assert nd.hashes([nd.reduced(i) for i in images]) == [str(imagehash.phash(i)) for i in images]
    assert nd.hashes([]) == []


def test_the_folded_resize_differs_from_phash_by_its_rounding_only():
    sizes = [(40, 30), (81, 81), (96, 64), (200, 150), (640, 480), (1000, 90)]
    images = [_photo(seed, size) for seed, size in enumerate(sizes * 4)]
    ours = nd.hashes([nd.reduced(i) for i in images])  # mixed sizes in one call
    pillow = [  # Pillow's own two-step resize, then phash
        imagehash.phash(i.convert("L").resize((32, 32), Image.LANCZOS, reducing_gap=2.0))
        for i in images
    ]
    distances = [
        bin(int(h, 16) ^ int(str(p), 16)).count("1") for h, p in zip(ours, pillow, strict=True)
    ]
    assert max(distances) <= 3 and np.mean(distances) < 1
    assert nd.perceptual_hash(images[3]) == ours[3]
    assert all(max(nd.reduced(i).pixels.shape) < 128 for i in images)


def _photo(seed, size=96):
    size = (size, size) if isinstance(size, int) else size
    smooth = np.random.default_rng(seed).random((6, 6, 3))
    img = Image.fromarray((smooth * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    return img


def _jpeg(img, quality=90):
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def test_edits_stay_within_the_default_distance_and_other_images_do_not():
    distance = load_config().ingest.near_duplicate_distance
    for seed in range(10):
        img = _photo(seed)
        h = int(nd.perceptual_hash(img), 16)
        edits = [
            Image.open(io.BytesIO(_jpeg(img, 40))),
            img.resize((48, 48)).resize((96, 96)),
            img.resize((200, 200)),
        ]
        for edit in edits:
            assert (h ^ int(nd.perceptual_hash(edit), 16)).bit_count() <= distance
        other = int(nd.perceptual_hash(_photo(seed + 100)), 16)
        assert (h ^ other).bit_count() > distance


def _config(*extra):
    return load_config(overrides=[*TINY_OVERRIDES, "ingest.max_reject_fraction=1.0", *extra])


@pytest.fixture(scope="module")
def leaky_dataset(tmp_path_factory):
    """Two classes of 12; 6 near-copies under the same label, 2 under the other label."""
    root = tmp_path_factory.mktemp("leaky")
    generate(root, SampleSpec(classes=2, per_class=12, size=64, seed=11))
    (root / "labels.csv").unlink()
    originals = sorted((root / "circle").glob("*.jpg"))
    for i, path in enumerate(originals[:6]):  # a re-compressed copy: same label
        img = Image.open(path)
        (root / "circle" / f"copy_{i}.jpg").write_bytes(_jpeg(img, 75))
    for i, path in enumerate(originals[6:8]):  # a re-scaled copy under the other label
        img = Image.open(path).resize((128, 128))
        (root / "square" / f"mislabelled_{i}.jpg").write_bytes(_jpeg(img, 90))
    return root


def _split_of(result):
    import tensorflow as tf

    out = {}
    for split in F.SPLITS:
        files = tf.io.gfile.glob(F.split_pattern(result.output_uri, split))
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(r.numpy())
            out[ex.features.feature[F.FILENAME].bytes_list.value[0].decode()] = split
    return out


def _planted(root):
    originals = sorted(str(p) for p in (root / "circle").glob("circle_*.jpg"))
    same = [(originals[i], str(root / "circle" / f"copy_{i}.jpg")) for i in range(6)]
    other = [(originals[6 + i], str(root / "square" / f"mislabelled_{i}.jpg")) for i in range(2)]
    return same, other


def test_near_copies_share_a_split_and_conflicts_are_reported(tmp_path, leaky_dataset):
    result = run_ingest(str(leaky_dataset), str(tmp_path / "out"), _config())
    groups = json.loads((tmp_path / "out" / F.NEAR_DUPLICATES_FILE).read_text())
    group_of = {m["source"]: i for i, g in enumerate(groups) for m in g["members"]}
    same, other = _planted(leaky_dataset)
    splits = _split_of(result)
    for original, copy in same + other:
        assert group_of[original] == group_of[copy]
        assert splits[original] == splits[copy]
    for original, _ in other:
        assert groups[group_of[original]]["labels"] == ["circle", "square"]
    near = result.stats["near_duplicates"]
    assert near["groups"] == len(groups) >= 1 and near["images"] == len(group_of) >= 16
    assert near["conflicting_images"] == sum(
        len(g["members"]) for g in groups if len(g["labels"]) > 1
    )
    assert result.stats["written"] == 32 and result.stats["rejected"] == 0


def test_conflicts_are_rejected_when_configured_and_counts_reconcile(tmp_path, leaky_dataset):
    config = _config("ingest.near_duplicate_conflicts=reject")
    stats = run_ingest(str(leaky_dataset), str(tmp_path / "out"), config).stats
    conflicting = stats["near_duplicates"]["conflicting_images"]
    assert stats["rejected_by_reason"] == {"near_duplicate_conflict": conflicting}
    assert stats["inputs"] == 32 == stats["written"] + stats["rejected"] + stats["duplicates"]
    rejects = [json.loads(line) for line in open(tmp_path / "out" / F.REJECTS_FILE)]
    _, other = _planted(leaky_dataset)
    assert {s for pair in other for s in pair} <= {r["source"] for r in rejects}
    assert all("near-duplicates of this image are labelled" in r["detail"] for r in rejects)


def test_perceptual_hashing_can_be_switched_off(tmp_path, leaky_dataset):
    stats = run_ingest(
        str(leaky_dataset), str(tmp_path / "out"), _config("ingest.near_duplicate_distance=-1")
    ).stats
    assert stats["near_duplicates"] == {"checked": False}
    assert not (tmp_path / "out" / F.NEAR_DUPLICATES_FILE).exists()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGBA", "PNG"), ("I;16", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("L", "PNG"), ("1", "BMP")],
)
def test_every_accepted_mode_gets_hashed(mode, fmt):
    from components.ingest.images import inspect

    buf = io.BytesIO()
    Image.new(mode, (40, 30)).save(buf, format=fmt)
    image = inspect(buf.getvalue(), 10_000, perceptual=True)
    assert image.grey.pixels.shape == (30, 40) and image.grey.pixels.dtype == np.uint8
    assert len(nd.hashes([image.grey])[0]) == 16


def test_an_image_without_a_hash_is_in_no_group():
    same = "00000000000000ff"
    plan = nd.plan([("a", "", "x", "s1"), ("b", same, "x", "s2"), ("c", same, "y", "s3")], 4)
    assert plan["placement"] == {"b": "b", "c": "b"} and plan["conflicting"] == {
        "b": ["x", "y"],
        "c": ["x", "y"],
    }
