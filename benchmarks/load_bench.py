"""A load test of ``visionpipe serve`` on loopback: valid and hostile requests at once.

The server is MLflow's scoring server behind ``BodyLimit`` (``visionpipe serve``) on a
model trained here; ``clients`` threads send requests for ``seconds`` (or ``requests``
each, when given: the bounded form the tests use), each picking in turn from a mix of
valid images, batches, a decompression bomb among valid rows, rows that are not images,
empty requests, batches over the model's row limit and bodies over the server's byte
limit. Every answer is checked against what that kind must get; the server's peak
memory (VmHWM) and whether it is still up are read at the end. Traffic goes to
127.0.0.1 only, bounded in count and time.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tally:
    """Answers by request kind: status codes, wrong answers, latencies of valid ones."""

    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, problem: str, ms: float) -> None:
        """Records one answer."""
        with self.lock:
            codes = self.statuses.setdefault(kind, {})
            codes[status] = codes.get(status, 0) + 1
            if problem:
                self.wrong.append(f"{kind}: {problem}")
            if kind in ("valid", "batch"):
                self.latency_ms.append(ms)

    @property
    def total(self) -> int:
        """Requests answered."""
        return sum(sum(c.values()) for c in self.statuses.values())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def request_mix(good: bytes, bomb: bytes, max_rows: int, max_body: int) -> list[tuple]:
    """``(kind, body bytes, check)``; ``check(status, answer) -> problem`` ("" if right)."""

    def split(rows: list[str]) -> bytes:
        data = [[r] for r in rows]
        return json.dumps({"dataframe_split": {"columns": ["image"], "data": data}}).encode()

    def answered(n: int, errors: tuple[int, ...] = ()):
        def check(status: int, answer: dict) -> str:
            if status != 200:
                return f"status {status}: {str(answer)[:120]}"
            rows = answer.get("predictions", [])
            failed = tuple(i for i, r in enumerate(rows) if r.get("error"))
            if len(rows) != n or failed != errors:
                return f"{len(rows)} rows, errors at {failed}, expected {n} and {errors}"
            return ""

        return check

    def refused(code: int, text: str):
        def check(status: int, answer: dict) -> str:
            if status != code or text not in str(answer.get("message", "")):
                return f"status {status}, {str(answer)[:120]}; expected {code} with {text!r}"
            return ""

        return check

    good64 = _b64(good)
    return [
        ("valid", split([good64]), answered(1)),
        ("batch", split([good64] * 8), answered(8)),
        ("bomb among valid rows", split([good64, _b64(bomb), good64]), answered(3, (1,))),
        ("not an image", split([good64, _b64(b"not an image")]), answered(2, (1,))),
        ("empty request", split([]), answered(0)),
        ("over the row limit", split([good64] * (max_rows + 1)), refused(400, "request has")),
        ("over the body limit", b"{" + b" " * (max_body + 1) + b"}", refused(413, "over this")),
    ]


def _send(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raw = err.read() or b"{}"
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, {"message": raw[:200].decode(errors="replace")}


def run_load(url: str, mix: list[tuple], clients: int, seconds: float, requests: int = 0) -> Tally:
    """``clients`` threads sending the mix in turn, for ``seconds`` or ``requests`` each."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        sent = 0
        while (sent < requests) if requests else (time.monotonic() < deadline):
            kind, body, check = mix[(offset + sent) % len(mix)]
            started = time.perf_counter()
            try:
                status, answer = _send(url, body)
            except OSError as err:  # refused, reset: the server is not answering
                status, answer = 0, {"message": str(err)}
            ms = (time.perf_counter() - started) * 1000
            tally.add(kind, status, check(status, answer), ms)
            sent += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], env: dict, port: int, log_path: Path) -> subprocess.Popen:
    """Starts the server and waits (at most 240 s) until ``/ping`` answers."""
    server = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as ping:
                if ping.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the server did not come up: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


def peak_mb(pid: int) -> float:
    """The largest peak resident memory (VmHWM, MB) of a process and its descendants.

    ``mlflow models serve`` runs the model in a uvicorn child; ``visionpipe serve``'s
    server is the process itself.
    """
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            peak = int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            peak = max(peak, peak_mb(int(child)))
    return peak


def bench_load(work: Path, data: str, overrides: list[str]) -> list[tuple]:
    """Table rows (name, seconds, note).

    ``visionpipe serve`` with the hostile mix (1 client for 10 s, 16 for 30 s), then with
    valid requests only (16 clients, 20 s) next to the plain baseline, ``mlflow models
    serve`` itself, on the same valid requests.
    """
    from benchmarks.guard_bench import png_of_zeros
    from benchmarks.trainer_bench import prepare
    from pipelines.adapters.mlflow_model import guarded_serve_command
    from pipelines.execute import run_step
    from trainer.train import run_train
    from visionpipe import features as F

    work.mkdir(parents=True, exist_ok=True)
    os.environ["VISIONPIPE_HOME"] = str(work / "home")
    quick = [*overrides, "trainer.epochs=1", "trainer.min_steps=0"]
    config, examples, _ = prepare(work, data, quick)
    model = str(work / "model")
    run_train(examples, str(work / "t" / "transform_graph"), None, model, config)
    good = next(Path(data).rglob("*.jpg")).read_bytes()
    blessing = work / "blessing"
    blessing.mkdir(exist_ok=True)
    (blessing / F.BLESSING_FILE).write_text(json.dumps({"blessed": True, "candidate": {}}))
    (blessing / F.EXAMPLE_IMAGE_FILE).write_bytes(good)
    config = config.with_overrides([f"push.serving_root={work / 'serving'}"])
    run_step("push", config, model=model, blessing=str(blessing))
    png_of_zeros(work / "bomb.png")
    max_body = 8 * 1024 * 1024
    mix = request_mix(good, (work / "bomb.png").read_bytes(), 256, max_body)
    from pipelines.adapters.mlflow_model import serve_command
    from pipelines.adapters.mlflow_tracking import Tracking

    session = Tracking.open(config)
    champion = f"models:/{config.push.model_name}@champion"
    rows = []
    with tempfile.TemporaryDirectory(prefix="visionpipe-serve-") as tmp:
        version = session.registry().version_by_alias(config.push.model_name, "champion")
        model_dir = session.registry().download_model(version.name, version.version, tmp)
        port = free_port()
        argv, env = guarded_serve_command(model_dir, port, max_body_bytes=max_body)
        server = start_server(argv, env, port, work / "server.log")
        try:
            url = f"http://127.0.0.1:{port}/invocations"
            for clients, seconds in ((1, 10.0), (16, 30.0)):
                started = time.monotonic()
                tally = run_load(url, mix, clients, seconds)
                wall = time.monotonic() - started
                rows.append(_row(tally, clients, wall, server))
            valid = [m for m in mix if m[0] in ("valid", "batch")]
            rows.append(_row(run_load(url, valid, 16, 20.0), 16, 20.0, server, "valid only"))
        finally:
            alive = server.poll() is None
            server.terminate()
            server.wait(timeout=30)
    # The plain baseline: `mlflow models serve` itself, on the same valid requests.
    port = free_port()
    argv, env = serve_command(champion, session.uri, port)
    plain = start_server(argv, env, port, work / "plain-server.log")
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        valid = [m for m in mix if m[0] in ("valid", "batch")]
        tally = run_load(url, valid, 16, 20.0)
        rows.append(_row(tally, 16, 20.0, plain, "valid only, plain `mlflow models serve`"))
    finally:
        plain.terminate()
        plain.wait(timeout=30)
    rows.append(("load: server still up after both", 0.0, "yes" if alive else "NO"))
    return rows


def _row(
    tally: Tally, clients: int, wall: float, server: subprocess.Popen, what: str = "mixed"
) -> tuple:
    lat = sorted(tally.latency_ms)
    p50 = statistics.median(lat) if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
    kinds = "; ".join(
        f"{kind} " + "/".join(f"{n}x{code}" for code, n in sorted(codes.items()))
        for kind, codes in tally.statuses.items()
    )
    return (
        f"load: {clients} client(s), {wall:.0f} s, {what}",
        wall,
        f"{tally.total / wall:.1f} requests/s, valid p50 {p50:.0f} ms p99 {p99:.0f} ms, "
        f"{len(tally.wrong)} wrong answers, server peak {peak_mb(server.pid):.0f} MB; {kinds}",
    )
