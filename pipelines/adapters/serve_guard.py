"""MLflow's scoring server behind a request-body limit: what ``visionpipe serve`` runs.

``mlflow models serve`` (MLflow 3.17: uvicorn and FastAPI) reads a request's whole body
before the model sees it, and offers no limit on its size: ``--timeout`` and
``--workers`` are its options, and uvicorn's own limits are on connections and
requests, not bytes. So a few requests of a few hundred MB each are a memory problem
before any check of the model can run. ``BodyLimit`` is an ASGI middleware in front of
MLflow's own app (``mlflow.pyfunc.scoring_server``, unchanged): a ``Content-Length``
over the limit is answered 413 without a byte kept, and a body without one is kept only
up to the limit. A refused body is read and dropped before the answer (up to 16 times
the limit), so a client still sending gets the 413 rather than a reset connection.
Everything else is MLflow's: the routes, the JSON formats, the request timeout, the
pyfunc model's own row and request checks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

MAX_BODY_ENV = "VISIONPIPE_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 96 * 1024 * 1024  # predict.max_request_bytes as base64, and JSON

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: HTTP requests whose body is over ``max_bytes`` get 413."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Passes the request on, or refuses it by its declared or actual body size."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, more=True)  # first: after a response, no more body
            await self._refuse(send, int(declared))
            return
        messages, size = [], 0
        while True:  # read the body (up to the limit), then hand it on as it came
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
            if size > self.max_bytes:
                await self._drain(receive, more)
                await self._refuse(send, size)
                return
            if not more:
                break
        queue = iter(messages)

        async def replay() -> dict:
            return next(queue, None) or await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, more: bool) -> None:
        """Reads and drops the rest of a refused body (up to 16x the limit).

        So that a client still sending gets the 413 instead of a reset connection; a
        body longer than that is cut off (the connection closes).
        """
        left = 16 * self.max_bytes
        while more and left > 0:
            message = await receive()
            left -= len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps(
            {
                "error_code": "REQUEST_TOO_LARGE",
                "message": f"request body of {size} bytes or more is over this server's limit "
                f"of {self.max_bytes} bytes ({MAX_BODY_ENV})",
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app():
    """The scoring app of the model at ``$_SERVER_MODEL_PATH``, behind the body limit.

    A uvicorn factory (``--factory``): the environment is read when the server starts,
    not when this module is imported.
    """
    from mlflow.pyfunc import scoring_server

    from pipelines.adapters.mlflow_model import dropping_warnings

    # The pyfunc has no type hints on purpose (its signature is explicit): MLflow's
    # advice about them would be the first thing on the server's console.
    with dropping_warnings("type hints to the `predict` method"):
        model = scoring_server.load_model_with_mlflow_config(
            os.environ[scoring_server._SERVER_MODEL_PATH]
        )
    limit = int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES))
    return BodyLimit(scoring_server.init(model), limit)
