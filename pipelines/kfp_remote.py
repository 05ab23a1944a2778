"""Submitting and scheduling the pipeline on a Kubeflow Pipelines endpoint (``kfp.Client``).

Authentication is the KFP SDK's own, never a command-line flag: credentials saved in
``~/.config/kfp/context.json`` (cookies or a header), IAP or OAuth client ids in the
``KF_PIPELINES_*`` variables, a projected service-account token at
``$KF_PIPELINES_SA_TOKEN_PATH``, or a bearer token in ``$VISIONPIPE_KFP_TOKEN``.

Uploads are content-addressed: the pipeline is uploaded once under its name, and a new
version only when the compiled spec changed (the version is named after its digest).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import yaml

from visionpipe.errors import UserError

log = logging.getLogger(__name__)

TOKEN_ENV = "VISIONPIPE_KFP_TOKEN"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"  # the KFP SDK's name for a UI on another address
FINISHED = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


class KfpError(UserError):
    """The endpoint is unreachable, refused a request, or lacks what was named."""


@dataclass(frozen=True)
class Package:
    """A compiled pipeline: its file, name, digest, root parameters (types, defaults), images."""

    path: str
    name: str
    digest: str
    parameters: dict[str, str]
    required: tuple[str, ...]
    defaults: dict
    images: tuple[str, ...]

    @classmethod
    def read(cls, path: str) -> Package:
        """Reads a KFP IR YAML file written by ``visionpipe compile``."""
        with open(path, "rb") as f:
            raw = f.read()
        spec = yaml.safe_load(raw)
        inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        executors = spec.get("deploymentSpec", {}).get("executors", {}).values()
        return cls(
            path=path,
            name=spec["pipelineInfo"]["name"],
            digest=hashlib.sha256(raw).hexdigest(),
            parameters={k: v["parameterType"] for k, v in inputs.items()},
            required=tuple(
                k for k, v in inputs.items() if "defaultValue" not in v and not v.get("isOptional")
            ),
            defaults={k: v["defaultValue"] for k, v in inputs.items() if "defaultValue" in v},
            images=tuple(sorted({e["container"]["image"] for e in executors})),
        )

    def arguments(self, items: list[str], defaults: dict | None = None) -> dict:
        """``key=value`` strings as typed run arguments, checked against the parameters.

        Raises:
            KfpError: an unknown parameter, a value of the wrong type, or a required
                parameter without a value.
        """
        args = dict(defaults or {})
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise KfpError(f"--param takes key=value. Received: {item!r}")
            if key not in self.parameters:
                known = ", ".join(sorted(self.parameters))
                raise KfpError(f"unknown pipeline parameter {key!r}; the pipeline takes: {known}")
            args[key] = _typed(key, value, self.parameters[key])
        missing = [k for k in self.required if k not in args]
        if missing:
            raise KfpError(
                f"the pipeline needs a value for {missing[0]!r}: --param {missing[0]}=VALUE"
            )
        return args

    def cluster_warnings(self, arguments: dict) -> list[str]:
        """What will likely go wrong on a cluster with these arguments (it may still work)."""
        found = [
            f"image {image!r} names no registry: the cluster's nodes must already have it "
            "(set --set pipeline.image=REGISTRY/visionpipe:TAG)"
            for image in self.images
            if "/" not in image
        ]
        if "://" not in str(arguments.get("serving_root", self.defaults.get("serving_root"))):
            found.append(
                "serving_root is not shared storage: a pushed model would stay inside the push "
                "step's pod (set --param serving_root=gs://... or s3://...)"
            )
        return found


def _typed(key: str, value: str, kind: str):
    try:
        if kind == "NUMBER_INTEGER":
            return int(value)
        if kind == "NUMBER_DOUBLE":
            return float(value)
        if kind == "BOOLEAN":
            if value.lower() not in ("true", "false"):
                raise ValueError("not true or false")
            return value.lower() == "true"
    except ValueError as err:
        kind_name = kind.lower().replace("number_", "")
        raise KfpError(
            f"pipeline parameter {key!r} takes {kind_name}. Received: {value!r}"
        ) from err
    return value


@contextlib.contextmanager
def _calling(host: str, what: str) -> Iterator[None]:
    """Turns the SDK's API errors into one line naming the endpoint and the request.

    The SDK prints its own "details" links; they go to the log instead of stdout.
    """
    import kfp_server_api

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    except kfp_server_api.ApiException as err:
        raise KfpError(f"{host}: {what} failed: HTTP {err.status} {_message(err)}") from err
    except (OSError, ValueError) as err:  # connection dropped; "No experiment is found ..."
        raise KfpError(f"{host}: {what} failed: {err}") from err
    finally:
        for line in out.getvalue().splitlines():
            log.info("kfp: %s", line)


def _message(err) -> str:
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        return str(err.reason or "").strip()
    return str(body.get("message") or body.get("error") or err.reason or "").strip()


def check_reachable(host: str, timeout: float = 5.0) -> None:
    """Fails fast, with the host in the message, when nothing answers at ``host``."""
    url = urllib.parse.urlparse(host)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise KfpError(f"--host must be an http(s) URL of the KFP API. Received: {host!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise KfpError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from err


def connect(host: str, namespace: str | None = None):
    """A ``kfp.Client`` for ``host``, authenticated the SDK's way (see the module doc)."""
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    check_reachable(host)
    kwargs = {}
    if os.environ.get(TOKEN_ENV):
        kwargs["existing_token"] = os.environ[TOKEN_ENV]
    elif os.environ.get(KF_PIPELINES_SA_TOKEN_ENV):
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials()
    if namespace:
        kwargs["namespace"] = namespace
    with _calling(host, "connecting"):
        return kfp.Client(host=host, **kwargs)


def ui_link(host: str, kind: str, item_id: str) -> str:
    """The KFP UI's page of a run or recurring run."""
    base = (os.environ.get(UI_ENV) or host).rstrip("/")
    return f"{base}/#/{kind}/details/{item_id}"


def ensure_pipeline(client, host: str, package: Package) -> tuple[str, str]:
    """Creates the pipeline when missing, and uploads its spec as a version when new.

    Returns (pipeline id, version id). Versions are named ``<name>-<digest>``, so a
    spec uploaded before is found by name and not uploaded again.
    """
    import kfp_server_api

    version_name = f"{package.name}-{package.digest[:12]}"
    with _calling(host, f"finding pipeline {package.name!r}"):
        pipeline_id = client.get_pipeline_id(package.name)
    if pipeline_id is None:
        with _calling(host, f"creating pipeline {package.name!r}"):
            pipeline = kfp_server_api.V2beta1Pipeline(display_name=package.name)
            pipeline_id = client.pipelines.pipeline_service_create_pipeline(pipeline).pipeline_id
    equals = {"operation": "EQUALS", "key": "display_name", "stringValue": version_name}
    by_name = json.dumps({"predicates": [equals]})
    with _calling(host, f"listing versions of pipeline {package.name!r}"):
        found = client.list_pipeline_versions(pipeline_id, filter=by_name).pipeline_versions
    if found:
        return pipeline_id, found[0].pipeline_version_id
    with _calling(host, f"uploading version {version_name!r}"):
        version = client.upload_pipeline_version(
            package.path, version_name, pipeline_id=pipeline_id
        )
    return pipeline_id, version.pipeline_version_id


def experiment_id(client, host: str, name: str, create: bool) -> str:
    """The id of the KFP experiment ``name``; created when missing if ``create``."""
    if create:
        with _calling(host, f"creating experiment {name!r}"):
            return client.create_experiment(name).experiment_id
    try:
        with _calling(host, f"finding experiment {name!r}"):
            return client.get_experiment(experiment_name=name).experiment_id
    except KfpError as err:
        if "No experiment is found" in str(err):
            raise KfpError(f"no KFP experiment named {name!r} at {host}") from err
        raise


@dataclass(frozen=True)
class Submitted:
    """A run started on the endpoint."""

    run_id: str
    url: str
    pipeline_id: str
    version_id: str
    experiment_id: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def submit(client, host: str, package: Package, experiment: str, arguments: dict, run_name: str):
    """Uploads the pipeline (or a new version) and starts a run of it."""
    pipeline_id, version_id = ensure_pipeline(client, host, package)
    exp_id = experiment_id(client, host, experiment, create=True)
    with _calling(host, "starting the run"):
        run = client.run_pipeline(
            experiment_id=exp_id,
            job_name=run_name,
            params=arguments,
            pipeline_id=pipeline_id,
            version_id=version_id,
        )
    url = ui_link(host, "runs", run.run_id)
    return Submitted(run.run_id, url, pipeline_id, version_id, exp_id)


def wait(client, host: str, run_id: str, timeout: float, poll_seconds: float) -> str:
    """Follows a run until it finishes; returns its final state (``SUCCEEDED``, ...).

    Raises:
        KfpError: the run had not finished after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    state = ""
    while True:
        with _calling(host, f"reading run {run_id}"):
            now = str(client.get_run(run_id).state or "PENDING").upper()
        if now != state:
            log.info("run %s: %s", run_id, now)
            state = now
        if state in FINISHED:
            return state
        if time.monotonic() > deadline:
            raise KfpError(f"run {run_id} is still {state} after {timeout:.0f} s")
        time.sleep(poll_seconds)


@dataclass(frozen=True)
class Schedule:
    """A recurring run, as ``schedule list`` shows it."""

    id: str
    name: str
    cron: str
    status: str
    experiment_id: str
    created: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def create_schedule(
    client,
    host: str,
    package: Package,
    experiment: str,
    name: str,
    cron: str,
    arguments: dict,
) -> Schedule:
    """A KFP recurring run of the pipeline: one run at a time, no backfill."""
    pipeline_id, version_id = ensure_pipeline(client, host, package)
    exp_id = experiment_id(client, host, experiment, create=True)
    with _calling(host, f"creating recurring run {name!r}"):
        created = client.create_recurring_run(
            experiment_id=exp_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=arguments,
            pipeline_id=pipeline_id,
            version_id=version_id,
        )
    return _schedule(created)


def list_schedules(client, host: str, experiment: str | None = None) -> list[Schedule]:
    """Every recurring run (of one experiment when named), page by page."""
    exp_id = experiment_id(client, host, experiment, create=False) if experiment else None
    schedules, token = [], ""
    while True:
        with _calling(host, "listing recurring runs"):
            page = client.list_recurring_runs(page_token=token, page_size=100, experiment_id=exp_id)
        schedules += [_schedule(r) for r in page.recurring_runs or []]
        token = page.next_page_token
        if not token:
            return schedules


def change_schedule(client, host: str, action: str, recurring_run_id: str) -> None:
    """Pauses, resumes or deletes one recurring run."""
    call = {
        "pause": client.disable_recurring_run,
        "resume": client.enable_recurring_run,
        "delete": client.delete_recurring_run,
    }[action]
    with _calling(host, f"{action} recurring run {recurring_run_id!r}"):
        call(recurring_run_id)


def _schedule(run) -> Schedule:
    trigger = run.trigger
    cron = ""
    if trigger is not None and trigger.cron_schedule is not None:
        cron = trigger.cron_schedule.cron or ""
    return Schedule(
        id=run.recurring_run_id,
        name=run.display_name or "",
        cron=cron,
        status=str(run.status or run.mode or ""),
        experiment_id=run.experiment_id or "",
        created=str(run.created_at or ""),
    )
