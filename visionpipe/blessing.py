"""The blessing contract between evaluate and push: ``blessing.json`` in evaluate's output.

Here in the core, so push (and anything else that reads a blessing) needs neither the
evaluate step's code nor TensorFlow.
"""

from __future__ import annotations

from visionpipe import features as F
from visionpipe import storage


def read_blessing(blessing_uri: str) -> dict:
    """The blessing written by ``run_evaluate``: ``blessed``, ``reason``, metrics, checks."""
    return storage.read_json(storage.join(blessing_uri, F.BLESSING_FILE))


def example_image(blessing_uri: str) -> bytes | None:
    """The test image evaluate kept next to the blessing, or None (an older blessing)."""
    path = storage.join(blessing_uri, F.EXAMPLE_IMAGE_FILE)
    return storage.read_bytes(path) if storage.exists(path) else None


def write_blessing(blessing_uri: str, blessing: dict) -> None:
    """Writes ``blessing.json`` under ``blessing_uri``."""
    storage.write_json(storage.join(blessing_uri, F.BLESSING_FILE), blessing)
