"""Components run in the runner's process: kfp.local's DAG and artifacts, no leaks between steps."""

import json

import pytest
from kfp import dsl, local

from pipelines.tasks import TaskRunner, task_runner


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def leave_state_behind() -> str:
    """Changes everything a step could leave to the next one."""
    import os

    import keras
    import numpy as np

    os.environ["VISIONPIPE_LEAK"] = "1"
    os.chdir("/")
    keras.utils.set_random_seed(0)
    keras.layers.Dense(1)  # Keras names layers from a global counter
    keras.mixed_precision.set_global_policy("mixed_float16")
    return str(np.random.default_rng().random())


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def look_for_state(previous: str) -> str:
    """What the previous step left, as JSON."""
    import json
    import os

    import keras
    import numpy as np

    return json.dumps(
        {
            "env": os.environ.get("VISIONPIPE_LEAK"),
            "cwd": os.getcwd(),
            "layer": keras.layers.Dense(1).name,
            "policy": keras.mixed_precision.global_policy().name,
            "numpy": float(np.random.rand()),
        }
    )


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail_loudly(previous: str) -> str:
    """A step that dies."""
    raise ValueError("the input is broken: 3 images have no label")


@dsl.pipeline
def two_steps() -> str:
    first = leave_state_behind()
    return look_for_state(previous=first.output).output


@dsl.pipeline
def failing() -> str:
    first = leave_state_behind()
    return fail_loudly(previous=first.output).output


@pytest.fixture
def kfp_local(tmp_path):
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )


def test_a_step_in_process_leaves_no_state_to_the_next(kfp_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    runner = TaskRunner("process", on_start=seen.append)
    with task_runner(runner):
        state = json.loads(two_steps().output)
    assert seen == ["leave-state-behind", "look-for-state"]
    assert state["env"] is None and state["cwd"] == str(tmp_path)
    assert state["layer"] == "dense" and state["policy"] == "float32"
    import numpy as np

    assert state["numpy"] != np.random.RandomState(0).rand()


def test_a_failing_step_in_process_fails_the_run_with_its_own_error(kfp_local):
    ended = []
    runner = TaskRunner("process", on_end=lambda step, ok: ended.append((step, ok)))
    with task_runner(runner), pytest.raises(RuntimeError, match="fail-loudly"):
        failing()
    assert ended == [("leave-state-behind", True), ("fail-loudly", False)]
    assert runner.errors == {
        "fail-loudly": "ValueError: the input is broken: 3 images have no label"
    }


@dsl.pipeline
def failing_alone() -> str:
    return fail_loudly(previous="nothing").output


def test_a_failing_step_in_a_subprocess_fails_the_run_with_its_own_error(kfp_local):
    runner = TaskRunner("subprocess")
    with task_runner(runner), pytest.raises(RuntimeError, match="fail-loudly"):
        failing_alone()
    assert runner.errors == {
        "fail-loudly": "ValueError: the input is broken: 3 images have no label"
    }


def test_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="Received: 'thread'"):
        TaskRunner("thread")
