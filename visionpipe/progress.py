"""Progress of a step, for the console of a local pipeline run.

A step reports what it is doing (``report``) and its key figure when done (``done``).
The local runner (``pipelines/local.py``) reads these from the step's output stream,
where they are single lines behind ``MARKER``, and draws them; every other line of the
step goes to the run's log file. The same lines work when the step runs in the
runner's process and when it runs in a subprocess of its own, so there is one channel.

Nothing is written unless the runner asked for it (``ENV`` is set in the run's
environment): a step run on its own (``visionpipe train ...``) prints no such lines.
"""

from __future__ import annotations

import json
import os
import sys
import time

MARKER = "@@visionpipe-progress "
ENV = "VISIONPIPE_PROGRESS"


def enabled() -> bool:
    """Whether a local runner is listening."""
    return os.environ.get(ENV) == "1"


def report(step: str, message: str, fraction: float | None = None) -> None:
    """What ``step`` is doing now, e.g. ``epoch 3/14, val_accuracy 0.71``."""
    _emit({"step": step, "message": message, "fraction": fraction, "done": False})


def done(step: str, figure: str) -> None:
    """The key figure of a finished step, e.g. ``1500 images, 0 rejected``."""
    _emit({"step": step, "message": figure, "fraction": 1.0, "done": True})


def parse(line: str) -> dict | None:
    """The event in one output line, or None for an ordinary line."""
    at = line.find(MARKER)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(MARKER) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "step" in event else None


class Eta:
    """Estimated seconds left from the pace so far (items done of a total)."""

    def __init__(self, total: int) -> None:
        self._total = max(total, 1)
        self._started = time.monotonic()

    def left(self, done_items: int) -> float | None:
        """Seconds left after ``done_items``; None before the first."""
        if done_items <= 0:
            return None
        pace = (time.monotonic() - self._started) / done_items
        return pace * max(self._total - done_items, 0)


def _emit(event: dict) -> None:
    if not enabled():
        return
    sys.stderr.write(MARKER + json.dumps(event) + "\n")
    sys.stderr.flush()
