"""Tuning in depth: failed trials, continuing a search, distributed trials, MLflow records."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipelines.cli import main

REPO = Path(__file__).resolve().parent.parent


def _trial_runs(tracking_uri: str) -> list:
    client = mlflow.MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`visionpipe.kind` = 'trial'")


def _store() -> str:
    """This test's MLflow store (the configured one, in the test's home)."""
    from pipelines.adapters import mlflow_tracking as tracking
    from visionpipe.config import load_config

    return tracking.tracking_uri(load_config())


def _tune(transformed, out, *overrides):
    args = ["tune", "--transformed", str(Path(transformed.examples_uri).parent), "--out", str(out)]
    args += ["--set", "transform.image_size=16", "--set", "trainer.batch_size=8"]
    for item in ("tuner.epochs=1", "trainer.width=4", *overrides):
        args += ["--set", item]
    return args


def test_a_failing_trial_is_recorded_and_the_search_goes_on(transformed, tmp_path, capsys):
    # depth 6 halves 16 px six times: that model cannot be built, its trial fails.
    args = _tune(
        transformed, tmp_path / "t", "tuner.search_space={depth: [1, 6]}", "tuner.max_trials=2"
    )
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["best"]["depth"] == 1 and result["trials"] == 2
    runs = _trial_runs(_store())
    status = sorted((r.data.params["depth"], r.info.status) for r in runs)
    assert status == [("1", "FINISHED"), ("6", "FAILED")]
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert failed.data.tags["visionpipe.error"]


def test_a_rerun_continues_the_search_instead_of_repeating_trials(transformed, tmp_path, capsys):
    space = "tuner.search_space={learning_rate: [0.001, 0.002, 0.003, 0.004]}"
    first = _tune(transformed, tmp_path / "t", space, "tuner.max_trials=2")
    assert main(first) == 0
    best = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(_trial_runs(_store())) == 2
    assert main(first) == 0  # the same search again: nothing left to run
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["best"] == best["best"]
    assert len(_trial_runs(_store())) == 2
    more = _tune(transformed, tmp_path / "t", space, "tuner.max_trials=3")
    assert main(more) == 0  # a bigger budget: only the new trial runs
    assert len(_trial_runs(_store())) == 3


@pytest.mark.processes
def test_tuner_workers_run_trials_in_parallel_processes(transformed, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "VISIONPIPE_HOME": str(home), "PYTHONPATH": str(REPO)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    space = "tuner.search_space={learning_rate: [0.001, 0.002, 0.003, 0.004]}"
    args = _tune(transformed, tmp_path / "t", space, "tuner.max_trials=4")
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args, "--tuner-workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trials"] == 4 and (tmp_path / "t" / "hyperparameters.json").exists()
    runs = _trial_runs(f"sqlite:///{home / 'mlflow.db'}")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    workers = {r.data.tags["visionpipe.tuner_id"] for r in runs}
    assert workers <= {"tuner0", "tuner1"} and len(workers) == 2
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # all under the one tune step run


@pytest.mark.parametrize("bad", ["--tuner-workers=-1"])
def test_bad_tuner_worker_count_is_refused(transformed, tmp_path, bad, capsys):
    args = _tune(transformed, tmp_path / "t", "tuner.max_trials=1")
    assert main([*args, bad]) == 2
    assert "--tuner-workers" in capsys.readouterr().err
