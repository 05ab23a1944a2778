"""Shared fixtures: tiny generated datasets, a tiny config, and an isolated VISIONPIPE_HOME."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pipelines.sample_data import SampleSpec, generate  # noqa: E402
from visionpipe.config import load_config  # noqa: E402

TINY_OVERRIDES = [
    "transform.image_size=16",
    "trainer.epochs=2",
    "trainer.min_steps=0",
    "trainer.width=4",
    "trainer.depth=1",
    "trainer.batch_size=8",
    "tuner.max_trials=1",
    "tuner.epochs=1",
    "evaluate.min_accuracy=0.0",
    "ingest.min_images_per_class=1",
]


def fails_in_one_line(args: list[str], capsys, untouched) -> str:
    """Runs the CLI on bad input: exit 2, one ``visionpipe: error:`` line, ``untouched``
    not created. Returns the line."""
    from pipelines.cli import main

    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("visionpipe: error:")
    assert not untouched.exists(), "nothing may be written on bad input"
    return err


@pytest.fixture(scope="session")
def tiny_config():
    """A config small enough to train in seconds; the gate blesses anything."""
    return load_config(overrides=TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """3 classes x 12 images of 32 px, folder-per-class plus labels.csv."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    generate(root, SampleSpec(classes=3, per_class=12, size=32, seed=7))
    return root


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own VISIONPIPE_HOME and no inherited MLflow coordinates."""
    home = tmp_path / "vp_home"
    monkeypatch.setenv("VISIONPIPE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return home


@pytest.fixture(scope="session")
def ingested(tiny_dataset, tiny_config, tmp_path_factory):
    """The tiny dataset through the ingest step (library call, no MLflow)."""
    from components.ingest.ingest import run_ingest

    out = tmp_path_factory.mktemp("ingested") / "examples"
    return run_ingest(str(tiny_dataset), str(out), tiny_config)


@pytest.fixture(scope="session")
def transformed(ingested, tiny_config, tmp_path_factory):
    """The ingested examples through tf.Transform."""
    from components.transform.transform import run_transform

    root = tmp_path_factory.mktemp("transformed")
    return run_transform(
        ingested.output_uri, str(root / "examples"), str(root / "transform_graph"), tiny_config
    )


@pytest.fixture(scope="session")
def trained(transformed, tiny_config, tmp_path_factory):
    """A tiny model trained and exported with the default hyperparameters."""
    from trainer.train import run_train

    out = tmp_path_factory.mktemp("model") / "model"
    return run_train(
        transformed.examples_uri, transformed.transform_graph_uri, None, str(out), tiny_config
    )


@pytest.fixture
def crashing_copy():
    """A factory of ``copy_file`` stand-ins that die mid-push.

    ``crashing_copy(real_copy, after, message)`` copies ``after`` files for real, then
    raises ``OSError(message)``: the push process losing its disk or power mid-copy.
    """

    def make(real_copy, after: int, message: str):
        copied = []

        def copy(src, dst):
            if len(copied) == after:
                raise OSError(message)
            copied.append(dst)
            real_copy(src, dst)

        return copy

    return make


@pytest.fixture
def webhook():
    """A local HTTP endpoint: yields its URL and the JSON bodies POSTed to it."""
    import http.server
    import json
    import threading

    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def pytest_collection_modifyitems(items):
    """The container tests first: the first of them may build the image for minutes,
    which overlaps the rest of the suite on the other workers instead of ending it."""
    items.sort(key=lambda item: item.get_closest_marker("container") is None)
