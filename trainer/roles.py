"""Which part of a distributed job this process is, read from the environment alone.

Kept free of TensorFlow and Keras so that the step specs and the CLI can ask it
without importing them.
"""

from __future__ import annotations

import json
import os


def is_chief() -> bool:
    """Whether this process exports and logs: the chief, or worker 0 without a chief."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not has_chief


def tuner_role() -> str:
    """``standalone``, ``chief`` (serves the oracle) or ``worker`` (runs trials)."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    if not tuner_id:
        return "standalone"
    return "chief" if tuner_id == "chief" else "worker"
