"""``visionpipe serve``: MLflow's scoring server behind a body limit, under a hostile load."""

import asyncio
import json
from pathlib import Path

import pytest

from pipelines.adapters.serve_guard import BodyLimit


def _call(app, body_parts: list[bytes], content_length: int | None):
    """Runs one HTTP request through an ASGI app; returns (status, body, what it received)."""
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers}
    incoming = [
        {"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1}
        for i, part in enumerate(body_parts)
    ]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, incoming


def _echo():
    seen = []

    async def app(scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app, seen


def test_a_body_within_the_limit_reaches_the_app_whole():
    inner, seen = _echo()
    status, body, _ = _call(BodyLimit(inner, 10), [b"12345", b"67890"], None)
    assert (status, body, seen) == (200, b"ok", [b"1234567890"])


@pytest.mark.parametrize("declared", [11, None])  # by its Content-Length, or as it streams
def test_a_body_over_the_limit_is_refused_with_413_and_never_reaches_the_app(declared):
    inner, seen = _echo()
    status, body, left = _call(BodyLimit(inner, 10), [b"123456", b"78901"], declared)
    assert status == 413 and seen == []
    assert "over this server's limit of 10 bytes" in json.loads(body)["message"]
    assert left == []  # the rest of the body was read (and dropped) before the answer


@pytest.mark.processes
def test_the_served_model_survives_a_hostile_load_and_answers_each_request_right(
    trained, tiny_dataset, tmp_path, monkeypatch
):
    from benchmarks.guard_bench import png_of_zeros
    from benchmarks.load_bench import free_port, peak_mb, request_mix, run_load, start_server
    from pipelines.adapters.mlflow_model import guarded_serve_command, save_mlflow_model

    good = next((Path(tiny_dataset) / "circle").glob("*.jpg")).read_bytes()
    model = save_mlflow_model(trained.model_uri, str(tmp_path / "mlflow-model"), good, "d")
    png_of_zeros(tmp_path / "bomb.png")
    port, max_body = free_port(), 2 * 1024 * 1024
    argv, env = guarded_serve_command(model, port, max_body_bytes=max_body)
    server = start_server(argv, env, port, tmp_path / "server.log")
    try:
        mix = request_mix(good, (tmp_path / "bomb.png").read_bytes(), 256, max_body)
        tally = run_load(
            f"http://127.0.0.1:{port}/invocations", mix, clients=4, seconds=0, requests=2 * len(mix)
        )
        assert tally.wrong == []
        assert tally.total == 4 * 2 * len(mix)
        assert tally.statuses["over the body limit"] == {413: 8}
        assert tally.statuses["over the row limit"] == {400: 8}
        assert server.poll() is None  # still up
        assert peak_mb(server.pid) < 2000  # the stated ceiling (README: about 0.9 GB)
    finally:
        server.terminate()
        server.wait(timeout=30)
