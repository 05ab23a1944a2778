"""Fault-injection points: where a test kills the process between two actions.

``point("push.renamed")`` does nothing unless ``$VISIONPIPE_FAULT`` names that point,
in which case the process is killed there (SIGKILL: no cleanup, no ``finally``), as a
power cut or an OOM kill would. The crash tests start a real ``visionpipe`` process
with the variable set, then run the same command again and compare the end state with
an uninterrupted run's. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "VISIONPIPE_FAULT"


def point(name: str) -> None:
    """Kills this process if ``$VISIONPIPE_FAULT`` is ``name``."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
