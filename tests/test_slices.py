"""Sliced evaluation: attributes carried from the CSV into the examples, metrics per slice
with intervals, and a gate that blocks on one bad slice while the average passes."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.evaluate.evaluate import model_labels, run_evaluate, score
from components.evaluate.gate import gate
from components.evaluate.slices import score_slices
from components.ingest.ingest import run_ingest
from visionpipe import features as F
from visionpipe.config import ConfigError, load_config
from visionpipe.example_codec import encode_example
from visionpipe.slicing import SliceError, check_slice_names, slice_values
from visionpipe.sources import DataError, list_sources
from visionpipe.transform_graph import load_raw_split

from .conftest import TINY_OVERRIDES, fails_in_one_line


def _csv_with_cameras(dataset: Path, out: Path) -> Path:
    rows = ["path,label,camera,site"]
    for i, path in enumerate(sorted(dataset.glob("*/*.jpg"))):
        rows.append(f"{path},{path.parent.name},{'abcd'[i % 4]},s{i % 2}")
    out.write_text("\n".join(rows) + "\n")
    return out


def test_a_csv_header_with_extra_columns_carries_them_into_the_examples(tmp_path, tiny_dataset):
    csv = _csv_with_cameras(tiny_dataset, tmp_path / "cams.csv")
    sources = list_sources(str(csv))
    assert dict(sources[0].attributes) == {"camera": "a", "site": "s0"}
    config = load_config(overrides=[*TINY_OVERRIDES, 'evaluate.slices=["camera"]'])
    result = run_ingest(str(csv), str(tmp_path / "out"), config)
    assert result.stats["attributes"] == ["camera", "site"]
    split = load_raw_split(result.output_uri, "train", attributes=["camera", "site"])
    by_file = {
        Path(n).name: c for n, c in zip(split.names, split.attributes["camera"], strict=True)
    }
    expected = {Path(s.uri).name: dict(s.attributes)["camera"] for s in sources}
    assert by_file == {k: expected[k] for k in by_file} and set(by_file.values()) <= set("abcd")


def test_csv_column_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "a.csv").write_text("a.jpg,cat,phone\n")
    with pytest.raises(DataError, match=r"a.csv:1: expected 2 columns .*need a header"):
        list_sources(str(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_text("path,label,camera\na.jpg,cat\n")
    with pytest.raises(DataError, match="b.csv:2: expected 3 columns path,label,camera, got 2"):
        list_sources(str(tmp_path / "b.csv"))
    (tmp_path / "c.csv").write_text("path,label,my camera\na.jpg,cat,x\n")
    with pytest.raises(DataError, match="c.csv:1: column name 'my camera'"):
        list_sources(str(tmp_path / "c.csv"))


def test_folder_levels_and_image_properties_bucket_with_fixed_bounds(tmp_path):
    root = tmp_path / "data"
    for rel in ("cat/site_a/cam1/x.jpg", "cat/y.jpg", "dog/site_b/z.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    sources = list_sources(str(root))
    folders = [dict(s.attributes).get("folder", "") for s in sources]
    assert folders == ["site_a/cam1", "", "site_b"]
    attrs = {"folder": folders}
    no = [0, 0, 0]
    assert slice_values("folder1", attrs, [], no, no, no) == ["site_a", "(none)", "site_b"]
    assert slice_values("folder2", attrs, [], no, no, no) == ["cam1", "(none)", "(none)"]
    sizes = slice_values("size", {}, [], [32, 300, 4000], [500, 200, 1200], no)
    assert sizes == ["tiny", "small", "large"]
    assert slice_values("brightness", {}, [], no, no, [0.1, 0.5, 0.9]) == [
        "dark",
        "normal",
        "bright",
    ]


def test_bad_slice_configuration_is_refused_naming_it(tmp_path, tiny_dataset, capsys):
    with pytest.raises(
        SliceError, match="'camera', which data does not have .its extra columns: site"
    ):
        check_slice_names("data", ["camera"], ["site"])
    with pytest.raises(ConfigError, match="'camera' is not in evaluate.slices"):
        load_config(
            overrides=["evaluate.thresholds=[{metric: accuracy, slice: camera=*, lower: 0.5}]"]
        )
    with pytest.raises(ConfigError, match="expected name=value"):
        load_config(
            overrides=[
                'evaluate.slices=["camera"]',
                "evaluate.thresholds=[{metric: accuracy, slice: camera, lower: 0.5}]",
            ]
        )
    err = fails_in_one_line(
        ["run", "--data", str(tiny_dataset), "--set", 'evaluate.slices=["camera"]'],
        capsys,
        tmp_path / "never",
    )
    assert "evaluate.slices names 'camera'" in err and str(tiny_dataset) in err


def _relabelled_test_split(ingested, trained, root: Path) -> Path:
    """Every tiny image as a test example labelled as the model predicts it, with a camera;
    camera d's labels are rotated to another class: the model is exactly right on a-c and
    exactly wrong on d."""
    images, names = [], []
    for split in F.SPLITS:
        part = load_raw_split(ingested.output_uri, split)
        images += part.images
        names += part.names
    probabilities, _ = score(trained.model_uri, images, 64)
    labels = model_labels(trained.model_uri)
    predicted = [labels[i] for i in probabilities.argmax(axis=1)]
    (root / "test").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(root / "test" / "data-00000-of-00001.tfrecord.gz"), "GZIP") as w:
        for i, (image, name, label) in enumerate(zip(images, names, predicted, strict=True)):
            camera = "abcd"[i % 4]
            if camera == "d":
                label = labels[(labels.index(label) + 1) % len(labels)]
            example = {
                F.IMAGE_ENCODED: image,
                F.IMAGE_FORMAT: "jpeg",
                F.IMAGE_HEIGHT: 32,
                F.IMAGE_WIDTH: 32,
                F.IMAGE_CHANNELS: 3,
                F.LABEL_TEXT: label,
                F.FILENAME: name,
                F.SHA256: f"{i:064x}",
                F.ATTRIBUTE_PREFIX + "camera": camera,
            }
            w.write(encode_example(example))
    (root / F.STATS_FILE).write_text(json.dumps({"attributes": ["camera"]}))
    return root


def test_the_gate_blocks_on_the_bad_slice_while_the_average_passes(ingested, trained, tmp_path):
    examples = _relabelled_test_split(ingested, trained, tmp_path / "examples")
    config = load_config(
        overrides=[
            "evaluate.min_accuracy=0.6",
            'evaluate.slices=["camera", "size", "brightness"]',
            "evaluate.thresholds=[{metric: accuracy, slice: camera=*, lower: 0.6}]",
            "evaluate.slice_gaps=[{slice: camera, max_gap: 0.2}]",
            "evaluate.min_slice_examples=5",
            "evaluate.robustness=[]",
        ]
    )
    blessing = run_evaluate(str(examples), trained.model_uri, str(tmp_path / "out"), config)
    assert blessing.candidate["accuracy"] == pytest.approx(0.75, abs=0.03)
    checks = {c.name: c for c in blessing.checks}
    assert checks["accuracy >= 0.6"].passed
    for camera in "abc":
        assert checks[f"accuracy[camera={camera}] >= 0.6"].passed
    assert not checks["accuracy[camera=d] >= 0.6"].passed
    assert not checks["accuracy gap over camera <= 0.2"].passed
    assert not blessing.blessed and "accuracy[camera=d] >= 0.6 failed" in blessing.reason
    slices = json.loads((tmp_path / "out" / "slices.json").read_text())
    d = next(s for s in slices if s["slice"] == "camera" and s["value"] == "d")
    assert d["metrics"]["accuracy"] == 0.0 and d["examples"] == 9 and d["judged"]
    low, high = d["intervals"]["macro_f1"]
    assert low <= d["metrics"]["macro_f1"] <= high
    assert {s["slice"] for s in slices} == {"camera", "size", "brightness"}
    assert {s["value"] for s in slices if s["slice"] == "size"} == {"tiny"}
    report = (tmp_path / "out" / F.REPORT_FILE).read_text()
    assert "## Slices" in report and "### camera" in report
    assert (tmp_path / "out" / "slices.png").stat().st_size > 1000


def test_a_threshold_on_a_slice_value_no_example_has_is_refused_before_scoring(
    ingested, trained, tmp_path
):
    examples = _relabelled_test_split(ingested, trained, tmp_path / "examples")
    config = load_config(
        overrides=[
            'evaluate.slices=["camera"]',
            "evaluate.thresholds=[{metric: accuracy, slice: camera=e, lower: 0.6}]",
        ]
    )
    with pytest.raises(SliceError, match="no test example has camera=e .values: a, b, c, d."):
        run_evaluate(str(examples), trained.model_uri, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()


def test_small_slices_are_reported_but_not_judged():
    cfg = load_config(
        overrides=[
            'evaluate.slices=["camera"]',
            "evaluate.thresholds=[{metric: accuracy, slice: camera=*, lower: 0.9}]",
            "evaluate.min_slice_examples=30",
            "evaluate.slice_resamples=50",
        ]
    ).evaluate
    labels = ["cat", "dog"]
    truth = ["cat"] * 40 + ["dog"] * 10
    probabilities = np.array([[0.9, 0.1]] * 40 + [[0.9, 0.1]] * 10)  # every dog is wrong
    values = {"camera": ["big"] * 40 + ["small"] * 10}
    results = score_slices(cfg, values, truth, probabilities, labels)
    assert [(r["value"], r["examples"], r["judged"]) for r in results] == [
        ("big", 40, True),
        ("small", 10, False),
    ]
    blessing = gate({"accuracy": 0.8}, None, cfg, labels, None, results)
    assert [c.name for c in blessing.checks] == ["accuracy >= 0.8", "accuracy[camera=big] >= 0.9"]
    assert blessing.blessed
