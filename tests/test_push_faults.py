"""Push killed between any two of its actions, then run again, ends as an uninterrupted push.

Each fault is a real `visionpipe push` process killed (SIGKILL) at a fault point
(`visionpipe.faults`): after the copy, after the rename, after the registration, between
the two alias moves. The rerun must leave the serving root and the registry as two
uninterrupted pushes do: versions 1 and 2 on disk, registry versions holding the same
digests, champion = the second model, previous = the first.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.push.push import version_digest
from pipelines.adapters import mlflow_tracking as tracking
from visionpipe import features as F
from visionpipe.layout import versions

NAME = "shapes"
POINTS = ["push.copied", "push.renamed", "push.registered", "push.previous_set"]

pytestmark = pytest.mark.processes  # each test kills a visionpipe process


def _models(trained, root: Path):
    """Two distinct models (different digests) and a blessing."""
    out = []
    for tag in ("a", "b"):
        model = root / f"model-{tag}"
        shutil.copytree(trained.model_uri, model)
        record = model / F.TRAINING_RECORD
        record.write_text(json.dumps({**json.loads(record.read_text()), "variant": tag}))
        out.append(str(model))
    blessing = root / "blessing"
    blessing.mkdir()
    (blessing / F.BLESSING_FILE).write_text(
        json.dumps({"blessed": True, "reason": "test", "candidate": {"accuracy": 0.9}})
    )
    return out, str(blessing)


def _push(home: Path, model: str, blessing: str, fault: str = "") -> int:
    env = {**os.environ, "VISIONPIPE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("VISIONPIPE_FAULT", None)
    if fault:
        env["VISIONPIPE_FAULT"] = fault
    args = [sys.executable, "-m", "pipelines.cli", "push", "--model", model]
    args += ["--blessing", blessing, "--set", f"push.model_name={NAME}"]
    args += ["--set", f"push.serving_root={home / 'serving'}"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300).returncode


def _state(home: Path) -> dict:
    """What servers and the registry see, by digest."""
    disk = {n: version_digest(uri) for n, uri in versions(str(home / "serving" / NAME)).items()}
    client = tracking.client(f"sqlite:///{home / 'mlflow.db'}")
    found = client.search_model_versions(f"name = '{NAME}'")
    registered = {int(v.version): v.tags.get("model_digest") for v in found}
    aliases = {}
    for alias in ("champion", "previous"):
        try:
            version = client.get_model_version_by_alias(NAME, alias)
            aliases[alias] = version.tags.get("model_digest")
        except Exception:  # noqa: BLE001 - no such alias
            aliases[alias] = None
    leftovers = [p.name for p in (home / "serving" / NAME).iterdir() if p.name.startswith(".")]
    return {
        "disk": sorted(disk.values()),
        "registered": sorted(registered.values()),
        "aliases": aliases,
        "leftovers": leftovers,
    }


@pytest.fixture(scope="module")
def first_pushed(trained, tmp_path_factory):
    """A home where model A was pushed without a fault, and model B ready to push."""
    root = tmp_path_factory.mktemp("faults")
    (a, b), blessing = _models(trained, root)
    home = root / "home"
    assert _push(home, a, blessing) == 0
    return home, a, b, blessing


@pytest.mark.parametrize("point", POINTS)
def test_a_push_killed_at_any_point_finishes_when_run_again(first_pushed, tmp_path, point):
    base, a, b, blessing = first_pushed
    home = tmp_path / "home"
    shutil.copytree(base, home)
    assert _push(home, b, blessing, fault=point) == -9  # killed there
    assert _push(home, b, blessing) == 0  # the rerun
    state = _state(home)
    digest_a = version_digest(str(base / "serving" / NAME / "1"))
    digest_b = next(d for d in state["disk"] if d != digest_a)
    assert state == {
        "disk": sorted([digest_a, digest_b]),
        "registered": sorted([digest_a, digest_b]),
        "aliases": {"champion": digest_b, "previous": digest_a},
        "leftovers": state["leftovers"],
    }
    # A crash mid-copy leaves only a hidden staging folder, which servers ignore.
    assert all(name.startswith(".tmp-") for name in state["leftovers"])
    assert _push(home, b, blessing) == 0 and _state(home) == state  # a third run: no change


def _rollback(home: Path, fault: str = "") -> int:
    env = {**os.environ, "VISIONPIPE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("VISIONPIPE_FAULT", None)
    if fault:
        env["VISIONPIPE_FAULT"] = fault
    args = [sys.executable, "-m", "pipelines.cli", "rollback", "--set", f"push.model_name={NAME}"]
    args += ["--set", f"push.serving_root={home / 'serving'}"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300).returncode


@pytest.fixture(scope="module")
def both_pushed(first_pushed, tmp_path_factory):
    """A home where A then B were pushed: champion B, previous A."""
    base, _, b, blessing = first_pushed
    home = tmp_path_factory.mktemp("both") / "home"
    shutil.copytree(base, home)
    assert _push(home, b, blessing) == 0
    return home


@pytest.mark.parametrize(
    "point", ["push.copied", "rollback.republished", "rollback.tagged", "rollback.champion_set"]
)
def test_a_rollback_killed_at_any_point_finishes_when_run_again(both_pushed, tmp_path, point):
    home = tmp_path / "home"
    shutil.copytree(both_pushed, home)
    before = _state(both_pushed)
    digest_a, digest_b = before["aliases"]["previous"], before["aliases"]["champion"]
    assert _rollback(home, fault=point) == -9
    assert _rollback(home) == 0
    state = _state(home)
    assert state["disk"] == sorted([digest_a, digest_b, digest_a])  # A republished once
    assert state["registered"] == before["registered"]
    assert state["aliases"] == {"champion": digest_a, "previous": digest_b}
