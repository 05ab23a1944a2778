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


def test_only_this_projects_user_errors_are_read_from_a_traceback():
    from pipelines.tasks import user_error_in

    assert user_error_in("visionpipe.sources.DataError: /x: no images") == "/x: no images"
    assert user_error_in("ValueError: the input is broken") is None
    assert user_error_in("numpy.linalg.LinAlgError: singular") is None  # not ours
    assert user_error_in("pipelines.no_such_module.Error: x") is None
    assert user_error_in("visionpipe.sources.Source: not an exception") is None


def test_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="Received: 'thread'"):
        TaskRunner("thread")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail_once(counter: str) -> str:
    """Fails on its first attempt (a dropped connection), succeeds on the next."""
    import os

    attempts = len(os.listdir(counter)) + 1
    open(os.path.join(counter, str(attempts)), "w").close()
    if attempts == 1:
        raise ConnectionError("the object store dropped the connection")
    return f"attempt {attempts}"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def refuse_input(counter: str) -> str:
    """Fails on bad input (a ``UserError``), every time."""
    import os

    from visionpipe.sources import DataError

    open(os.path.join(counter, str(len(os.listdir(counter)) + 1)), "w").close()
    raise DataError("data/cats: 3 images have no label")


@dsl.pipeline
def retried(counter: str) -> str:
    task = fail_once(counter=counter)
    task.set_retry(num_retries=2, backoff_duration="0s")
    return task.output


@dsl.pipeline
def refused(counter: str) -> str:
    task = refuse_input(counter=counter)
    task.set_retry(num_retries=2, backoff_duration="0s")
    return task.output


def test_a_transient_failure_is_retried_as_set_retry_says_and_the_listener_hears_it(
    kfp_local, tmp_path
):
    events = []
    runner = TaskRunner(
        "process",
        retries={"fail-once": 2},
        on_end=lambda step, ok: events.append(("end", step, ok)),
        on_retry=lambda step, error, attempt, of: events.append(("retry", error, attempt, of)),
    )
    with task_runner(runner):
        assert retried(counter=str(tmp_path)).output == "attempt 2"
    assert events == [
        ("retry", "ConnectionError: the object store dropped the connection", 1, 2),
        ("end", "fail-once", True),
    ]
    assert runner.errors == {}


@pytest.mark.parametrize("isolation", ["process", "subprocess"])
def test_a_step_that_failed_on_bad_input_is_not_run_again_by_its_retries(
    kfp_local, tmp_path, isolation
):
    # In a process of its own, the UserError is read from the traceback's last line.
    ended = []
    runner = TaskRunner(
        isolation, retries={"refuse-input": 2}, on_end=lambda s, ok: ended.append((s, ok))
    )
    with task_runner(runner), pytest.raises(RuntimeError, match="refuse-input"):
        refused(counter=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1  # kfp asked three times; it ran once
    assert ended == [("refuse-input", False)]
    assert runner.errors == {"refuse-input": "data/cats: 3 images have no label"}
