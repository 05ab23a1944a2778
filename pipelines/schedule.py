"""Retraining on a schedule, on this machine: cron expressions and the local scheduler.

A cron expression is either the usual 5 fields (minute hour day-of-month month
day-of-week), 6 fields with seconds first (the format KFP's recurring runs take), or a
descriptor such as ``@daily``. The same expression drives a KFP recurring run
(``schedule create``) and the local scheduler (``schedule run-local``).

The local scheduler runs one pipeline run at a time, each in a process of its own, so
a failed or crashed run is logged and the schedule goes on. Triggers that fall while
a run is still going are not made up for; the next one after it is.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from visionpipe.errors import UserError

log = logging.getLogger(__name__)

DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
LOG_FILE = "schedule.jsonl"  # one line per trigger, under VISIONPIPE_HOME
RUN_LOGS = "schedule-runs"  # each triggered run's output
LOCK_FILE = "schedule.lock"  # one local scheduler per home


class CronError(UserError):
    """A cron expression that cannot be parsed; the message quotes it."""


class SchedulerBusyError(UserError):
    """Another local scheduler already runs on this VISIONPIPE_HOME."""


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression (5 fields, 6 with seconds first, or a descriptor)."""

    expression: str

    @classmethod
    def parse(cls, expression: str) -> Cron:
        """Validates ``expression``.

        Raises:
            CronError: wrong number of fields, or a field out of range.
        """
        from croniter import croniter

        text = " ".join(expression.split())
        fields = text.split(" ")
        if text.startswith("@"):
            if text not in DESCRIPTORS:
                raise CronError(
                    f"malformed cron expression {expression!r}: "
                    f"descriptors are {', '.join(DESCRIPTORS)}"
                )
        elif len(fields) not in (5, 6):
            raise CronError(
                f"malformed cron expression {expression!r}: expected 5 fields "
                "(minute hour day month weekday) or 6 with seconds first"
            )
        elif not croniter.is_valid(text, second_at_beginning=True):
            raise CronError(f"malformed cron expression {expression!r}: a field is out of range")
        return cls(text)

    @property
    def kfp(self) -> str:
        """The expression as KFP's recurring runs take it (6 fields, seconds first)."""
        if self.expression.startswith("@") or len(self.expression.split(" ")) == 6:
            return self.expression
        return f"0 {self.expression}"

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first time after ``moment`` that the expression matches."""
        from croniter import croniter

        return croniter(self.expression, moment, second_at_beginning=True).get_next(dt.datetime)


@dataclass(frozen=True)
class Outcome:
    """What one trigger did: ``trained``, ``skipped`` or ``failed``, and the details."""

    trigger: int
    at: str
    status: str
    detail: str
    seconds: float
    mlflow_run_id: str = ""

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


class LocalScheduler:
    """Calls ``run_once`` at each time ``cron`` matches, one call at a time.

    ``run_once`` returns (status, detail, mlflow run id); whatever it raises is logged
    as a failed trigger and the schedule goes on. ``clock`` and ``sleep`` are the
    scheduler's sense of time (``datetime.now`` and ``time.sleep`` by default).
    """

    def __init__(
        self,
        cron: Cron,
        run_once: Callable[[], tuple[str, str, str]],
        log_path: Path | None = None,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cron, self.run_once, self.log_path = cron, run_once, log_path
        self.clock, self.sleep = clock, sleep

    def run(self, max_runs: int | None = None) -> list[Outcome]:
        """Triggers until ``max_runs`` runs were triggered (forever when None)."""
        outcomes: list[Outcome] = []
        due = self.cron.next_after(self.clock())
        log.info("schedule %r: next run at %s", self.cron.expression, due.isoformat(" "))
        while max_runs is None or len(outcomes) < max_runs:
            self._sleep_until(due)
            outcomes.append(self._trigger(len(outcomes) + 1, due))
            now = self.clock()
            missed = self._missed(due, now)
            if missed:
                log.info("%d trigger(s) fell while the run was going; not made up for", missed)
            due = self.cron.next_after(now)
            log.info("next run at %s", due.isoformat(" "))
        return outcomes

    def _sleep_until(self, due: dt.datetime) -> None:
        while (left := (due - self.clock()).total_seconds()) > 0:
            self.sleep(min(left, 60.0))  # short naps: a changed wall clock is noticed

    def _trigger(self, number: int, due: dt.datetime) -> Outcome:
        started = time.monotonic()
        log.info("trigger %d (due %s): starting a pipeline run", number, due.isoformat(" "))
        try:
            status, detail, run_id = self.run_once()
        except Exception as err:  # noqa: BLE001 - a failed run must not end the schedule
            status, detail, run_id = "failed", f"{type(err).__name__}: {err}", ""
        outcome = Outcome(
            number, due.isoformat(), status, detail, round(time.monotonic() - started, 1), run_id
        )
        log.info("trigger %d %s in %.0f s: %s", number, status, outcome.seconds, detail)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(outcome.to_dict()) + "\n")
        return outcome

    def _missed(self, due: dt.datetime, now: dt.datetime) -> int:
        count, moment = 0, self.cron.next_after(due)
        while moment <= now and count < 1000:
            count, moment = count + 1, self.cron.next_after(moment)
        return count


class PipelineTrigger:
    """One local pipeline run in a process of its own: ``visionpipe run --json``.

    The run's output goes to ``<logs>/<time>-<pid>-<n>.log``; its summary (the last line) says
    whether it trained or stopped after the data check, and why. With ``monitor_log``,
    ``visionpipe monitor --since last`` first checks the champion on the log's records
    since its previous monitor run (a run of kind monitor, which the data check reads when
    ``retrain_when`` has ``drift``); a monitor that cannot run (no champion yet, no log)
    is noted in the trigger's detail and the pipeline runs all the same.
    """

    def __init__(
        self,
        data: str,
        cli_args: list[str],
        force: bool,
        logs: Path,
        monitor_log: str | None = None,
    ):
        self.command = [sys.executable, "-m", "pipelines.cli", "run", "--data", data, "--json"]
        self.command += cli_args + ([] if force else ["--only-if-data-changed"])
        self.monitor = None
        if monitor_log is not None:
            self.monitor = [sys.executable, "-m", "pipelines.cli", "monitor", "--log", monitor_log]
            self.monitor += ["--since", "last", "--json", *cli_args]
        self.logs = logs
        self.count = 0

    def __call__(self) -> tuple[str, str, str]:
        """Runs the pipeline once; returns (status, detail, MLflow run id)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.count += 1
        path = self.logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.count}.log"
        with open(path, "w") as out:
            watched = self._monitor(out)
            done = subprocess.run(self.command, stdout=subprocess.PIPE, stderr=out, text=True)
            out.write(done.stdout)
        if done.returncode != 0:
            errors = [line for line in path.read_text().splitlines() if line.strip()]
            last = errors[-1] if errors else f"exit status {done.returncode}"
            return "failed", f"{last} (log: {path})", ""
        from pipelines.local import RunSummary

        record = RunSummary.from_dict(json.loads(done.stdout.strip().splitlines()[-1])).record
        status, detail = outcome_of(record)
        return status, watched + detail, record.run_id

    def _monitor(self, out) -> str:
        """Runs the monitor first, when asked; its verdict in a few words (and ``; ``)."""
        if self.monitor is None:
            return ""
        done = subprocess.run(self.monitor, capture_output=True, text=True)
        out.write(done.stderr + done.stdout)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.strip()]
            last = errors[-1].removeprefix("visionpipe: error: ") if errors else "failed"
            return f"monitor could not run ({last}); "
        verdict = json.loads(done.stdout.strip().splitlines()[-1])
        return f"monitor: {verdict['reason']}; "


def outcome_of(record) -> tuple[str, str]:
    """``(status, detail)`` of a pipeline run's record, as a trigger reports it."""
    if record.skipped:
        return "skipped", record.data_check
    acc = record.test_accuracy
    pushed = record.pushed_version
    detail = f"trained for {record.retrain_trigger or 'a reason not recorded'}: "
    detail += f"test accuracy {acc:.4f}, " if acc is not None else ""
    detail += f"pushed version {pushed}" if pushed else "not pushed"
    return "trained", detail


class HomeLock:
    """Holds ``<home>/schedule.lock`` so that one local scheduler runs per home."""

    def __init__(self, home: Path):
        self.path = home / LOCK_FILE

    def __enter__(self) -> HomeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise SchedulerBusyError(
                f"a local scheduler already runs on {self.path.parent} (pid {holder})"
            ) from err
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
