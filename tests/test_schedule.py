"""Cron expressions and the local scheduler: triggers, skips, failures, one at a time."""

import datetime as dt
import json
import subprocess
import sys

import pytest

from pipelines.schedule import Cron, CronError, HomeLock, LocalScheduler, SchedulerBusyError


class Clock:
    """The scheduler's sense of time, advanced by its naps and by the runs it starts."""

    def __init__(self, start: dt.datetime):
        self.now = start
        self.naps: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


def test_cron_takes_five_fields_six_with_seconds_first_or_a_descriptor():
    assert Cron.parse("0 3 * * *").kfp == "0 0 3 * * *"
    assert Cron.parse("  30 0 3 * *   1-5 ").kfp == "30 0 3 * * 1-5"
    assert Cron.parse("@daily").kfp == "@daily"
    start = dt.datetime(2026, 11, 23, 5, 0, 0)
    assert Cron.parse("0 3 * * *").next_after(start) == dt.datetime(2026, 11, 24, 3, 0)
    assert Cron.parse("*/20 * * * * *").next_after(start) == dt.datetime(2026, 11, 23, 5, 0, 20)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("0 0 3 * * * 2026", "expected 5 fields"),
        ("61 3 * * *", "out of range"),
        ("0 3 * * mon-xyz", "out of range"),
        ("@every 1h", "descriptors are"),
    ],
)
def test_a_malformed_cron_expression_is_named(expression, message):
    with pytest.raises(CronError, match=message) as err:
        Cron.parse(expression)
    assert repr(expression) in str(err.value)


def test_the_scheduler_triggers_on_time_and_survives_a_failed_run(tmp_path):
    clock = Clock(dt.datetime(2026, 11, 23, 5, 0, 10))
    started: list[dt.datetime] = []
    answers = iter(
        [
            RuntimeError("ingest failed: disk full"),
            ("trained", "test accuracy 0.9100, pushed version 1", "run-2"),
            ("skipped", "data unchanged since run run-2", "run-3"),
        ]
    )

    def run_once():
        started.append(clock())
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    log = tmp_path / "schedule.jsonl"
    scheduler = LocalScheduler(Cron.parse("* * * * *"), run_once, log, clock, clock.sleep)
    outcomes = scheduler.run(max_runs=3)

    assert [o.status for o in outcomes] == ["failed", "trained", "skipped"]
    assert outcomes[0].detail == "RuntimeError: ingest failed: disk full"
    assert started == [dt.datetime(2026, 11, 23, 5, m) for m in (1, 2, 3)]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        o.to_dict() for o in outcomes
    ]
    assert outcomes[2].mlflow_run_id == "run-3"


def test_a_long_run_is_never_overlapped_and_missed_triggers_are_not_made_up(caplog):
    clock = Clock(dt.datetime(2026, 11, 23, 5, 0, 0))
    started = []

    def slow_run():
        started.append(clock())
        clock.now += dt.timedelta(seconds=150)  # the run outlasts two more triggers
        return "trained", "", ""

    scheduler = LocalScheduler(Cron.parse("* * * * *"), slow_run, None, clock, clock.sleep)
    with caplog.at_level("INFO", logger="pipelines.schedule"):
        scheduler.run(max_runs=2)
    assert started == [dt.datetime(2026, 11, 23, 5, 1), dt.datetime(2026, 11, 23, 5, 4)]
    assert "2 trigger(s) fell while the run was going" in caplog.text
    assert max(clock.naps) <= 60  # naps are short, so a changed wall clock is noticed


def test_one_local_scheduler_per_home(tmp_path):
    with HomeLock(tmp_path):
        with pytest.raises(SchedulerBusyError, match=f"already runs on {tmp_path}"):
            with HomeLock(tmp_path):
                pass
    with HomeLock(tmp_path):  # released on exit
        pass


@pytest.mark.processes
def test_run_local_keeps_going_when_every_run_fails(tmp_path, isolated_home):
    cmd = [sys.executable, "-m", "pipelines.cli", "schedule", "run-local"]
    cmd += ["--cron", "* * * * * *", "--max-runs", "2", "--data", str(tmp_path / "missing")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["status"] for o in outcomes] == ["failed", "failed"]
    assert all("missing" in o["detail"] and "log: " in o["detail"] for o in outcomes)
    assert "trigger 2 failed" in done.stderr
    assert len((isolated_home / "schedule.jsonl").read_text().splitlines()) == 2


def test_run_local_refuses_a_malformed_cron_before_starting(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["schedule", "run-local", "--cron", "* * *", "--data", str(tmp_path)]) == 2
    assert "malformed cron expression '* * *'" in capsys.readouterr().err


@pytest.mark.processes
def test_a_second_scheduler_on_the_same_home_is_refused_and_sigterm_stops_the_first(tmp_path):
    import signal

    cmd = [sys.executable, "-m", "pipelines.cli", "schedule", "run-local", "--cron", "@yearly"]
    cmd += ["--data", str(tmp_path)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # wait until it holds the lock and sleeps
            if "next run at" in line:
                break
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "a local scheduler already runs on" in second.stderr
        assert f"(pid {first.pid})" in second.stderr
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0 and out.strip() == "scheduler stopped"
