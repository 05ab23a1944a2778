"""submit and schedule against a local stub of the KFP API (a contract test: see kfp_stub)."""

import json

import pytest
import yaml
from kfp.client import client as kfp_client

from pipelines.cli import main
from tests.kfp_stub import API, KfpStub
from trainer.launch import free_ports


@pytest.fixture(autouse=True)
def no_kfp_credentials(tmp_path, monkeypatch):
    """No saved KFP context or credentials from the machine running the tests."""
    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json"))
    for name in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
        "VISIONPIPE_KFP_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


def _cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("visionpipe:")]


def test_submit_uploads_the_pipeline_once_and_starts_a_run_with_typed_parameters(capsys):
    params = ["--param", "data=gs://bucket/images", "--param", "epochs=3"]
    params += ["--param", "only_if_data_changed=true", "--param", "min_accuracy=0.8"]
    with KfpStub() as stub:
        code, out, warnings = _cli(capsys, "submit", "--host", stub.url, *params)
        assert code == 0
        assert [w.split(":")[2].split(" ")[1] for w in warnings] == ["image", "serving_root"]
        [run_id] = stub.runs
        assert out.splitlines() == [f"run {run_id}", f"{stub.url}/#/runs/details/{run_id}"]
        assert stub.calls() == [
            ("GET", f"{API}/pipelines"),
            ("POST", f"{API}/pipelines"),
            ("GET", f"{API}/pipelines/pipeline-1/versions"),
            ("POST", f"{API}/pipelines/upload_version"),
            ("GET", f"{API}/experiments"),
            ("POST", f"{API}/experiments"),
            ("POST", f"{API}/runs"),
        ]
        assert stub.last("POST", f"{API}/pipelines").body == {"display_name": "visionpipe"}
        upload = stub.last("POST", f"{API}/pipelines/upload_version")
        assert upload.query["pipelineid"] == "pipeline-1"
        assert upload.query["name"].startswith("visionpipe-") and len(upload.query["name"]) == 23
        assert yaml.safe_load(upload.upload)["pipelineInfo"]["name"] == "visionpipe"
        assert stub.last("POST", f"{API}/experiments").body["display_name"] == "visionpipe"
        run = stub.last("POST", f"{API}/runs").body
        assert run["runtime_config"]["parameters"] == {
            "data": "gs://bucket/images",
            "epochs": 3,
            "only_if_data_changed": True,
            "min_accuracy": 0.8,
        }
        assert run["pipeline_version_reference"] == {
            "pipeline_id": "pipeline-1",
            "pipeline_version_id": upload_version_id(stub),
        }
        assert run["experiment_id"] == "experiment-3" and run["display_name"].startswith(
            "visionpipe-"
        )

        # The same spec again: found by its version name, not uploaded again.
        before = len(stub.requests)
        assert _cli(capsys, "submit", "--host", stub.url, "--param", "data=gs://b/i")[0] == 0
        assert [c for c in stub.calls()[before - 1 :] if c[0] == "POST"] == [
            ("POST", f"{API}/runs")
        ]
        # A changed config compiles to another spec: a new version of the same pipeline.
        assert _cli(capsys, "submit", "--host", stub.url, "--param", "data=gs://b/i",
                    "--set", "trainer.epochs=9")[0] == 0  # fmt: skip
        assert len(stub.versions["pipeline-1"]) == 2 and len(stub.pipelines) == 1
        # Nothing to warn about with an image from a registry and a shared serving root.
        shared = ["--set", "pipeline.image=reg.example/vp:1", "--param", "serving_root=gs://b/s"]
        code, _, warnings = _cli(
            capsys, "submit", "--host", stub.url, "--param", "data=/d", *shared
        )
        assert code == 0 and warnings == []


def upload_version_id(stub):
    return stub.versions["pipeline-1"][-1]["pipeline_version_id"]


@pytest.mark.parametrize(("final", "code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_submit_wait_follows_the_run_to_its_end(capsys, final, code):
    with KfpStub(run_states=("PENDING", "RUNNING", final)) as stub:
        args = ["submit", "--host", stub.url, "--param", "data=/d", "--wait", "--poll-seconds", "0"]
        got, out, _ = _cli(capsys, *args)
        [run_id] = stub.runs
        assert got == code and out.splitlines()[-1].startswith(f"run {run_id} {final} after")
        assert stub.calls("GET")[-3:] == [("GET", f"{API}/runs/{run_id}")] * 3


def test_schedules_are_created_listed_paused_resumed_and_deleted(capsys):
    with KfpStub() as stub:
        host = ["--host", stub.url]
        cron = ["--cron", "0 3 * * *", "--param", "data=gs://bucket/images"]
        code, out, _ = _cli(capsys, "schedule", "create", *host, *cron, "--name", "nightly")
        assert code == 0
        [rid] = stub.recurring
        assert out.splitlines()[0] == f"recurring run {rid} (0 0 3 * * *, ENABLED)"
        body = stub.last("POST", f"{API}/recurringruns").body
        assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
        assert body["display_name"] == "nightly" and body["mode"] == "ENABLE"
        assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
        assert body["runtime_config"]["parameters"]["only_if_data_changed"] is True

        assert _cli(capsys, "schedule", "create", *host, *cron, "--force")[0] == 0
        forced = stub.last("POST", f"{API}/recurringruns").body
        assert forced["runtime_config"]["parameters"]["only_if_data_changed"] is False
        assert forced["display_name"] == "visionpipe-retrain"

        reasons = ["--retrain-when", "data_changed,drift"]
        assert _cli(capsys, "schedule", "create", *host, *cron, *reasons)[0] == 0
        drift = stub.last("POST", f"{API}/recurringruns").body["runtime_config"]["parameters"]
        assert drift["retrain_when"] == "data_changed,drift"
        posts = len(stub.calls("POST"))
        code, _, err = _cli(capsys, "schedule", "create", *host, *cron, "--retrain-when", "often")
        assert code == 2 and "pipeline.retrain_when" in err[0] and len(stub.calls("POST")) == posts

        code, out, _ = _cli(capsys, "schedule", "list", *host, "--json")
        assert code == 0 and [s["id"] for s in json.loads(out)] == sorted(stub.recurring)
        code, out, _ = _cli(capsys, "schedule", "list", *host, "--experiment", "visionpipe")
        assert code == 0 and out.splitlines()[0].split("\t")[:3] == [rid, "nightly", "0 0 3 * * *"]

        assert _cli(capsys, "schedule", "pause", rid, *host)[1] == f"recurring run {rid} paused\n"
        assert stub.recurring[rid]["status"] == "DISABLED"
        assert _cli(capsys, "schedule", "resume", rid, *host)[0] == 0
        assert stub.recurring[rid]["status"] == "ENABLED"
        assert _cli(capsys, "schedule", "delete", rid, *host)[0] == 0
        assert rid not in stub.recurring
        assert stub.calls()[-3:] == [
            ("POST", f"{API}/recurringruns/{rid}:disable"),
            ("POST", f"{API}/recurringruns/{rid}:enable"),
            ("DELETE", f"{API}/recurringruns/{rid}"),
        ]
        code, _, err = _cli(capsys, "schedule", "delete", rid, *host)
        assert code == 2 and err == [
            f"visionpipe: error: {stub.url}: delete recurring run {rid!r} failed: "
            f"HTTP 404 recurring run {rid} not found"
        ]


def test_a_token_from_the_environment_is_sent_as_a_bearer_token(capsys, monkeypatch):
    monkeypatch.setenv("VISIONPIPE_KFP_TOKEN", "s3cret")
    with KfpStub() as stub:
        assert _cli(capsys, "schedule", "list", "--host", stub.url)[0] == 0
        assert stub.requests[-1].headers["authorization"] == "Bearer s3cret"


def test_bad_input_gets_one_line_naming_it_before_any_request(capsys):
    [closed] = free_ports(1)  # free, so nothing listens there
    host = f"http://127.0.0.1:{closed}"
    code, _, err = _cli(capsys, "submit", "--host", host, "--param", "data=/d")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"visionpipe: error: cannot reach Kubeflow Pipelines at {host}: ")
    with KfpStub() as stub:
        cases = {
            ("schedule", "create", "--host", stub.url, "--cron", "0 3 * *"): "malformed cron",
            ("schedule", "create", "--host", stub.url, "--cron", "61 3 * * *"): "out of range",
            (
                "submit",
                "--host",
                stub.url,
                "--param",
                "epoch=3",
            ): "unknown pipeline parameter 'epoch'",
            ("submit", "--host", stub.url, "--param", "epochs=three"): "'epochs' takes integer",
            ("submit", "--host", stub.url): "needs a value for 'data'",
            ("submit", "--host", "ftp://example.com", "--param", "data=/d"): "http(s) URL",
        }
        for args, message in cases.items():
            code, _, err = _cli(capsys, *args)
            assert code == 2 and len(err) == 1 and message in err[0], (args, err)
        assert stub.requests == []
        code, _, err = _cli(capsys, "schedule", "list", "--host", stub.url, "--experiment", "nope")
        assert code == 2 and err == [
            f"visionpipe: error: no KFP experiment named 'nope' at {stub.url}"
        ]
