"""Monitoring a served model: its profile, the prediction log, the monitor verb, streaming.

A tiny model pushed with its reference profile; the statistics themselves are tested on
generated observations in ``test_drift``, and on a trained model in ``test_monitor_quality``.
"""

import json
import threading
import time

import pytest

from pipelines.cli import main
from pipelines.sample_data import SampleSpec, generate
from tests.conftest import TINY_OVERRIDES, fails_in_one_line
from visionpipe import features as F
from visionpipe.config import load_config

SPLITS = ["ingest.train_fraction=0.6", "ingest.valid_fraction=0.1", "ingest.test_fraction=0.3"]
SMALL = ["--set", "monitor.min_records=10"]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A tiny model trained, evaluated (its profile made) and pushed to a serving root."""
    from components.evaluate.evaluate import run_evaluate
    from components.ingest.ingest import run_ingest
    from components.push.push import run_push
    from components.transform.transform import run_transform
    from trainer.train import run_train

    root = tmp_path_factory.mktemp("monitored")
    config = load_config(overrides=[*TINY_OVERRIDES, *SPLITS])
    generate(root / "data", SampleSpec(classes=3, per_class=40, size=32, seed=7))
    examples = run_ingest(str(root / "data"), str(root / "examples"), config).output_uri
    t = run_transform(examples, str(root / "t" / "examples"), str(root / "t" / "graph"), config)
    model = run_train(t.examples_uri, t.transform_graph_uri, None, str(root / "model"), config)
    run_evaluate(examples, model.model_uri, str(root / "blessing"), config)
    version = run_push(model.model_uri, str(root / "blessing"), str(root / "serving"), "shapes")
    return {"root": root, "model": model.model_uri, "version": version.path}


def _images(path, **spec):
    generate(path, SampleSpec(classes=3, size=32, **spec))
    return sorted(str(p) for p in path.rglob("*.jpg"))


def _monitor(args, capsys):
    assert main(["monitor", *args, "--json", *SMALL]) == 0
    return json.loads(capsys.readouterr().out)


def test_push_puts_the_profile_in_the_version_and_the_log_names_it(pushed):
    from visionpipe.layout import model_digest, model_identity

    profile = json.loads((pushed["root"] / "blessing" / F.PROFILE_FILE).read_text())
    assert profile["examples"] >= 20 and set(profile["labels"]) == {"circle", "square", "triangle"}
    assert len(profile["sample"]["embedding"]) == profile["examples"]
    copied = json.loads(open(f"{pushed['version']}/{F.REFERENCE_PROFILE}").read())
    assert copied == profile
    identity = model_identity(pushed["version"])
    assert identity == {"name": "shapes", "version": "1", "digest": model_digest(pushed["model"])}


def test_predict_logs_every_image_and_monitor_reads_the_log_back(
    pushed, tmp_path, capsys, isolated_home
):
    files = _images(tmp_path / "same", per_class=10, seed=50)
    assert main(["predict", "--model", pushed["version"], *files]) == 0
    capsys.readouterr()
    logged = list((isolated_home / "predictions" / "shapes").rglob("*.jsonl"))
    records = [json.loads(line) for f in logged for line in f.read_text().splitlines()]
    assert len(records) == 30 and {r["source"] for r in records} == {"predict"}
    assert {r["file"] for r in records} == set(files) and records[0]["version"] == "1"
    out = _monitor(["--model", pushed["version"], "--log"], capsys)
    assert out["records"] == 30 and out["window"] == "30 records from 1 files"
    assert out["model"]["version"] == "1" and isinstance(out["drift"], bool)
    names = {d["name"] for d in out["detectors"]}
    assert {"class_prior", "confidence", "embedding", "ood_rate", "estimated_accuracy"} <= names
    assert {"property:brightness", "property:sharpness", "property:format"} <= names
    report = out["report"]
    assert report.endswith("report.md") and "## Detectors" in open(report).read()


def test_logging_follows_its_switch_and_its_sample_rate(pushed, tmp_path, capsys, isolated_home):
    files = _images(tmp_path / "same", per_class=10, seed=51)
    assert (
        main(["predict", "--model", pushed["version"], *files, "--set", "monitor.log=false"]) == 0
    )
    assert not (isolated_home / "predictions").exists()
    assert (
        main(["predict", "--model", pushed["version"], *files, "--set", "monitor.sample_rate=0.5"])
        == 0
    )
    lines = sum(
        len(f.read_text().splitlines()) for f in (isolated_home / "predictions").rglob("*.jsonl")
    )
    assert 5 <= lines <= 25


def test_predict_batch_logs_what_it_scores(pushed, tmp_path, isolated_home):
    _images(tmp_path / "in", per_class=5, seed=52)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not an image")
    assert (
        main(
            [
                "predict-batch",
                "--model",
                pushed["version"],
                "--data",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    records = [
        json.loads(line)
        for f in (isolated_home / "predictions").rglob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(records) == 15 and {r["source"] for r in records} == {"predict-batch"}


@pytest.mark.parametrize("shift,detector", [("blurred", "sharpness"), ("darker", "brightness")])
def test_shifted_images_are_drift_named_by_their_property_with_a_report_and_a_monitor_run(
    pushed, tmp_path, capsys, shift, detector
):
    from pipelines.adapters.mlflow_tracking import Tracking
    from visionpipe.record import KIND_TAG

    dark = tmp_path / shift
    _images(dark, per_class=20, seed=53, shift=shift)
    out = _monitor(["--model", pushed["version"], "--data", str(dark)], capsys)
    assert out["drift"] is True and f"property:{detector}" in out["reason"]
    found = next(d for d in out["detectors"] if d["name"] == f"property:{detector}")
    assert found["drift"] and found["p_value"] < found["threshold"]
    folder = out["report"].rsplit("/", 1)[0]
    for name in ("report.md", "monitor.json", "distributions.png", "ood_gallery.png"):
        assert open(f"{folder}/{name}", "rb").read()
    session = Tracking.open(load_config())
    [run] = session.client.search_runs([session.experiment_id], f"tags.`{KIND_TAG}` = 'monitor'")
    assert (
        run.data.tags["monitor.drift"] == "true" and run.data.tags["monitor.model_name"] == "shapes"
    )
    assert (
        run.data.metrics["drift"] == 1.0 and run.data.metrics[f"property_{detector}_drift"] == 1.0
    )
    artifacts = {a.path for a in session.client.list_artifacts(run.info.run_id)}
    assert {"report.md", "distributions.png"} <= artifacts


def test_fresh_labels_give_live_accuracy_per_class_against_the_gate(pushed, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    _images(labelled, per_class=8, seed=54)
    out = _monitor(["--model", pushed["version"], "--labels", str(labelled / "labels.csv")], capsys)
    live = out["live"]
    assert live["images"] == 24 and set(live["per_class"]) == {"circle", "square", "triangle"}
    assert live["ci95"][0] <= live["accuracy"] <= live["ci95"][1]
    assert any(d["name"] == "live_accuracy" for d in out["detectors"])


def test_too_few_records_is_not_enough_data_with_the_count(pushed, tmp_path, capsys):
    files = _images(tmp_path / "few", per_class=2, seed=55)
    main(["predict", "--model", pushed["version"], *files])
    capsys.readouterr()
    out = _monitor(["--model", pushed["version"], "--log"], capsys)
    assert out["drift"] is False and out["enough_data"] is False
    assert out["reason"] == "not enough data: 6 records (the tests need 10)"


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "give --log (the prediction log), --data or --labels"),
        (["--log", "/nonexistent/log"], "/nonexistent/log: no prediction log there"),
        (["--data", "/nonexistent/images"], "--data /nonexistent/images: no such folder"),
        (["--log", "--since", "yesterday"], "--since 'yesterday': expected an ISO time"),
    ],
)
def test_bad_monitor_input_is_one_line(pushed, tmp_path, capsys, args, message):
    err = fails_in_one_line(
        ["monitor", "--model", pushed["version"], *args, "--out", str(tmp_path / "r")],
        capsys,
        tmp_path / "r",
    )
    assert message in err


def test_labels_the_model_does_not_know_and_a_model_without_profile_are_named(
    pushed, tmp_path, capsys
):
    unseen = tmp_path / "unseen"
    _images(unseen, per_class=2, seed=56, first_class=5)
    err = fails_in_one_line(
        [
            "monitor",
            "--model",
            pushed["version"],
            "--labels",
            str(unseen),
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
        tmp_path / "r",
    )
    assert "classes the model does not know: diamond, hexagon, ring" in err
    err = fails_in_one_line(
        [
            "monitor",
            "--model",
            pushed["model"],
            "--data",
            str(unseen),
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
        tmp_path / "r",
    )
    assert "no reference profile" in err and pushed["model"] in err


def test_predict_stream_scores_files_dropped_in_while_it_runs(pushed, tmp_path, isolated_home):
    from components.predict.stream import FileStream
    from visionpipe.serving import Classifier

    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    source = _images(tmp_path / "src", per_class=4, seed=57)
    labels = ["circle", "square", "triangle"]
    stream = FileStream(
        Classifier(pushed["version"]), labels, str(watch), str(out), settle_seconds=0.2
    )
    runner = threading.Thread(target=stream.run, kwargs={"poll_seconds": 0.1, "idle_stop": 3.0})
    runner.start()
    for i, path in enumerate(source):  # arriving one by one while it polls
        (watch / f"img{i}.jpg").write_bytes(open(path, "rb").read())
        time.sleep(0.05)
    (watch / "copy.jpg").write_bytes(open(source[0], "rb").read())  # the same content again
    (watch / "broken.jpg").write_bytes(b"not an image")
    runner.join(timeout=60)
    assert not runner.is_alive()
    rows = [
        json.loads(line)
        for f in sorted(out.glob("predictions-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    rejects = [
        json.loads(line)
        for f in sorted(out.glob("rejects-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert len(rows) == 12 and len({r["sha256"] for r in rows}) == 12
    assert sorted(r["reason"].split(" ")[0] for r in rejects) == ["duplicate", "not"]
    assert (
        stream.state.predicted == 12 and stream.state.duplicates == 1 and stream.state.rejected == 1
    )
    again = FileStream(
        Classifier(pushed["version"]), labels, str(watch), str(out), settle_seconds=0
    )
    assert again.state.resumed_hashes == 13 and again.poll() == 0  # a restart repeats nothing
    (watch / "new.jpg").write_bytes(
        open(_images(tmp_path / "more", per_class=1, seed=58)[0], "rb").read()
    )
    assert again.poll() == 1 and again.state.predicted == 1


def _rows(out) -> int:
    return sum(len(f.read_text().splitlines()) for f in out.glob("predictions-*.jsonl"))


@pytest.mark.processes
def test_predict_stream_stops_cleanly_on_ctrl_c_with_nothing_half_written(
    pushed, tmp_path, isolated_home
):
    import os
    import signal
    import subprocess
    import sys

    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    command = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "predict-stream",
        "--model",
        pushed["version"],
    ]
    command += [
        "--watch",
        str(watch),
        "--out",
        str(out),
        "--poll-seconds",
        "0.2",
        "--settle-seconds",
        "0.2",
    ]
    env = {**os.environ, "VISIONPIPE_HOME": str(isolated_home)}
    stream = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for i, path in enumerate(_images(tmp_path / "src", per_class=3, seed=59)):
            (watch / f"img{i}.jpg").write_bytes(open(path, "rb").read())
        deadline = time.monotonic() + 120
        while _rows(out) < 9 and time.monotonic() < deadline:
            time.sleep(0.2)
        stream.send_signal(signal.SIGINT)
        stdout, stderr = stream.communicate(timeout=60)
    finally:
        stream.kill()
    assert stream.returncode == 0, stderr[-2000:]
    assert "predict-stream: 9 scored, 0 rejected, 0 duplicates" in stdout
    assert not list(out.glob(".*"))  # no hidden, half-written batch left
    rows = [
        json.loads(line)
        for f in out.glob("predictions-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(rows) == 9
    logged = [
        line
        for f in (isolated_home / "predictions").rglob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(logged) == 9  # and the log has each of them, written before it stopped
