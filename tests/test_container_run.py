"""The project image, built here, and the whole pipeline run in it: `--isolation container`.

The image is built once per content of what goes into it (`make test-image`: Dockerfile,
lock, project files, code), with Podman where no Docker engine answers; `make test`
installs Podman, runc and debootstrap (`make containers`). On a fresh machine the first
test to ask builds it (a Debian base from debootstrap, then the image: minutes); the
others wait for that build and reuse it.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.e2e, pytest.mark.container]


def _engine_here() -> bool:
    if os.environ.get("DOCKER_HOST") or shutil.which("podman"):
        return True
    return shutil.which("docker") is not None and (
        subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="session")
def image() -> str:
    """The test image's tag, built by `make test-image` unless it is there already."""
    if not _engine_here():
        pytest.skip("no container engine here")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["VISIONPIPE_HOME"] = str(REPO / ".visionpipe")
    lock = Path("/tmp") / f"visionpipe-test-image-{os.getuid()}.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # one build for all the test workers
        done = subprocess.run(
            ["make", "-s", "--no-print-directory", "test-image"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _run(data, home, *options):
    command = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(data), "--json"]
    for item in [*TINY_OVERRIDES, "pipeline.retry_backoff_s=0"]:
        command += ["--set", item]
    env = {**os.environ, "VISIONPIPE_HOME": str(home)}
    return subprocess.run(
        [*command, *options], env=env, capture_output=True, text=True, timeout=900
    )


def _steps(home: Path, run_id: str) -> dict[str, str]:
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    return {c.info.run_name: c.info.status for c in children}


def _step_lines(console: str) -> list[list[str]]:
    return [line.split()[:2] for line in console.splitlines() if line[:1] in "✓✗↻"]


def test_the_pipeline_in_containers_ends_as_it_does_in_process(tiny_dataset, tmp_path, image):
    in_process = _run(tiny_dataset, tmp_path / "in_process")
    assert in_process.returncode == 0, in_process.stderr[-3000:]
    contained = _run(
        tiny_dataset, tmp_path / "contained", "--isolation", "container",
        "--set", f"pipeline.image={image}",
    )  # fmt: skip
    assert contained.returncode == 0, contained.stderr[-3000:]
    ours, theirs = json.loads(contained.stdout), json.loads(in_process.stdout)

    # Same data, same splits, same outcome: a blessed model, pushed and registered.
    for key in ("data_fingerprint", "examples", "inputs", "rejected", "duplicates", "blessed"):
        assert ours[key] == theirs[key], key
    assert ours["pushed_version"] == 1 and ours["registered_version"] == "1"
    assert Path(ours["pushed_path"]).is_relative_to(tmp_path / "contained" / "serving")
    assert (Path(ours["pushed_path"]) / "saved_model.pb").is_file()

    # Every step ran (in its own container) and has its MLflow run, as in process.
    home = tmp_path / "contained"
    assert _steps(home, ours["mlflow_run_id"]) == _steps(
        tmp_path / "in_process", theirs["mlflow_run_id"]
    )
    # The same console: a line per step, in the same order.
    marks = [line.split()[:2] for line in contained.stderr.splitlines() if line[:1] in "✓✗↻"]
    assert marks == [
        line.split()[:2] for line in in_process.stderr.splitlines() if line[:1] in "✓✗↻"
    ]
    assert marks[0] == ["✓", "configure"] and ["✓", "push"] in marks

    # What the containers wrote belongs to whoever ran the pipeline.
    owners = {p.stat().st_uid for p in home.rglob("*")}
    assert owners == {os.getuid()}


def test_a_step_that_fails_in_its_container_shows_its_own_error_and_the_log(
    tiny_dataset, tmp_path, image
):
    schema = tmp_path / "elsewhere" / "schema.yaml"  # outside the home: mounted read-only
    schema.parent.mkdir()
    schema.write_text("classes: [circle\n")
    done = _run(
        tiny_dataset, tmp_path / "home", "--isolation", "container",
        "--set", f"pipeline.image={image}", "--set", f"validation.schema_uri={schema}",
    )  # fmt: skip
    assert done.returncode == 1
    said = done.stderr.strip().splitlines()
    # Its own words, as in process (not the traceback's class), tried once (bad input).
    assert said[-2] == (
        f"visionpipe: step validate failed: validation.schema_uri {schema}: not YAML (line 2)"
    )
    assert said[-1].startswith(f"full log: {tmp_path / 'home' / 'logs'}")
    assert sum(line.startswith("✗ validate") for line in said) == 1
    assert not any(line.startswith("↻ validate") for line in said)


def test_a_container_that_exits_0_without_running_the_component_fails_its_step(tmp_path, image):
    from pipelines.adapters import containers
    from pipelines.adapters.containers import ContainerCommands, Mount
    from pipelines.tasks import TaskRunner

    output = tmp_path / "ingest" / "executor_output.json"
    output.parent.mkdir()

    def command(script):
        executor_input = json.dumps({"outputs": {"outputFile": str(output)}})
        return ["sh", "-ec", script, "--executor_input", executor_input,
                "--function_to_execute", "ingest"]  # fmt: skip

    with containers.engine() as engine:
        run_in = ContainerCommands(
            engine, containers.find_image(engine, image), [Mount(str(tmp_path))]
        )
        runner = TaskRunner("container", containers=run_in)
        assert runner(command("exit 0")) == 1  # the trap kfp's DockerRunner falls into
        assert "exited 0 without writing the executor output" in runner.errors["ingest"]

        assert runner(command("echo the disk is full >&2; exit 3")) == 3
        assert runner.errors["ingest"] == "the disk is full"

        assert runner(command(f"echo '{{}}' > {output}")) == 0  # written in the container
        assert "ingest" not in runner.errors and output.stat().st_uid == os.getuid()


def test_the_image_runs_as_a_user_and_keeps_no_host_ca_credentials_or_paths(image):
    engine = "podman" if shutil.which("podman") else "docker"
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(REPO / ".visionpipe" / "podman" / "containers.conf"),
    }
    inspect = subprocess.run(
        [engine, "image", "inspect", image], capture_output=True, text=True, env=env, check=True
    )
    [meta] = json.loads(inspect.stdout)
    config = meta["Config"]
    assert config["User"] == "1000"
    assert config["Entrypoint"] == ["visionpipe"]
    history = subprocess.run(
        [engine, "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    assert not any(v.startswith(("PIP_CERT=", "REQUESTS_CA_BUNDLE=")) for v in config["Env"])
    baked = json.dumps(config) + history
    for local in (str(REPO), os.environ.get("HOME", "/root"), "BEGIN CERTIFICATE"):
        assert local not in baked, local

    # The host's CA bundle (which pip trusted during the build) is no file of the image.
    host = Path("/etc/ssl/certs/ca-certificates.crt")
    files = subprocess.run(
        [engine, "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
         "find / -xdev -type f \\( -name '*.crt' -o -name '*.pem' \\) -exec sha256sum {} +; "
         "ls -A /run/secrets 2>/dev/null | wc -l"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.splitlines()  # fmt: skip
    digests = {line.split()[0] for line in files[:-1]}
    assert files[-1].strip() == "0"  # no build secret left behind
    assert any(line.endswith("/etc/ssl/certs/ca-certificates.crt") for line in files[:-1])
    if host.is_file():
        assert hashlib.sha256(host.read_bytes()).hexdigest() not in digests or _same_as_debian()


def _same_as_debian() -> bool:
    """The host's bundle is Debian's own (no extra CA): then the same file is no leak."""
    extra = Path("/usr/local/share/ca-certificates")
    return not extra.is_dir() or not any(extra.rglob("*.crt"))


def test_a_build_that_cannot_reach_the_package_index_is_one_line_and_exit_2(image, tmp_path):
    # With no network the dependencies' layer cannot install (EXTRAS=dev is no layer
    # any other build caches); the base is the one the test image was built on.
    base = "localhost/visionpipe-base:bookworm"
    engine = "podman" if shutil.which("podman") else "docker"
    if subprocess.run([engine, "image", "inspect", base], capture_output=True).returncode:
        base = "python:3.11-slim"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "image", "IMAGE=visionpipe-test:offline",
         "IMAGE_EXTRAS=dev", f"BASE_IMAGE={base}", "BUILD_NETWORK=none",
         f"VISIONPIPE_HOME={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    said = [
        line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]
    assert said == [
        "make image: visionpipe-test:offline: the build could not reach the package index "
        "(pip); check the network or proxy ($HTTPS_PROXY) of this machine, which the build "
        f"shares (full log: {tmp_path}/logs/image-visionpipe-test_offline.log)"
    ]
    assert "STEP" in done.stdout  # the steps as they went
