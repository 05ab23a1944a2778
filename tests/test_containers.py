"""What a container run mounts and passes, and its errors where no engine answers.

No container is started here (tests/test_container_run.py runs them).
"""

import pytest

from pipelines.adapters import containers
from pipelines.adapters.containers import ContainerError, Mount
from pipelines.containers import data_mounts, local_path, mounts_for, passed_environment
from visionpipe.config import load_config
from visionpipe.home import Home


def test_local_paths_and_uris():
    assert local_path("/data/cats") == local_path("file:///data/cats")
    assert str(local_path("sqlite:////srv/mlflow.db")) == "/srv/mlflow.db"
    for remote in ("gs://bucket/x", "s3://bucket/x", "http://127.0.0.1:5000", ""):
        assert local_path(remote) is None


def test_the_home_and_outside_paths_are_mounted_once_each(tmp_path, tiny_dataset):
    home = Home(tmp_path / "home")
    config = load_config(
        overrides=[
            f"push.serving_root={tmp_path / 'serving'}",
            f"pipeline.cache_root={home.root / 'cache'}",  # inside the home: no mount
            f"validation.schema_uri={tmp_path / 'schemas' / 'schema.yaml'}",
        ]
    )
    mounts = mounts_for(str(tiny_dataset), config, home, "http://127.0.0.1:5000")
    assert set(mounts) == {
        Mount(str(home.root)),
        Mount(str(tmp_path / "serving")),
        Mount(str(tmp_path / "schemas"), read_only=True),
        Mount(str(tiny_dataset), read_only=True),
    }
    assert (tmp_path / "serving").is_dir()  # a mount's source must exist


def test_a_csv_mounts_its_folder_and_the_folder_of_its_images(tmp_path, tiny_dataset):
    csv = tmp_path / "lists" / "labels.csv"
    csv.parent.mkdir()
    csv.write_text(
        "path,label\n"
        f"{tiny_dataset / 'square' / 'square_00000.jpg'},square\n"
        f"{tiny_dataset / 'circle' / 'circle_00000.jpg'},circle\n"
    )
    assert set(data_mounts(str(csv))) == {
        Mount(str(csv.parent), read_only=True),
        Mount(str(tiny_dataset), read_only=True),
    }
    assert data_mounts("gs://bucket/images") == []


def test_credentials_and_settings_are_passed_and_nothing_else(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("UNRELATED_SECRET", "no")
    passed = passed_environment()
    assert passed["AWS_ACCESS_KEY_ID"] == "key" and "MLFLOW_TRACKING_URI" in passed
    assert "UNRELATED_SECRET" not in passed and "PATH" not in passed


def test_a_docker_host_that_does_not_answer_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    with pytest.raises(ContainerError, match="nothing.sock: no container engine answers"):
        containers.connect()


def test_no_engine_at_all_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman on it
    monkeypatch.setattr(containers, "DOCKER_SOCKET", str(tmp_path / "docker.sock"))
    with pytest.raises(ContainerError, match="no container engine here .* apt-get install"):
        containers.connect()
