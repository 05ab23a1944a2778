import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from pipelines.sample_data import SampleSpec, generate


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_writes_folder_per_class_jpegs_and_labels_csv(tmp_path):
    counts = generate(tmp_path, SampleSpec(classes=3, per_class=4, size=24, seed=1))
    assert counts == {"circle": 4, "square": 4, "triangle": 4}
    rows = list(csv.reader(open(tmp_path / "labels.csv")))
    assert rows[0] == ["path", "label"] and len(rows) == 13
    for rel, label in rows[1:]:
        assert rel.startswith(label + "/")
        with Image.open(tmp_path / rel) as image:
            assert image.format == "JPEG" and image.size == (24, 24)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = SampleSpec(classes=2, per_class=3, size=24, seed=5)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", SampleSpec(classes=2, per_class=3, size=24, seed=6))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_images_of_one_class_vary(tmp_path):
    generate(tmp_path, SampleSpec(classes=2, per_class=5, size=24))
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "circle").iterdir()}
    assert len(digests) == 5


@pytest.mark.parametrize("kwargs", [{"classes": 1}, {"classes": 99}, {"per_class": 0}, {"size": 4}])
def test_invalid_spec_is_rejected(kwargs):
    with pytest.raises(ValueError, match="Received"):
        SampleSpec(**kwargs)


@pytest.mark.parametrize(
    ("kind", "first"),
    [("glyphs", ["b", "d", "p", "q"]), ("thumbnails", ["bands_h", "bands_v", "checks", "blob"])],
)
def test_every_kind_writes_its_classes_in_order(tmp_path, kind, first):
    counts = generate(tmp_path, SampleSpec(classes=4, per_class=3, size=32, seed=2, kind=kind))
    assert list(counts) == first and set(counts.values()) == {3}
    rows = list(csv.reader(open(tmp_path / "labels.csv")))[1:]
    assert [label for _, label in rows[::3]] == first
    with Image.open(tmp_path / rows[0][0]) as image:
        assert image.format == "JPEG" and image.size == (32, 32)


def test_upper_case_glyphs_get_their_own_folder(tmp_path):
    generate(tmp_path, SampleSpec(classes=10, per_class=1, size=24, kind="glyphs"))
    rows = dict((label, rel) for rel, label in list(csv.reader(open(tmp_path / "labels.csv")))[1:])
    assert rows["L"].startswith("upper_L/") and rows["J"].startswith("upper_J/")


def test_a_mirrored_glyph_is_not_an_image_of_its_class(tmp_path):
    # b mirrored left-right is shaped like d: its pixels sit on the other side.
    from pipelines.sample_data import render_glyph

    def ink_left_share(image):
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        ink = np.abs(grey - np.median(grey))
        return ink[:, : grey.shape[1] // 2].sum() / ink.sum()

    b = render_glyph("b", 64, np.random.default_rng(0))
    d = render_glyph("d", 64, np.random.default_rng(0))
    assert ink_left_share(b) > 0.5 > ink_left_share(d)
    mirrored = b.transpose(Image.FLIP_LEFT_RIGHT)
    assert ink_left_share(mirrored) < 0.5


@pytest.mark.parametrize("kwargs", [{"kind": "faces"}, {"kind": "glyphs", "classes": 11}])
def test_unknown_kind_or_too_many_classes_is_rejected(kwargs):
    with pytest.raises(ValueError, match="Received"):
        SampleSpec(**kwargs)
