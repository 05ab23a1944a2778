"""Push in depth: registry tags, rollback, retention, bad targets, leftovers of a killed push.

Push's behaviour (``components.push.release``) runs on the in-memory registry here;
the CLI tests run it through the MLflow adapter, on this test's own store.
"""

import json
import os
import shutil
import time

import pytest

from components.push.push import PushTargetError
from components.push.release import release, rollback
from pipelines.cli import main
from pipelines.execute import run_step
from visionpipe import features as F
from visionpipe import registry
from visionpipe.config import load_config
from visionpipe.layout import versions
from visionpipe.registry import InMemoryRegistry

NAME = "shapes"


@pytest.fixture(autouse=True)
def _this_tests_store(isolated_home):
    """Every test has a home of its own, with its own MLflow store."""


def _client():
    """The MLflow client of this test's store."""
    from pipelines.adapters import mlflow_tracking as tracking

    return tracking.client(tracking.tracking_uri(load_config()))


def _blessed(tmp_path, accuracy=0.9):
    d = tmp_path / f"blessing-{accuracy}"
    d.mkdir(exist_ok=True)
    candidate = {"accuracy": accuracy, "macro_f1": accuracy, "log_loss": 0.3}
    (d / F.BLESSING_FILE).write_text(
        json.dumps({"blessed": True, "reason": "test", "candidate": candidate})
    )
    return str(d)


def _variant(trained, tmp_path, tag: str) -> str:
    """A distinct model (different content digest) with the same graph."""
    out = tmp_path / f"model-{tag}"
    if not out.exists():
        shutil.copytree(trained.model_uri, out)
        record = out / "assets.extra" / "training.json"
        data = json.loads(record.read_text())
        data["variant"] = tag
        record.write_text(json.dumps(data))
    return str(out)


def _config(tmp_path, *overrides):
    return load_config(
        overrides=[
            f"push.model_name={NAME}",
            f"push.serving_root={tmp_path / 'serving'}",
            *overrides,
        ]
    )


def _mlflow_registry():
    from pipelines.adapters.mlflow_registry import MlflowRegistry

    return MlflowRegistry(_client())


def _aliases(reg):
    return {
        alias: reg.version_by_alias(NAME, alias).version
        for alias in (registry.CHAMPION, registry.PREVIOUS)
        if reg.version_by_alias(NAME, alias) is not None
    }


def _push(reg, model, blessing, config):
    serving_root = config.push.serving_root
    return release(model, blessing, serving_root, NAME, reg, config.push.keep_versions).pushed


def test_push_registers_with_tags_and_moves_the_aliases(trained, tmp_path):
    reg, config = InMemoryRegistry(), _config(tmp_path)
    _push(reg, _variant(trained, tmp_path, "a"), _blessed(tmp_path), config)
    assert _aliases(reg) == {"champion": "1"}
    _push(reg, _variant(trained, tmp_path, "b"), _blessed(tmp_path, 0.95), config)
    assert _aliases(reg) == {"champion": "2", "previous": "1"}
    champion = reg.version_by_alias(NAME, registry.CHAMPION)
    assert champion.tags["test_accuracy"] == "0.950000"
    assert champion.tags["serving_version"] == "2" and champion.tags["model_digest"]
    assert {"pipeline_run_id", "data_fingerprint", "test_macro_f1"} <= set(champion.tags)


def test_rollback_republishes_the_previous_champion_as_the_newest_version(
    trained, tmp_path, capsys
):
    config = _config(tmp_path)
    a = run_step(
        "push", config, model=_variant(trained, tmp_path, "a"), blessing=_blessed(tmp_path)
    )
    run_step("push", config, model=_variant(trained, tmp_path, "b"), blessing=_blessed(tmp_path))
    args = ["rollback", "--set", f"push.serving_root={tmp_path / 'serving'}", "--model-name", NAME]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "champion": "1",
        "previous": "2",
        "serving_version": 3,
        "path": str(tmp_path / "serving" / NAME / "3"),
    }
    assert _aliases(_mlflow_registry()) == {"champion": "1", "previous": "2"}
    from components.push.push import version_digest

    assert version_digest(out["path"]) == a.pushed.digest
    assert main(args) == 0  # and back again: version 2's model as version 4
    assert _aliases(_mlflow_registry()) == {"champion": "2", "previous": "1"}
    assert sorted(versions(str(tmp_path / "serving" / NAME))) == [1, 2, 3, 4]


def test_rollback_without_a_previous_champion_fails_in_one_line(trained, tmp_path, capsys):
    model, blessing = _variant(trained, tmp_path, "a"), _blessed(tmp_path)
    run_step("push", _config(tmp_path), model=model, blessing=blessing)
    args = ["rollback", "--set", f"push.serving_root={tmp_path / 'serving'}", "--model-name", NAME]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to roll back to" in err
    assert _aliases(_mlflow_registry()) == {"champion": "1"}


def test_retention_keeps_the_newest_and_never_the_champion_or_previous(trained, tmp_path):
    reg, config = InMemoryRegistry(), _config(tmp_path, "push.keep_versions=2")
    root = str(tmp_path / "serving" / NAME)
    for tag in "abcd":
        _push(reg, _variant(trained, tmp_path, tag), _blessed(tmp_path), config)
    assert sorted(versions(root)) == [3, 4]
    # A rollback makes version 3's model champion (as 5); keep 1 must still keep the
    # previous champion (4) and the champion (5).
    rollback(str(tmp_path / "serving"), NAME, reg)
    keep_one = _config(tmp_path, "push.keep_versions=1")
    _push(reg, _variant(trained, tmp_path, "e"), _blessed(tmp_path), keep_one)
    # 6 is the champion, 5 the previous champion's newest copy; 3 (its older copy) goes.
    assert sorted(versions(root)) == [5, 6]


def test_a_push_target_that_is_not_writable_fails_before_any_work(trained, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model = _variant(trained, tmp_path, "a")
    args = ["push", "--model", model, "--blessing", _blessed(tmp_path)]
    assert main([*args, "--set", f"push.serving_root={blocker}/serving"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{blocker}/serving is not writable" in err
    client = _client()
    assert not client.search_registered_models()  # nothing registered
    with pytest.raises(PushTargetError):
        _push(
            InMemoryRegistry(),
            model,
            _blessed(tmp_path),
            _config(tmp_path, f"push.serving_root={blocker}/x"),
        )


def test_leftovers_of_a_killed_push_are_invisible_and_cleaned_later(trained, tmp_path):
    model_root = tmp_path / "serving" / NAME
    stale = model_root / ".tmp-1-deadbeef"
    (stale / "variables").mkdir(parents=True)  # what a push killed mid-copy leaves
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert versions(str(model_root)) == {}  # servers see no version
    reg = InMemoryRegistry()
    _push(reg, _variant(trained, tmp_path, "a"), _blessed(tmp_path), _config(tmp_path))
    assert sorted(p.name for p in model_root.iterdir()) == ["1"]


def test_a_push_crashing_mid_copy_leaves_no_version_and_the_alias_unchanged(
    trained, tmp_path, monkeypatch, crashing_copy
):
    from components.push import push as push_module

    reg, config = InMemoryRegistry(), _config(tmp_path)
    _push(reg, _variant(trained, tmp_path, "a"), _blessed(tmp_path), config)
    crash = crashing_copy(push_module.storage.copy_file, 3, "node lost power")
    monkeypatch.setattr(push_module.storage, "copy_file", crash)
    with pytest.raises(OSError, match="lost power"):
        _push(reg, _variant(trained, tmp_path, "b"), _blessed(tmp_path), config)
    assert sorted(versions(str(tmp_path / "serving" / NAME))) == [1]
    assert _aliases(reg) == {"champion": "1"}
    assert [p.name for p in (tmp_path / "serving" / NAME).iterdir()] == ["1"]
