import json
import shutil

import pytest

from components.push import push as push_module
from components.push.push import NotBlessedError, run_push
from visionpipe import features as F
from visionpipe.layout import versions


def _blessing(tmp_path, blessed=True):
    d = tmp_path / ("blessed" if blessed else "rejected")
    d.mkdir(exist_ok=True)
    (d / F.BLESSING_FILE).write_text(
        json.dumps({"blessed": blessed, "reason": "test", "candidate": {"accuracy": 0.9}})
    )
    return str(d)


def test_push_writes_the_next_integer_version_whole(trained, tmp_path):
    root = tmp_path / "serving"
    result = run_push(trained.model_uri, _blessing(tmp_path), str(root), "shapes")
    assert result.version == 1 and not result.already_pushed
    version_dir = root / "shapes" / "1"
    assert (version_dir / "saved_model.pb").exists() and (version_dir / "variables").is_dir()
    assert [p.name for p in (root / "shapes").iterdir()] == ["1"]


def test_pushing_the_same_model_again_creates_no_new_version(trained, tmp_path):
    root = str(tmp_path / "serving")
    first = run_push(trained.model_uri, _blessing(tmp_path), root, "shapes")
    again = run_push(trained.model_uri, _blessing(tmp_path), root, "shapes")
    assert again.version == first.version and again.already_pushed
    assert list(versions(f"{root}/shapes")) == [1]


def test_a_different_model_becomes_the_next_version(trained, tmp_path):
    root = str(tmp_path / "serving")
    run_push(trained.model_uri, _blessing(tmp_path), root, "shapes")
    other = tmp_path / "other"
    shutil.copytree(trained.model_uri, other)
    (other / "assets.extra" / "training.json").write_text("{}")
    assert run_push(str(other), _blessing(tmp_path), root, "shapes").version == 2


def test_unblessed_model_is_refused(trained, tmp_path):
    with pytest.raises(NotBlessedError, match="not blessed"):
        run_push(trained.model_uri, _blessing(tmp_path, blessed=False), str(tmp_path / "s"), "m")
    assert not (tmp_path / "s").exists()


def test_crash_mid_copy_leaves_no_version_behind(trained, tmp_path, monkeypatch, crashing_copy):
    root = tmp_path / "serving"
    crash = crashing_copy(push_module.storage.copy_file, 2, "disk gone")
    monkeypatch.setattr(push_module.storage, "copy_file", crash)
    with pytest.raises(OSError, match="disk gone"):
        run_push(trained.model_uri, _blessing(tmp_path), str(root), "shapes")
    assert versions(str(root / "shapes")) == {}
    assert list((root / "shapes").iterdir()) == []  # no staging directory left either


def test_saved_model_pb_is_copied_last(trained, tmp_path, monkeypatch):
    order = []
    real_copy = push_module.storage.copy_file
    monkeypatch.setattr(
        push_module.storage,
        "copy_file",
        lambda s, d: (order.append(d.rsplit("/", 1)[-1]), real_copy(s, d)),
    )
    run_push(trained.model_uri, _blessing(tmp_path), str(tmp_path / "serving"), "shapes")
    assert order[-1] == "saved_model.pb"
