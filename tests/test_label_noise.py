"""Label-noise suspicion (confident learning on out-of-fold predictions) and relabel."""

import csv

import numpy as np
import pytest

from components.evaluate.evaluate import run_evaluate
from components.evaluate.label_noise import find_issues
from components.ingest.ingest import run_ingest
from pipelines.cli import main
from pipelines.relabel import RelabelError, apply, export
from visionpipe.config import load_config

from .conftest import TINY_OVERRIDES, fails_in_one_line


def test_flipped_labels_are_found_with_their_true_class():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d"]
    centres = rng.normal(0, 4, (4, 16))
    truth = np.repeat(np.arange(4), 150)
    embeddings = centres[truth] + rng.normal(0, 1.5, (600, 16))
    given = truth.copy()
    flipped = rng.choice(np.flatnonzero(truth == 0), 8, replace=False)  # 5 % of class a
    given[flipped] = rng.integers(1, 4, len(flipped))
    issues = find_issues(embeddings, [classes[i] for i in given], classes, folds=5)
    found = set(issues.indices)
    recall = len(found & set(flipped.tolist())) / len(flipped)
    precision = len(found & set(flipped.tolist())) / max(1, len(found))
    assert recall >= 0.75 and precision >= 0.8, (recall, precision)
    suggested = dict(zip(issues.indices, issues.suggested, strict=True))
    assert all(suggested[i] == "a" for i in flipped if i in suggested)
    assert issues.quality == sorted(issues.quality)  # the most suspect first


def test_a_class_too_small_for_folds_is_not_checked():
    issues = find_issues(np.zeros((3, 2)), ["a", "a", "b"], ["a", "b"], folds=5)
    assert issues.count == 0 and issues.folds == 0 and issues.examined == 3


@pytest.fixture(scope="module")
def audited(ingested, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("audited")
    config = load_config(overrides=["evaluate.min_accuracy=0.0", "evaluate.robustness=[]"])
    return out, run_evaluate(ingested.output_uri, trained.model_uri, str(out), config)


def test_evaluate_writes_the_suspects_their_gallery_and_links_them(audited):
    audited, blessing = audited
    rows = list(csv.DictReader(open(audited / "label_issues.csv")))
    header = open(audited / "label_issues.csv").readline().strip()
    assert header == "path,label,suggested,label_quality"
    assert len(rows) == blessing.label_issues  # the count the console and MLflow show
    assert all(r["suggested"] and float(r["label_quality"]) <= 1.0 for r in rows)
    assert (audited / "label_issues.png").stat().st_size > 1000
    page = (audited / "label_issues.html").read_text()
    assert "labelled" in page and "probably" in page
    report = (audited / "report.md").read_text()
    assert "## Training labels that are probably wrong" in report
    assert "label_issues.html" in report and "training images" in report


def test_relabel_exports_then_applies_fixes_and_the_fingerprint_changes(
    tmp_path, tiny_dataset, ingested, capsys
):
    data = str(tiny_dataset)
    first = sorted((tiny_dataset / "circle").glob("*.jpg"))[0]
    issues = tmp_path / "label_issues.csv"
    issues.write_text(
        "path,label,suggested,label_quality\n"
        f"{first},circle,square,0.1\n"
        f"{sorted((tiny_dataset / 'square').glob('*.jpg'))[0]},square,circle,0.2\n"
    )
    assert main(["relabel", "--issues", str(issues), "--out", str(tmp_path / "fix.csv")]) == 0
    assert "2 training images" in capsys.readouterr().out
    fixes = (tmp_path / "fix.csv").read_text().splitlines()
    assert fixes[0] == "path,label,suggested" and len(fixes) == 3
    fixes[2] = fixes[2].rsplit(",", 1)[0] + ","  # the person keeps the second label
    (tmp_path / "fix.csv").write_text("\n".join(fixes) + "\n")
    args = ["relabel", "--apply", str(tmp_path / "fix.csv"), "--data", data]
    assert main([*args, "--out", str(tmp_path / "labels.csv")]) == 0
    assert "36 images, 1 relabelled" in capsys.readouterr().out
    rows = {r["path"]: r["label"] for r in csv.DictReader(open(tmp_path / "labels.csv"))}
    assert len(rows) == 36 and rows[str(first)] == "square"
    config = load_config(overrides=TINY_OVERRIDES)
    again = run_ingest(str(tmp_path / "labels.csv"), str(tmp_path / "ex"), config)
    assert again.stats["fingerprint"] != ingested.stats["fingerprint"]
    assert again.stats["written"] == ingested.stats["written"]


def test_fixes_that_do_not_match_the_data_are_one_line(tmp_path, tiny_dataset):
    (tmp_path / "fix.csv").write_text("path,label,suggested\n/nowhere/x.jpg,circle,square\n")
    with pytest.raises(RelabelError, match=r"fix.csv:2: /nowhere/x.jpg is not an image of"):
        apply(str(tmp_path / "fix.csv"), str(tiny_dataset), str(tmp_path / "out.csv"))
    first = sorted((tiny_dataset / "circle").glob("*.jpg"))[0]
    (tmp_path / "fix.csv").write_text(f"path,label,suggested\n{first},square,circle\n")
    with pytest.raises(RelabelError, match="is labelled 'circle' in .*not 'square'"):
        apply(str(tmp_path / "fix.csv"), str(tiny_dataset), str(tmp_path / "out.csv"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(RelabelError, match="expected columns path,label,suggested"):
        export(str(tmp_path / "bad.csv"), str(tmp_path / "o.csv"))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "o.csv").exists()


def test_relabel_without_audited_runs_or_data_is_one_line(tmp_path, capsys):
    err = fails_in_one_line(
        ["relabel", "--out", str(tmp_path / "x.csv")], capsys, tmp_path / "x.csv"
    )
    assert "has label issues" in err and "give --issues" in err
    args = ["relabel", "--apply", str(tmp_path / "f.csv"), "--out", str(tmp_path / "x.csv")]
    assert "needs --data" in fails_in_one_line(args, capsys, tmp_path / "x.csv")
