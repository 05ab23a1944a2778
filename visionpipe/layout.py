"""The TF Serving layout: ``<serving_root>/<model_name>/<integer version>/saved_model.pb``.

Push writes it and the predictor reads it. A server loads the highest integer version
whose ``saved_model.pb`` exists; push writes that file last, so a version directory
with it is complete.
"""

from __future__ import annotations

import posixpath

from visionpipe import storage

READY_FILE = "saved_model.pb"


def versions(model_root: str, servable_only: bool = False) -> dict[int, str]:
    """Integer version directories under ``model_root``, by number.

    Args:
        model_root: ``<serving_root>/<model_name>``; missing means no versions.
        servable_only: keep only versions whose ``saved_model.pb`` exists (what a
            server would load); otherwise every integer-named directory.
    """
    if not storage.exists(model_root):
        return {}
    found = {}
    for uri in storage.listdir(model_root):
        name = posixpath.basename(uri.rstrip("/"))
        if not name.isdigit():
            continue
        if storage.exists(storage.join(uri, READY_FILE)) if servable_only else storage.isdir(uri):
            found[int(name)] = uri
    return found
