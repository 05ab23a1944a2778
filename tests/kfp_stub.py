"""A local HTTP stub of the Kubeflow Pipelines v2beta1 endpoints that visionpipe calls.

This is a contract test double, not a real server: it answers the requests that
``kfp.Client`` makes for upload, run creation, run state and recurring runs with the
JSON shapes of the KFP API, keeps just enough state for them to be consistent, and
records every request (method, path, query, JSON body or uploaded file) so a test can
assert the exact requests sent.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict = field(default_factory=dict)
    upload: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class KfpStub:
    """Start with ``with KfpStub() as stub:``; ``stub.url`` is the host to pass."""

    def __init__(self, run_states=("RUNNING", "SUCCEEDED")):
        self.requests: list[Request] = []
        self.run_states = list(run_states)  # what successive GETs of a run answer
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._reads: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> KfpStub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        """(method, path) of each request but the client's health checks."""
        return [
            (r.method, r.path)
            for r in self.requests
            if r.path != f"{API}/healthz" and (method is None or r.method == method)
        ]

    def last(self, method: str, path: str) -> Request:
        return [r for r in self.requests if r.method == method and r.path == path][-1]

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    # -- the endpoints ------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, dict]:
        method, path, q = request.method, request.path, request.query
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/pipelines"):
            name = _filtered_name(q)
            found = [p for p in self.pipelines.values() if name in (None, p["display_name"])]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/pipelines"):
            pipeline = {**request.body, "pipeline_id": self._new_id("pipeline")}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self.versions[pipeline["pipeline_id"]] = []
            return 200, pipeline
        if (method, path) == ("POST", f"{API}/pipelines/upload_version"):
            if q.get("pipelineid") not in self.pipelines:
                return 404, _error(f"pipeline {q.get('pipelineid')} not found")
            return 200, self._add_version(q["pipelineid"], q["name"])
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            versions = self.versions.get(path.split("/")[-2], [])
            name = _filtered_name(q)
            found = [v for v in reversed(versions) if name in (None, v["display_name"])]
            found = found[: int(q.get("page_size") or len(found) or 1)]
            return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
        if (method, path) == ("GET", f"{API}/experiments"):
            name = _filtered_name(q)
            found = [e for e in self.experiments.values() if name in (None, e["display_name"])]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {**request.body, "experiment_id": self._new_id("experiment")}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", f"{API}/runs"):
            run = {**request.body, "run_id": self._new_id("run"), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if method == "GET" and path.startswith(f"{API}/runs/"):
            run_id = path.rsplit("/", 1)[-1]
            if run_id not in self.runs:
                return 404, _error(f"run {run_id} not found")
            reads = self._reads[run_id] = self._reads.get(run_id, -1) + 1
            state = self.run_states[min(reads, len(self.run_states) - 1)]
            return 200, {**self.runs[run_id], "state": state}
        if path == f"{API}/recurringruns":
            if method == "POST":
                rid = self._new_id("recurring")
                made = {**request.body, "recurring_run_id": rid, "status": "ENABLED"}
                self.recurring[rid] = made
                return 200, made
            found = [
                r
                for r in self.recurring.values()
                if q.get("experiment_id") in (None, r["experiment_id"])
            ]
            return 200, {"recurringRuns": found, "total_size": len(found)} if found else {}
        if path.startswith(f"{API}/recurringruns/"):
            rid, _, action = path.rsplit("/", 1)[-1].partition(":")
            if rid not in self.recurring:
                return 404, _error(f"recurring run {rid} not found")
            if method == "DELETE":
                del self.recurring[rid]
            elif action in ("enable", "disable"):
                self.recurring[rid]["status"] = "ENABLED" if action == "enable" else "DISABLED"
            return 200, {}
        return 404, _error(f"no such endpoint: {method} {path}")

    def _add_version(self, pipeline_id: str, name: str) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._new_id("version"),
            "display_name": name,
        }
        self.versions[pipeline_id].append(version)
        return version

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                request = Request(
                    self.command,
                    url.path,
                    query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                kind = self.headers.get("Content-Type", "")
                if kind.startswith("multipart/form-data"):
                    request.upload = _uploaded_file(kind, raw)
                elif raw:
                    request.body = json.loads(raw)
                stub.requests.append(request)
                status, answer = stub.answer(request)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        return Handler


def _filtered_name(query: dict) -> str | None:
    if "filter" not in query:
        return None
    [predicate] = json.loads(query["filter"])["predicates"]
    return predicate.get("stringValue", predicate.get("string_value"))


def _uploaded_file(content_type: str, raw: bytes) -> bytes:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    [part] = [p for p in message.iter_parts() if p.get_filename()]
    return part.get_content()


def _error(message: str) -> dict:
    return {"error": message, "code": 5, "message": message}
