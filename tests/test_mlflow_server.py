"""The pipeline against `make mlflow-server`'s setup: PostgreSQL + an MLflow server."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest

from pipelines.adapters.mlflow_server import Postgres, server_command, wait_until_up
from tests.conftest import TINY_OVERRIDES
from trainer.launch import free_ports

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def database():
    """PostgreSQL on a free loopback port, and a folder for artifacts; stopped afterwards."""
    # Not under pytest's 0700 temp root: when tests run as root, PostgreSQL runs as the
    # postgres user, which must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="visionpipe-mlflow-server-"))
    os.chmod(root, 0o755)
    [db_port] = free_ports(1)
    postgres = Postgres(root / "postgres", db_port).start()
    try:
        yield postgres, root
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def _start_server(database, name: str):
    postgres, root = database
    [port] = free_ports(1)
    log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        server_command(postgres.uri, root / "artifacts", port),
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own process group: the web workers go with it
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process)
    return process, url


@pytest.fixture(scope="module")
def server(database):
    """The MLflow server on PostgreSQL; stopped afterwards."""
    process, url = _start_server(database, "server")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_pipeline_logs_runs_metrics_and_the_registry_through_the_server(
    server, tiny_dataset, isolated_home
):
    args = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(tiny_dataset), "--json"]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    env = {**os.environ, "VISIONPIPE_HOME": str(isolated_home), "MLFLOW_TRACKING_URI": server}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["tracking_uri"] == server
    assert not (isolated_home / "mlflow.db").exists()  # nothing went to the local store

    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    steps = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert {s.data.tags["visionpipe.step"] for s in steps} >= {"ingest", "train", "evaluate"}
    train = next(s for s in steps if s.data.tags["visionpipe.step"] == "train")
    assert len(client.get_metric_history(train.info.run_id, "loss")) == 2
    # Artifacts went through the server (--serve-artifacts), not to a local path.
    assert train.info.artifact_uri.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert "training_curves.png" in names
    champion = client.get_model_version_by_alias("visionpipe-classifier", "champion")
    assert champion.tags["pipeline_run_id"] == summary["mlflow_run_id"]
    # The version is the logged model evaluate made, its files stored through the server.
    model = client.get_logged_model(champion.tags["logged_model_id"])
    assert model.artifact_location.startswith("mlflow-artifacts:")
    model_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=champion.source,
        dst_path=str(isolated_home / "downloaded"),
        tracking_uri=server,
    )
    # An MLflow Model (MLmodel) around the served SavedModel, with push's record in it.
    from pipelines.adapters.mlflow_model import saved_model_in
    from visionpipe.layout import PUSH_RECORD

    assert os.path.exists(os.path.join(model_dir, "MLmodel"))
    assert os.path.exists(os.path.join(saved_model_in(model_dir), "saved_model.pb"))
    assert os.path.exists(os.path.join(saved_model_in(model_dir), PUSH_RECORD))


def _versions(url: str) -> list[tuple[str, str]]:
    """The registry's versions (number, digest tag) of the pipeline's model."""
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    found = client.search_model_versions("name = 'visionpipe-classifier'")
    return sorted((v.version, v.tags.get("model_digest", "")) for v in found)


def test_the_server_going_away_mid_run_fails_the_run_with_one_line(
    database, server, tiny_dataset, isolated_home
):
    process, url = _start_server(database, "doomed")  # same database as `server`
    before = _versions(server)
    args = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(tiny_dataset)]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    env = {**os.environ, "VISIONPIPE_HOME": str(isolated_home), "MLFLOW_TRACKING_URI": url}
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    env["PYTHONUNBUFFERED"] = "1"  # step lines as they happen
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in run.stdout:  # one plain line per finished step (no terminal)
        lines.append(line)
        if "ingest" in line and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the server (and its workers) goes away
            process.wait()
    assert run.wait(timeout=600) == 1
    failed = [line for line in lines if line.startswith("visionpipe: step ")]
    assert len(failed) == 1 and url.removeprefix("http://") in failed[0], "".join(lines)
    # No half-registered version: the registry (same database) has what it had before.
    assert _versions(server) == before
