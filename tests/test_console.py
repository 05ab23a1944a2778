"""The console of a run: every finished step's line carries its key figure."""

import io
import os
import sys

from pipelines.console import OutputCapture, RunDisplay
from visionpipe import progress


def test_a_step_ended_right_after_its_figure_still_shows_the_figure(tmp_path, monkeypatch):
    # The figure arrives through the captured pipe, the end through a direct call: the
    # display waits for the pipe to be read before it prints the step's line.
    monkeypatch.setenv(progress.ENV, "1")
    shown = io.StringIO()
    capture = OutputCapture(str(tmp_path / "run.log"))
    with capture:
        # As in a real run, sys.stdout and sys.stderr reach fds 1 and 2 (pytest's
        # capture swaps them for its own files).
        monkeypatch.setattr(sys, "stdout", open(1, "w", closefd=False, buffering=1))
        monkeypatch.setattr(sys, "stderr", open(2, "w", closefd=False, buffering=1))
        display = RunDisplay(shown, ["ingest", "count-everything"], live=False, sync=capture.sync)
        capture.on_event = display.event
        for _ in range(50):  # each time, the end comes at once after the figure
            display.start("ingest")
            progress.done("ingest", "1650 images, 0 rejected, 0 duplicates")
            os.write(1, b"some library output\n")
            display.end("ingest", True)
    lines = shown.getvalue().splitlines()
    assert len(lines) == 50
    assert all(line.endswith("1650 images, 0 rejected, 0 duplicates") for line in lines)
    assert "some library output" in (tmp_path / "run.log").read_text()
    assert "@@visionpipe-sync" not in (tmp_path / "run.log").read_text()


def test_step_names_longer_than_the_column_keep_the_lines_aligned():
    shown = io.StringIO()
    display = RunDisplay(shown, ["ingest", "count-everything"], live=False)
    for step in ("ingest", "count-everything"):
        display.start(step)
        display.end(step, True)
    first, second = shown.getvalue().splitlines()
    assert first.index(" s") == second.index(" s")  # the seconds column lines up
