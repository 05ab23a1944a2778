"""The console of a local run: one live line per step, everything else in a log file.

``OutputCapture`` points this process's stdout and stderr (the file descriptors, so
TensorFlow's C++ logging, Beam and subprocesses are caught too) at a pipe; a thread
writes every line to the run's log file and hands progress lines
(``visionpipe.progress``) to the display. ``RunDisplay`` draws the steps: a live table
with ``rich`` on a terminal, or one plain line per finished step otherwise (CI, the
scheduler's logs).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from visionpipe import progress

_SYNC_PREFIX = "@@visionpipe-sync "
_MARKS = {
    "waiting": "·",
    "running": "▶",
    "done": "✓",
    "failed": "✗",
    "skipped": "–",
    "retrying": "↻",
}


@dataclass
class StepLine:
    """What the console shows of one step."""

    name: str
    state: str = "waiting"
    started: float | None = None
    seconds: float | None = None
    message: str = ""
    fraction: float | None = None

    def elapsed(self) -> float:
        """Seconds run so far, or in all once finished."""
        if self.seconds is not None:
            return self.seconds
        return time.monotonic() - self.started if self.started else 0.0


class RunDisplay:
    """The steps of one run, drawn live on a terminal or as plain lines otherwise."""

    def __init__(
        self,
        stream: TextIO,
        steps: list[str],
        live: bool | None = None,
        sync: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        self.sync = sync  # waits until every line written so far has been read
        self.live = stream.isatty() if live is None else live
        self.steps = {name: StepLine(name) for name in steps}  # pipeline.pipeline_steps
        self.width = max([11, *(len(name) for name in steps)])
        self.current: str | None = None
        self._lock = threading.Lock()
        self._live = None

    def __enter__(self) -> RunDisplay:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            # Not rich's own stdout/stderr redirection: the steps' output belongs to the
            # log (OutputCapture), and progress lines must reach the capture's pipe.
            self._live = Live(
                self,
                console=console,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            for line in self.steps.values():
                if line.state == "waiting":
                    line.state = "skipped"
        if self._live is not None:
            self._live.__exit__(*exc)

    def start(self, step: str) -> None:
        """A step began."""
        with self._lock:
            line = self._line(step)
            line.state, line.started, line.seconds = "running", time.monotonic(), None
            self.current = step

    def end(self, step: str, ok: bool) -> None:
        """A step ended; in plain mode its line is printed now."""
        self.sync()  # the step's last progress line first: its figure belongs on its line
        with self._lock:
            line = self._line(step)
            line.state = "done" if ok else "failed"
            line.seconds = line.elapsed()
            self.current = None if self.current == step else self.current
        if not self.live:
            self.stream.write(self.plain(line, self.width) + "\n")
            self.stream.flush()

    def retry(self, step: str, error: str, attempt: int, retries: int) -> None:
        """A step failed and will be run again; in plain mode that is a line of its own."""
        self.sync()
        with self._lock:
            line = self._line(step)
            line.state, line.seconds = "retrying", line.elapsed()
            line.message = f"{error or 'failed'}; retry {attempt} of {retries}"
            shown = self.plain(line, self.width)
        if not self.live:
            self.stream.write(shown + "\n")
            self.stream.flush()

    def event(self, event: dict) -> None:
        """A progress event from a step (``visionpipe.progress``)."""
        with self._lock:
            line = self._line(str(event["step"]))
            line.message = str(event.get("message", ""))
            line.fraction = event.get("fraction")

    def _line(self, step: str) -> StepLine:
        return self.steps.setdefault(step, StepLine(step))

    @staticmethod
    def plain(line: StepLine, width: int = 11) -> str:
        """One step as a line of text, its name padded to ``width``."""
        seconds = f"{line.elapsed():6.1f} s" if line.started else " " * 8
        return f"{_MARKS[line.state]} {line.name:<{width}} {seconds}  {line.message}".rstrip()

    def __rich__(self):
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        with self._lock:
            for line in self.steps.values():
                seconds = f"{line.elapsed():6.1f} s" if line.started else ""
                style = {
                    "failed": "red",
                    "done": "green",
                    "running": "bold",
                    "retrying": "yellow",
                }.get(line.state, "dim")
                text = line.message
                if line.state == "running" and line.fraction is not None:
                    text = f"{_bar(line.fraction)} {text}"
                table.add_row(
                    f"[{style}]{_MARKS[line.state]}", f"[{style}]{line.name}", seconds, text
                )
        return table


def _bar(fraction: float, width: int = 12) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * filled + "░" * (width - filled)


class OutputCapture:
    """Sends this process's stdout and stderr to ``log_path`` while the block runs.

    Lines carrying a progress event go to ``on_event`` (assignable once the display
    exists); with ``echo``, every other line is also written to the original stdout
    (``--verbose``). ``console`` is the original
    stdout (or stderr with ``console_fd=2``), for the display.
    """

    def __init__(self, log_path: str, echo: bool = False, console_fd: int = 1) -> None:
        self.log_path = log_path
        self.on_event: Callable[[dict], None] = lambda event: None
        self._echo = echo
        self._echo_to: TextIO | None = None
        self._console_fd = console_fd
        self._saved: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._marks: dict[str, threading.Event] = {}
        self.console: TextIO = sys.stdout

    def __enter__(self) -> OutputCapture:
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.console = os.fdopen(os.dup(self._console_fd), "w", buffering=1, encoding="utf-8")
        self._echo_to = (
            os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8") if self._echo else None
        )
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = self._saved
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        self._thread.join(timeout=10)
        if self._echo_to is not None:
            self._echo_to.close()

    def sync(self) -> None:
        """Returns once the pump has read every line written before the call.

        A step's progress line and the runner's "step ended" arrive by different paths
        (the pipe, a direct call); without this the line could be drawn before the
        pump had read the step's key figure, and show the step with none. It waits for
        as long as the pump takes (no deadline a loaded machine could miss), and no
        longer than the pump lives.
        """
        if self._thread is None or not self._thread.is_alive():
            return
        mark = f"{_SYNC_PREFIX}{uuid.uuid4().hex}"
        seen = self._marks[mark] = threading.Event()
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, f"{mark}\n".encode())
        while not seen.wait(0.5) and self._thread.is_alive():
            pass
        self._marks.pop(mark, None)

    def _pump(self, read_end: int) -> None:
        with (
            open(read_end, encoding="utf-8", errors="replace") as pipe,
            open(self.log_path, "a", encoding="utf-8") as log,
        ):
            for line in pipe:
                if line.startswith(_SYNC_PREFIX):
                    event = self._marks.get(line.strip())
                    if event is not None:
                        event.set()
                    continue
                log.write(line)
                log.flush()
                try:
                    event = progress.parse(line)
                    if event is not None:
                        self.on_event(event)
                    elif self._echo_to is not None:
                        self._echo_to.write(line)
                except Exception:  # noqa: BLE001 - the pump must never stop reading
                    pass


def format_summary(summary, steps: list[str], ui_hint: str, page: str = "") -> str:
    """The lines after a run: its verdict, then each step's summary lines, then MLflow.

    ``steps`` are the pipeline's steps in order; each contributes the lines its spec's
    ``summary`` gives for the run's record (``components/<step>/spec.py``). ``page`` is
    the run's page in the MLflow UI, when known.
    """
    from pipelines import catalog

    record = summary.record
    declared = catalog.all_steps()
    rows = [
        row
        for name in steps
        if name in declared and declared[name].summary is not None
        for row in declared[name].summary(record)
    ]
    if record.skipped:
        head = f"visionpipe run skipped after ingest in {summary.wall_seconds:.0f} s"
    else:
        head = f"visionpipe run {record.status.lower()} in {summary.wall_seconds:.0f} s"
    rows.append(("MLflow run", record.run_id))
    if not record.skipped:
        rows.append(("MLflow UI", ui_hint))
    if page:
        rows.append(("run page", page))
    return "\n".join(["", head, *(f"  {label:<11} {text}" for label, text in rows)])
