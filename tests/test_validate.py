"""Data validation: generated drops checked against the schema of the data before them.

Real ingest output of generated images; the reference run and its profile in a real
(SQLite) store for the step-level tests.
"""

import json

import pytest
from PIL import Image

from components.ingest.ingest import run_ingest
from components.validate.validate import DataValidationError, validate
from pipelines.adapters.mlflow_tracking import Tracking
from pipelines.execute import run_step
from pipelines.sample_data import SampleSpec, generate
from tests.conftest import fails_in_one_line
from visionpipe.config import load_config

BASE = dict(classes=3, per_class=30, size=32, seed=5)


@pytest.fixture(scope="module")
def config():
    return load_config(overrides=["ingest.min_images_per_class=1", "transform.image_size=32"])


def _ingested(root, config, **spec):
    images = root / "images"
    generate(images, SampleSpec(**{**BASE, **spec}))
    (images / "labels.csv").unlink()
    return run_ingest(str(images), str(root / "examples"), config).output_uri


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config):
    """The profile of the data a model was last trained on."""
    examples = _ingested(tmp_path_factory.mktemp("reference"), config)
    return validate(examples, config).profile


def _kinds(result):
    return {(a.kind, a.severity) for a in result.anomalies}


def test_the_same_kind_of_data_again_has_no_anomaly(tmp_path, config, reference):
    examples = _ingested(tmp_path, config, seed=6)  # other images, the same kind
    result = validate(examples, config, reference, "abcdef0123")
    assert result.anomalies == [] and result.verdict() == "no anomalies against run abcdef01"


def test_a_vanished_class_fails_and_a_new_one_warns(tmp_path, config, reference):
    examples = _ingested(tmp_path, config, first_class=1)  # circle gone, star new
    result = validate(examples, config, reference, "run1")
    assert {("class_vanished", "fail"), ("class_appeared", "warn")} <= _kinds(result)
    assert result.failures[0].message == "class(es) circle have no images now"
    assert result.verdict().startswith("2 anomalies, 1 failing against run run1: class_vanished")


def test_four_times_larger_images_are_outside_the_size_seen(tmp_path, config, reference):
    examples = _ingested(tmp_path, config, size=128)
    result = validate(examples, config, reference, "run1")
    messages = [a.message for a in result.anomalies if a.kind == "property_outside"]
    assert any(m.startswith("train: 100% of images have width outside 32-32") for m in messages)
    assert any("file_kb" in m for m in messages)


def test_grey_images_are_outside_the_colourfulness_seen(tmp_path, config, reference):
    images = tmp_path / "images"
    generate(images, SampleSpec(**BASE))
    (images / "labels.csv").unlink()
    for path in images.rglob("*.jpg"):
        Image.open(path).convert("L").save(path, quality=95)
    examples = run_ingest(str(images), str(tmp_path / "examples"), config).output_uri
    result = validate(examples, config, reference, "run1")
    outside = [a.message for a in result.anomalies if a.kind == "property_outside"]
    assert any("colourfulness outside" in m and "mostly below" in m for m in outside), outside


def test_severities_are_configured_per_kind(tmp_path, config, reference):
    examples = _ingested(tmp_path, config, first_class=1, size=128)
    relaxed = config.with_overrides(
        ["validation.severity={class_vanished: warn, property_outside: fail, class_appeared: off}"]
    )
    result = validate(examples, relaxed, reference, "run1")
    kinds = {a.kind for a in result.anomalies}
    assert "class_appeared" not in kinds
    assert {a.kind for a in result.failures} == {"property_outside"}


def test_a_split_whose_class_balance_differs_from_trains_is_flagged(config):
    from components.validate.anomalies import find_anomalies

    labels = {"train": ["a"] * 500 + ["b"] * 500, "valid": ["a"] * 90 + ["b"] * 10}
    values = {
        split: {"label": labels.get(split, []), "format": []}
        for split in ("train", "valid", "test")
    }
    [anomaly] = find_anomalies(values, None, config)
    assert anomaly.kind == "split_imbalance" and anomaly.severity == "warn"
    assert "valid's class proportions differ from train's" in anomaly.message


def _pipeline_run(config):
    session = Tracking.open(config)
    session.start_pipeline(config)
    return session


def test_the_step_checks_against_the_last_successful_run_and_stops_the_run(tmp_path, config):
    first = _ingested(tmp_path / "first", config)
    session = _pipeline_run(config)
    run_step("validate", config, session, raw_examples=first, profile=str(tmp_path / "p1"))
    session.end_pipeline(True)
    assert (tmp_path / "p1" / "data_profile.png").stat().st_size > 1000

    drop = _ingested(tmp_path / "drop", config, first_class=1)
    session = _pipeline_run(config)
    with pytest.raises(DataValidationError, match="class_vanished: class.es. circle"):
        run_step("validate", config, session, raw_examples=drop, profile=str(tmp_path / "p2"))
    [step] = session.client.search_runs(
        [session.experiment_id], f"tags.`mlflow.parentRunId` = '{session.pipeline_run_id}'"
    )
    assert step.info.status == "FAILED" and step.data.metrics["anomalies_failing"] == 1
    logged = {a.path for a in session.client.list_artifacts(step.info.run_id)}
    assert {"data_profile.json", "schema.yaml", "anomalies.json", "data_profile.png"} <= logged
    pipeline = session.client.get_run(session.pipeline_run_id)
    assert pipeline.data.tags["validation"].startswith("2 anomalies, 1 failing against run ")
    anomalies = json.loads((tmp_path / "p2" / "anomalies.json").read_text())
    assert {"kind": "class_vanished", "severity": "fail"}.items() <= anomalies[0].items()


def test_schema_infer_writes_a_schema_that_validation_uses(tmp_path, config, capsys):
    from pipelines.cli import main

    examples = _ingested(tmp_path / "a", config)
    schema = tmp_path / "schema.yaml"
    assert main(["schema", "infer", "--examples", examples, "--out", str(schema)]) == 0
    assert "3 classes" in capsys.readouterr().out
    text = schema.read_text().replace("- circle\n", "- circle\n- hexagon\n")  # an edit
    schema.write_text(text)
    with_schema = config.with_overrides([f"validation.schema_uri={schema}"])
    result = validate(examples, with_schema)
    assert result.failures[0].message == "class(es) hexagon have no images now"
    assert result.reference == f"schema {schema}"


@pytest.mark.parametrize(
    "text,problem",
    [
        ("classes: [a\n", "not YAML (line 2)"),
        ("colours: [red]\n", "unknown key(s) ['colours']"),
        ("ranges: {hue: [0, 1]}\n", "unknown property 'hue'"),
        ("ranges: {width: [9, 1]}\n", "ranges.width must be [low, high]"),
    ],
)
def test_a_schema_that_cannot_be_used_is_one_line_naming_it(tmp_path, capsys, text, problem):
    schema = tmp_path / "schema.yaml"
    schema.write_text(text)
    args = ["validate", "--examples", str(tmp_path), "--out", str(tmp_path / "out")]
    err = fails_in_one_line(
        [*args, "--set", f"validation.schema_uri={schema}"], capsys, tmp_path / "out"
    )
    assert f"validation.schema_uri {schema}: {problem}" in err
