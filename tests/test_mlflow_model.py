"""The registered model is an MLflow Model: pyfunc, a real `mlflow models serve`, batch predict."""

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from components.predict.batch import BatchInputError
from pipelines.adapters import mlflow_tracking as tracking
from pipelines.adapters.mlflow_model import serve_command
from pipelines.cli import main
from pipelines.execute import run_step
from visionpipe import features as F
from visionpipe.config import load_config
from visionpipe.serving import Classifier, ModelNotFoundError

NAME = "shapes"


def _config(tmp_path):
    return load_config(
        overrides=[f"push.model_name={NAME}", f"push.serving_root={tmp_path / 'serving'}"]
    )


def _images(tiny_dataset, tmp_path):
    """A JPEG of the dataset, the same image as PNG, and a file that is not an image."""
    jpeg = next((Path(tiny_dataset) / "circle").glob("*.jpg"))
    png = tmp_path / "circle.png"
    Image.open(jpeg).save(png)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    return jpeg, png, bad


@pytest.fixture
def pushed(trained, tiny_dataset, tmp_path, isolated_home):
    """The tiny model pushed (serving root + registry) in this test's home."""
    blessing = tmp_path / "blessing"
    blessing.mkdir()
    candidate = {"accuracy": 0.9, "macro_f1": 0.9, "log_loss": 0.3}
    (blessing / F.BLESSING_FILE).write_text(
        json.dumps({"blessed": True, "reason": "test", "candidate": candidate})
    )
    example = next((Path(tiny_dataset) / "triangle").glob("*.jpg"))
    (blessing / F.EXAMPLE_IMAGE_FILE).write_bytes(example.read_bytes())
    config = _config(tmp_path)
    result = run_step("push", config, model=trained.model_uri, blessing=str(blessing)).pushed
    return result, config


def _expected(model_dir, paths):
    return [p.to_dict() for p in Classifier(model_dir).predict_files([str(p) for p in paths])]


def test_the_registered_version_loads_with_pyfunc_and_predicts_like_predict(
    pushed, tiny_dataset, tmp_path, monkeypatch, isolated_home
):
    import mlflow

    result, config = pushed
    uri = tracking.tracking_uri(config)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as an MLflow user points at the store
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    jpeg, png, _ = _images(tiny_dataset, tmp_path)
    out = model.predict(pd.DataFrame({"image": [jpeg.read_bytes(), png.read_bytes()]}))
    expected = _expected(result.path, [jpeg, png])
    assert list(out["class_name"]) == [e["class_name"] for e in expected]
    for row, e in zip(out.itertuples(), expected, strict=True):
        assert row.probabilities == pytest.approx(e["probabilities"], abs=1e-6)
        assert row.probability == pytest.approx(e["probability"], abs=1e-6)
    # base64 strings are taken too, in-process as over REST
    b64 = model.predict(pd.DataFrame({"image": [base64.b64encode(jpeg.read_bytes()).decode()]}))
    assert b64["class_name"][0] == expected[0]["class_name"]
    meta = model.metadata
    record = json.loads(Path(result.path, F.TRAINING_RECORD).read_text())
    assert meta.metadata["labels"] == record["labels"]
    assert meta.get_input_schema().input_names() == ["image"]
    assert meta.get_input_schema().input_types()[0].name == "binary"
    assert meta.saved_input_example_info is not None
    client = tracking.client(uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.tags["model_digest"] == result.digest  # tags and aliases as before
    local = mlflow.artifacts.download_artifacts(
        f"models:/{NAME}@champion", dst_path=str(tmp_path / "dl")
    )
    requirements = Path(local, "requirements.txt").read_text()
    assert "tensorflow==2.21.0" in requirements and "mlflow==" in requirements
    # What the served model answered is in the prediction log, named by its push.
    model._model_impl.python_model._log.flush()
    logged = [
        json.loads(line)
        for f in (isolated_home / "predictions" / NAME).rglob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(logged) == 3 and {r["source"] for r in logged} == {"pyfunc"}
    assert {r["digest"] for r in logged} == {result.digest} and "file" not in logged[0]


def test_predict_takes_the_registry_uri(pushed, tiny_dataset, tmp_path, capsys):
    result, _ = pushed
    jpeg, png, _ = _images(tiny_dataset, tmp_path)
    args = ["predict", "--model", f"models:/{NAME}@champion", "--json", str(jpeg), str(png)]
    assert main([*args, "--set", f"push.serving_root={tmp_path / 'serving'}"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["class_name"] for g in got] == [
        e["class_name"] for e in _expected(result.path, [jpeg, png])
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body):
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.processes
def test_mlflow_models_serve_answers_like_predict_and_a_bad_row_with_its_error(
    pushed, tiny_dataset, tmp_path
):
    result, config = pushed
    port = _free_port()
    argv, env = serve_command(f"models:/{NAME}@champion", tracking.tracking_uri(config), port)
    server = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as ping:
                    if ping.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(1)
        jpeg, png, bad = _images(tiny_dataset, tmp_path)
        b64 = [base64.b64encode(p.read_bytes()).decode() for p in (jpeg, png)]
        status, body = _post(
            f"{base}/invocations",
            {"dataframe_split": {"columns": ["image"], "data": [[b] for b in b64]}},
        )
        assert status == 200, body
        expected = _expected(result.path, [jpeg, png])
        rows = body["predictions"]
        assert [r["class_name"] for r in rows] == [e["class_name"] for e in expected]
        for r, e in zip(rows, expected, strict=True):
            assert r["probabilities"] == pytest.approx(e["probabilities"], abs=1e-6)
        status, body = _post(
            f"{base}/invocations",
            {
                "dataframe_records": [
                    {"image": b64[0]},
                    {"image": base64.b64encode(bad.read_bytes()).decode()},
                ]
            },
        )
        assert status == 200, body  # a bad row is answered with its error; the others too
        rows = body["predictions"]
        assert rows[0]["class_name"] == expected[0]["class_name"] and not rows[0].get("error")
        assert rows[1]["class_id"] == -1
        assert rows[1]["error"].startswith("not an image the model can decode")
        too_many = [{"image": b64[0]}] * 257
        status, body = _post(f"{base}/invocations", {"dataframe_records": too_many})
        assert 400 <= status < 500
        assert "request has 257 images; this model answers at most 256" in body["message"]
        status, _ = _post(f"{base}/invocations", {"dataframe_records": [{"image": b64[1]}]})
        assert status == 200 and server.poll() is None  # the server is still up
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_batch_prediction_scores_a_folder_and_rejects_what_it_cannot_read(
    trained, tiny_dataset, tmp_path, capsys
):
    data = tmp_path / "incoming"
    (data / "nested").mkdir(parents=True)
    jpegs = sorted((Path(tiny_dataset) / "square").glob("*.jpg"))[:5]
    for i, jpeg in enumerate(jpegs):
        (data / ("nested" if i % 2 else "") / jpeg.name).write_bytes(jpeg.read_bytes())
    (data / "broken.jpg").write_bytes(b"not an image")
    (data / "empty.png").write_bytes(b"")
    out = tmp_path / "scored"
    args = ["predict-batch", "--model", trained.model_uri, "--data", str(data), "--out", str(out)]
    assert main(args) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1].startswith("7 inputs = 5 predicted + 2 rejected")
    )
    rows = [json.loads(line) for f in sorted(out.glob("predictions-*.jsonl")) for line in f.open()]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").open()]
    assert len(rows) == 5 and len(rejects) == 2
    assert {r["reason"] for r in rejects} == {
        "empty file",
        "not an image the model can decode (JPEG, PNG, GIF, BMP or WebP)",
    }
    expected = {e["file"]: e for e in _expected(trained.model_uri, sorted(data.glob("**/*.jpg")))}
    for row in rows:
        e = expected[row["path"]]
        assert row["class"] == e["class_name"]
        assert row["probability"] == pytest.approx(e["probability"], abs=1e-6)
        assert len(row["top_k"]) == 3 and row["top_k"][0]["class"] == e["class_name"]
    assert json.loads((out / "summary.json").read_text())["inputs"] == 7
    assert not list(tmp_path.glob("scored.tmp-*"))
    # The output exists now: refused without --overwrite, replaced with it.
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    (tmp_path / "paths.csv").write_text(f"path\n{jpegs[0]}\n{jpegs[1]}\n")
    csv_args = [*args[:3], "--data", str(tmp_path / "paths.csv"), "--out", str(out), "--overwrite"]
    assert main(csv_args) == 0
    assert json.loads((out / "summary.json").read_text())["inputs"] == 2


def test_batch_prediction_refuses_bad_inputs_before_writing(trained, tmp_path, tiny_config):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(BatchInputError, match="no files to score"):
        run_step(
            "predict-batch", tiny_config, model=trained.model_uri, data=str(empty), out=str(out)
        )
    with pytest.raises(BatchInputError, match="no such folder, prefix or CSV file"):
        run_step(
            "predict-batch",
            tiny_config,
            model=trained.model_uri,
            data=str(tmp_path / "nope"),
            out=str(out),
        )
    with pytest.raises(ModelNotFoundError, match="models:/nope@champion"):
        run_step(
            "predict-batch",
            tiny_config,
            model="models:/nope@champion",
            data=str(empty),
            out=str(out),
        )
    not_ours = tmp_path / "plain"
    (not_ours).mkdir()
    (not_ours / "saved_model.pb").write_bytes(b"")
    with pytest.raises(BatchInputError, match="not a visionpipe model"):
        run_step("predict-batch", tiny_config, model=str(not_ours), data=str(empty), out=str(out))
    assert not out.exists()
