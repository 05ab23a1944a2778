"""The real pipeline through kfp.local, as a user runs it: `visionpipe run --json`."""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import tensorflow as tf

from tests.conftest import TINY_OVERRIDES
from visionpipe import features as F

pytestmark = pytest.mark.e2e


def _cli(home, *args, overrides=TINY_OVERRIDES):
    """Runs the CLI as a user would (no terminal) with the tiny config."""
    command = [sys.executable, "-m", "pipelines.cli", *args]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "VISIONPIPE_HOME": str(home)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _visionpipe(home, *args):
    """Runs the CLI with the tiny config; returns the JSON of its last stdout line."""
    done = _cli(home, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(data, home, *options):
    """``visionpipe run --json``: the summary (stdout) and the console (stderr)."""
    done = _cli(home, "run", "--data", str(data), "--json", *options)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr  # stdout is one JSON object and nothing else


def _assert_short_console_and_full_log(console: str, log_path: str) -> None:
    """The console shows the steps and no noise; the run's log file keeps everything."""
    lines = console.strip().splitlines()
    assert len(lines) <= 40, console
    for noise in ("Warning", "warning", "absl", "executor_input", "Executing task", "Epoch 1/"):
        assert noise not in console
    for step in ("configure", "ingest", "data-check", "transform", "tune", "train", "evaluate"):
        assert any(line.startswith(f"✓ {step} ") for line in lines), console
    log = open(log_path).read()
    for step in ("configure", "ingest", "data-check", "transform", "tune", "train", "push"):
        assert f"Executing task '{step}'" in log.replace("\x1b[96m", "").replace("\x1b[0m", "")
    assert "Epoch 1/2" in log


def _assert_mlflow_3_sees_a_trained_model(client, run, evaluate_run, champion, summary):
    """The experiment opens as model training, and lists the candidate as a logged model
    with its test metrics; the registered version is made from it, described, and linked
    to the pipeline run."""
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [model] = client.search_logged_models([run.info.experiment_id])
    assert str(model.status) == "READY" and model.source_run_id == evaluate_run.info.run_id
    metrics = {m.key: m for m in model.metrics}
    assert metrics["test_accuracy"].value == pytest.approx(summary["test_accuracy"])
    assert metrics["test_accuracy"].dataset_digest == summary["data_fingerprint"][:32]
    outputs = [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs]
    assert outputs == [model.model_id]  # the pipeline run's model
    assert champion.tags["logged_model_id"] == model.model_id
    assert champion.run_id == run.info.run_id  # "Registered models" on the pipeline run
    linked = json.loads(client.get_logged_model(model.model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": "visionpipe-classifier", "version": "1"}]
    assert champion.description.startswith("blessed: ") and "| accuracy >= 0 |" in (
        champion.description
    )
    described = client.get_registered_model("visionpipe-classifier").description
    assert "over 3 classes (" in described and "encoded image bytes" in described


def _count(pattern):
    files = tf.io.gfile.glob(pattern)
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_pipeline_runs_end_to_end_then_retrains_for_drift_against_the_champion(
    tiny_dataset, isolated_home
):
    from pipelines.sample_data import SampleSpec, generate

    first, console = _run(tiny_dataset, isolated_home)
    _assert_short_console_and_full_log(console, first["log"])

    # Ingest wrote what the summary says, split by split.
    [examples] = list(isolated_home.glob("pipeline_root/*/ingest/examples"))
    for split in F.SPLITS:
        assert _count(F.split_pattern(str(examples), split)) == first["examples"][split]
    assert sum(first["examples"].values()) == 36 and first["rejected"] == 0

    # The gate (min_accuracy 0 in the tiny config) blessed it and it was pushed.
    assert first["blessed"] is True and first["pushed_version"] == 1
    serve = tf.saved_model.load(first["pushed_path"]).signatures[F.SERVING_SIGNATURE]
    jpeg = (tiny_dataset / "square" / "square_00003.jpg").read_bytes()
    out = serve(**{F.SERVING_INPUT: tf.constant([jpeg, jpeg])})
    assert out["probabilities"].shape == (2, 3) and out["class_name"].shape == (2,)

    # MLflow: one finished pipeline run with a nested run per step, and the champion alias.
    store = f"sqlite:///{isolated_home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.epochs"] == "2"
    assert run.data.metrics["test_accuracy"] == pytest.approx(first["test_accuracy"])
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert {c.data.tags["visionpipe.step"] for c in children} == {
        "ingest",
        "validate",
        "transform",
        "tune",
        "train",
        "evaluate",
        "push",
    }
    train_run = next(c for c in children if c.data.tags["visionpipe.step"] == "train")
    assert len(client.get_metric_history(train_run.info.run_id, "loss")) == 2  # per epoch
    evaluate_run = next(c for c in children if c.data.tags["visionpipe.step"] == "evaluate")
    logged = {a.path for a in client.list_artifacts(evaluate_run.info.run_id)}
    pictures = {"confusion_matrix.png", "mistakes.png", "mistakes.html", "evaluation_report.md"}
    assert pictures <= logged
    ingest_run = next(c for c in children if c.data.tags["visionpipe.step"] == "ingest")
    [dataset] = ingest_run.inputs.dataset_inputs
    assert run.data.tags["data_fingerprint"].startswith(dataset.dataset.digest)
    # The data is an input of the pipeline run and of the steps that read it, with its
    # source, digest, schema and counts per split.
    tune_run = next(c for c in children if c.data.tags["visionpipe.step"] == "tune")
    used_by = [(run, "training"), (tune_run, "validation"), (train_run, "training")]
    for logged, context in [*used_by, (evaluate_run, "test")]:
        [used] = client.get_run(logged.info.run_id).inputs.dataset_inputs
        assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == context
        assert used.dataset.digest == dataset.dataset.digest
        assert json.loads(used.dataset.profile)["num_rows"] == 36
        assert json.loads(used.dataset.source)["uri"].endswith("tiny_dataset0")
        assert "label" in used.dataset.schema and "image" in used.dataset.schema
    champion = client.get_model_version_by_alias("visionpipe-classifier", "champion")
    assert champion.tags["serving_version"] == "1"
    assert champion.tags["pipeline_run_id"] == first["mlflow_run_id"]
    _assert_mlflow_3_sees_a_trained_model(client, run, evaluate_run, champion, first)
    # The champion's version knows its pipeline run, and so its examples.
    edge = isolated_home.parent / "champion-edge"
    done = _cli(
        isolated_home, "export-edge", "--model", "models:/visionpipe-classifier@champion",
        "--format", "onnx", "--out", str(edge),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (edge / "onnx" / "model.onnx").is_file()

    # The champion is given darker images than it was tested on, through `predict`.
    dark = isolated_home.parent / "dark"
    generate(dark, SampleSpec(classes=3, per_class=8, size=32, seed=9, shift="darker"))
    files = [str(p) for p in sorted(dark.rglob("*.jpg"))]
    done = _cli(
        isolated_home, "predict", "--model", "models:/visionpipe-classifier@champion", *files
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The data did not change, but the monitor the scheduler runs first found drift, so the
    # trigger retrains. It is evaluated against the champion on the same test split: a
    # different seed makes a different model, and a tolerance of a whole accuracy point
    # forces the gate's answer: blessed, so it becomes version 2 and champion.
    settings = ["--set", "trainer.seed=1", "--set", "evaluate.champion_tolerance=1.0"]
    settings += ["--set", "pipeline.edge_export=[onnx, tflite_float16]"]
    settings += ["--set", "monitor.min_records=10"]
    drifted = _schedule_once(
        tiny_dataset, isolated_home, "--monitor-log", "--retrain-when", "drift", *settings
    )
    assert drifted["status"] == "trained", drifted
    assert "monitor: drift: " in drifted["detail"] and "property:brightness" in drifted["detail"]
    assert "trained for drift" in drifted["detail"] and "pushed version 2" in drifted["detail"]
    second = {"mlflow_run_id": drifted["mlflow_run_id"]}
    again = client.get_run(second["mlflow_run_id"])
    assert again.data.tags["retrain_trigger"] == "drift"
    assert "property:brightness" in again.data.tags["data_check"]
    [monitor] = client.search_runs([run.info.experiment_id], "tags.`visionpipe.kind` = 'monitor'")
    assert monitor.data.tags["monitor.drift"] == "true"
    assert monitor.data.tags["monitor.model_version"] == "1"
    assert "champion_test_accuracy" in again.data.metrics
    assert again.data.tags["blessed"] == "true" and again.data.tags["pushed_version"] == "2"
    assert "champion comparison passed" in again.data.tags["blessing_reason"]
    registry_aliases = {
        alias: str(client.get_model_version_by_alias("visionpipe-classifier", alias).version)
        for alias in ("champion", "previous")
    }
    assert registry_aliases == {"champion": "2", "previous": "1"}

    # The edge-export step followed push: its exports are artifacts of the pipeline run
    # and its figures tags of the version it exported.
    steps_two = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{second['mlflow_run_id']}'"
    )
    assert "edge-export" in {c.data.tags["visionpipe.step"] for c in steps_two}
    # Same images, same ingest and transform settings: both came from the step cache,
    # and the pipeline run still got ingest's record (the data check read it, above).
    cached = {c.data.tags["visionpipe.step"]: c.data.tags for c in steps_two}
    first_steps = {c.data.tags["visionpipe.step"]: c.info.run_id for c in children}
    for step in ("ingest", "transform"):
        assert cached[step]["visionpipe.cache"] == "hit"
        assert cached[step]["visionpipe.cached_from"] == first_steps[step]
    assert cached["ingest"]["data_fingerprint"] == run.data.tags["data_fingerprint"]
    assert again.data.tags["data_fingerprint"] == run.data.tags["data_fingerprint"]
    edge = {a.path for a in client.list_artifacts(second["mlflow_run_id"], "edge")}
    assert {"edge/edge_report.md", "edge/onnx", "edge/tflite_float16"} <= edge
    version_two = client.get_model_version("visionpipe-classifier", "2")
    assert version_two.tags["edge_formats"] == "onnx,tflite_float16"
    assert float(version_two.tags["edge_onnx_agreement"]) == 1.0

    # Nothing was logged since that monitor run, and data and settings equal the run that
    # trained: the next trigger stops after the data check, saying both.
    scheduled = _schedule_once(tiny_dataset, isolated_home, "--monitor-log", *settings)
    assert scheduled["status"] == "skipped" and scheduled["trigger"] == 1
    assert scheduled["detail"].startswith("monitor: not enough data: 0 records")
    assert f"data unchanged since run {second['mlflow_run_id']}" in scheduled["detail"]
    assert scheduled["detail"].endswith("not enough data: 0 records (the tests need 10)")
    skipped_run = client.get_run(scheduled["mlflow_run_id"])
    assert skipped_run.info.status == "FINISHED"
    assert skipped_run.data.tags["visionpipe.skipped"] == "true"
    assert "test_accuracy" not in skipped_run.data.metrics
    steps = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{scheduled['mlflow_run_id']}'"
    )
    assert {c.data.tags["visionpipe.step"] for c in steps} == {"ingest", "validate"}

    # Both runs side by side, from MLflow: best test accuracy first, with their curves.
    table = _compare(isolated_home, "--last", "5")
    rows = table["runs"]
    assert {r["run_id"] for r in rows} == {first["mlflow_run_id"], second["mlflow_run_id"]}
    accuracies = [r["metrics"]["test_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    by_id = {r["run_id"]: r for r in rows}
    assert by_id[first["mlflow_run_id"]]["pushed_version"] == "1"
    assert by_id[first["mlflow_run_id"]]["params"]["trainer.epochs"] == "2"
    assert all(len(r["curve"]) == 2 and r["data_fingerprint"] for r in rows)
    assert os.path.getsize(table["chart"]) > 1000
    assert len(_compare(isolated_home, "--last", "1")["runs"]) == 1
    with_skipped = _compare(isolated_home, "--include-skipped")["runs"]
    assert {r["run_id"]: r["status"] for r in with_skipped}[scheduled["mlflow_run_id"]] == "SKIPPED"
    assert {r["run_id"]: r["why"] for r in with_skipped} == {
        first["mlflow_run_id"]: "always",
        second["mlflow_run_id"]: "drift",
        scheduled["mlflow_run_id"]: "skip",
    }


def _schedule_once(data, home, *options):
    cron = ["--cron", "* * * * * *", "--max-runs", "1"]
    return _visionpipe(home, "schedule", "run-local", "--data", str(data), *cron, *options)


def _compare(home, *args):
    cmd = [sys.executable, "-m", "pipelines.cli", "compare", "--json", *args]
    env = {**os.environ, "VISIONPIPE_HOME": str(home)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_default_pipeline_learns_glyphs_that_mirroring_would_confuse(tmp_path):
    # b/d/p/q are mirror images of each other: a default that flipped images could not
    # tell them apart. The default configuration, as a user runs it, on generated glyphs.
    from pipelines.sample_data import SampleSpec, generate

    data, home = tmp_path / "glyphs", tmp_path / "home"
    generate(data, SampleSpec(classes=4, per_class=150, size=32, seed=3, kind="glyphs"))
    command = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(data), "--json"]
    env = {**os.environ, "VISIONPIPE_HOME": str(home)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["test_accuracy"] >= 0.9, summary
    assert summary["blessed"] and summary["pushed_version"] == 1
    [record] = list(home.glob("pipeline_root/*/tune/hyperparameters/hyperparameters.json"))
    assert json.loads(record.read_text())["values"]["flip"] == "none"


def test_a_failing_step_shows_its_own_error_and_the_log_not_a_traceback(
    tiny_dataset, tmp_path, webhook
):
    # 16-pixel images cannot be halved six times: the model cannot be built.
    url, received = webhook
    broken = [*TINY_OVERRIDES, "trainer.depth=6", "tuner.max_trials=0"]
    broken += [f"pipeline.notify_url={url}"]
    done = _cli(tmp_path / "home", "run", "--data", str(tiny_dataset), overrides=broken)
    assert done.returncode == 1
    console = done.stdout + done.stderr
    assert "visionpipe: step tune failed: ValueError" in console
    assert "Traceback" not in console
    log_path = console.split("full log: ")[1].split()[0]
    assert "Traceback" in open(log_path).read()
    # The exit handler ran after the failed step and told the webhook which one.
    (notice,) = received
    assert notice["state"] == "FAILED" and notice["failed_step"] == "tune"
    assert notice["error"].startswith("ValueError")


def test_ctrl_c_stops_the_running_step_and_says_what_was_kept(tiny_dataset, tmp_path):
    home = tmp_path / "home"
    long_training = [*TINY_OVERRIDES, "trainer.epochs=2000", "trainer.early_stopping_patience=5000"]
    command = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(tiny_dataset)]
    for item in long_training:
        command += ["--set", item]
    env = {**os.environ, "VISIONPIPE_HOME": str(home)}
    with open(tmp_path / "console.txt", "w") as console:
        proc = subprocess.Popen(command, env=env, stdout=console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list(home.glob("logs/*.log"))
            if logs and "Epoch 2/" in logs[0].read_text(errors="replace"):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    text = (tmp_path / "console.txt").read_text()
    assert "interrupted during train" in text and "Traceback" not in text
    assert str(home / "pipeline_root") in text
    store = f"sqlite:///{home / 'mlflow.db'}"
    runs = mlflow.MlflowClient(store).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(store).search_experiments()]
    )
    status = {r.info.run_name: r.info.status for r in runs}
    assert status["train"] == "FAILED" and status["transform"] == "FINISHED"


def test_two_runs_on_one_home_both_finish_with_distinct_versions(tiny_dataset, isolated_home):
    # Two terminals, one home: different seeds (different models), a gate that blesses
    # both; the pushes are serialised by the serving root's lock.
    env = {**os.environ, "VISIONPIPE_HOME": str(isolated_home)}
    procs = []
    for seed in (1, 2):
        command = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(tiny_dataset)]
        command += ["--json", "--set", f"trainer.seed={seed}"]
        command += ["--set", "evaluate.champion_tolerance=1.0"]
        for item in TINY_OVERRIDES:
            command += ["--set", item]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    summaries = [json.loads(p.communicate(timeout=900)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(s["pushed_version"] for s in summaries) == [1, 2]
    assert len({s["log"] for s in summaries}) == 2  # each its own log
    store = f"sqlite:///{isolated_home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    champion = client.get_model_version_by_alias("visionpipe-classifier", "champion")
    previous = client.get_model_version_by_alias("visionpipe-classifier", "previous")
    assert (champion.tags["serving_version"], previous.tags["serving_version"]) == ("2", "1")
    assert champion.tags["model_digest"] != previous.tags["model_digest"]
    for s in summaries:
        assert client.get_run(s["mlflow_run_id"]).info.status == "FINISHED"
