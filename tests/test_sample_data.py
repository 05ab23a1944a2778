import csv
import hashlib

import pytest
from PIL import Image

from visionpipe.sample_data import SampleSpec, generate


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
