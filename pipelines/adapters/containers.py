"""The one place that talks to a container engine: Docker's API, served by Docker or Podman.

``visionpipe run --isolation container`` runs every component's command in the project
image through this module. It uses the ``docker`` SDK (what ``kfp.local.DockerRunner``
uses) against whichever engine answers:

1. ``$DOCKER_HOST``, when it is set;
2. Docker's own socket, when a Docker engine answers there;
3. Podman, started here for the run as ``podman system service`` on a socket of its own
   (stopped when the run ends), with a ``containers.conf`` written for this host next to
   the socket (``podman_conf_text``; the Makefile writes the same for ``make image``),
   unless ``$CONTAINERS_CONF`` names one already.

Why not ``kfp.local.DockerRunner``: in kfp 2.17 it mounts only the pipeline root (the
MLflow store, the serving root and the data live elsewhere), forces ``auto_remove`` and
reads a container that is already gone as exit 0 (a fast failure passes as SUCCESS),
finds images by exact tag only (Podman names local images ``localhost/...``), and never
calls the function the console and the retries hook into (``pipelines/tasks.py``). Here
the runner stays kfp.local's ``SubprocessRunner``; only the command's execution moves
into a container, which is created, followed and removed by this module.

The ``podman-conf`` command (``python3 -m pipelines.adapters.containers podman-conf PATH``)
needs nothing but the standard library: the Makefile writes the file with it before the
project's environment exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visionpipe.errors import UserError  # standard library only, as this module's top

CONF_ENV = "CONTAINERS_CONF"
DOCKER_SOCKET = "/var/run/docker.sock"
SERVICE_START_S = 30.0


class ContainerError(UserError):
    """No engine answers, or the image is not there: the message says which and what to do."""


# -- Podman's configuration -----------------------------------------------------------


def podman_conf_text() -> str:
    """A ``containers.conf`` for Podman on a machine like CI's, from this host's limits.

    - ``runc`` as the runtime where it is installed (Podman's default ``crun`` refuses the
      hybrid cgroups of such machines);
    - the containers' ``nofile`` and ``nproc`` limits equal to this process's soft limits
      (raising them is refused), ``nproc`` at most ``kernel.pid_max`` (runc refuses more);
    - cgroupfs (no systemd to manage cgroups) and a file events log (no journald).
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    pid_max_file = Path("/proc/sys/kernel/pid_max")
    pid_max = int(pid_max_file.read_text()) if pid_max_file.exists() else 32768
    if nproc == resource.RLIM_INFINITY or nproc > pid_max:
        nproc = pid_max
    if nofile == resource.RLIM_INFINITY:
        nofile = 1048576
    lines = [
        "[containers]",
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]',
        "[engine]",
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
    ]
    if shutil.which("runc"):
        lines.append('runtime = "runc"')
    return "\n".join(lines) + "\n"


def write_podman_conf(path: Path) -> Path:
    """Writes ``podman_conf_text()`` to ``path`` (its folder created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(podman_conf_text())
    return path


# -- The engine -----------------------------------------------------------------------


@dataclass
class Engine:
    """A connected engine: the SDK client, its name, and the Podman service started for it."""

    client: object
    name: str
    service: subprocess.Popen | None = None
    service_dir: str | None = None

    def close(self) -> None:
        """Closes the client and stops the Podman service this module started."""
        with contextlib.suppress(Exception):
            self.client.close()
        if self.service is not None:
            self.service.terminate()
            try:
                self.service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
            self.service = None
        if self.service_dir:
            shutil.rmtree(self.service_dir, ignore_errors=True)
            self.service_dir = None


def _answering(base_url: str):
    """An SDK client on ``base_url`` when the engine there answers a ping, else None."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=600)
        client.ping()
    except Exception:  # noqa: BLE001 - not answering, whatever the reason
        return None
    return client


def _engine_name(client) -> str:
    with contextlib.suppress(Exception):
        components = client.version().get("Components") or []
        if any("podman" in str(c.get("Name", "")).lower() for c in components):
            return "podman"
    return "docker"


def connect() -> Engine:
    """The first engine that answers (``$DOCKER_HOST``, Docker's socket, Podman).

    Raises:
        ContainerError: no engine answers, or Podman's service did not start.
    """
    host = os.environ.get("DOCKER_HOST")
    if host:
        client = _answering(host)
        if client is None:
            raise ContainerError(
                f"DOCKER_HOST={host}: no container engine answers there; start it "
                "(podman system service, or the Docker daemon) or unset DOCKER_HOST"
            )
        return Engine(client, _engine_name(client))
    if Path(DOCKER_SOCKET).exists():
        client = _answering(f"unix://{DOCKER_SOCKET}")
        if client is not None:
            return Engine(client, _engine_name(client))
    podman = shutil.which("podman")
    if podman is None:
        raise ContainerError(
            "--isolation container: no container engine here (DOCKER_HOST is not set, no "
            "Docker engine answers, no podman); install Docker, or podman and runc "
            "(Debian: apt-get install podman runc)"
        )
    return _start_podman(podman)


def _start_podman(podman: str) -> Engine:
    folder = tempfile.mkdtemp(prefix="visionpipe-podman-")  # a short path: sockets have 108
    conf = os.environ.get(CONF_ENV) or write_podman_conf(Path(folder) / "containers.conf")
    socket = Path(folder) / "api.sock"
    log = Path(folder) / "service.log"
    with log.open("wb") as out:
        service = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{socket}"],
            env={**os.environ, CONF_ENV: str(conf)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the run reaches it through close() only
        )
    deadline = time.monotonic() + SERVICE_START_S
    client = None
    while client is None and time.monotonic() < deadline and service.poll() is None:
        if socket.exists():
            client = _answering(f"unix://{socket}")
        if client is None:
            time.sleep(0.1)
    if client is None:
        service.kill()
        service.wait()
        said = log.read_text(errors="replace").strip().splitlines()[-1:] or ["nothing"]
        shutil.rmtree(folder, ignore_errors=True)
        raise ContainerError(
            f"--isolation container: podman system service did not start (it said: "
            f"{said[0]}); see what `podman info` says"
        )
    return Engine(client, "podman", service, folder)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """``connect()`` for the duration of a block."""
    connected = connect()
    try:
        yield connected
    finally:
        connected.close()


def find_image(connected: Engine, name: str) -> str:
    """The engine's name of image ``name``: as given, or Podman's ``localhost/`` form.

    Raises:
        ContainerError: neither is in the engine's images.
    """
    import docker

    candidates = [name]
    first = name.split("/", 1)[0]
    if "/" not in name or ("." not in first and ":" not in first and first != "localhost"):
        candidates.append(f"localhost/{name}")
    for candidate in candidates:
        try:
            connected.client.images.get(candidate)
        except docker.errors.ImageNotFound:
            continue
        return candidate
    raise ContainerError(
        f"image {name}: not in {connected.name}'s images (looked for "
        f"{' and '.join(candidates)}); build it with `make image IMAGE={name}`, or set "
        "pipeline.image to one that is there"
    )


# -- Running one command ----------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A host path bound at the same path inside the container."""

    path: str
    read_only: bool = False


@dataclass
class ContainerCommands:
    """Runs commands in ``image`` on ``engine``, with the host paths and settings a step needs.

    Every mount binds a host path at the same path, so the paths in a component's executor
    input, the config and the MLflow store mean the same inside and out. The container
    joins the host's network (an MLflow server or a Beam job service on loopback), runs
    as ``user`` (this process's uid:gid: files it writes belong to whoever ran the
    pipeline), and has the image's ``ENTRYPOINT`` replaced by the command's own.
    """

    engine: Engine
    image: str
    mounts: Sequence[Mount] = ()
    environment: dict[str, str] = field(default_factory=dict)
    user: str = field(default_factory=lambda: f"{os.getuid()}:{os.getgid()}")

    def run(self, command: list[str], env: dict[str, str], on_line: Callable[[str], None]) -> int:
        """Runs ``command`` in a new container; each output line to ``on_line``; its status.

        The container is removed afterwards, also when this is interrupted.
        """
        import docker

        environment = {**self.environment, **env}
        if self.user.split(":")[0] != "1000":  # the image's own user owns its HOME
            environment.setdefault("HOME", "/tmp")
        container = self.engine.client.containers.create(
            self.image,
            entrypoint=command[:1],
            command=command[1:],
            environment=environment,
            mounts=[
                docker.types.Mount(m.path, m.path, type="bind", read_only=m.read_only)
                for m in self.mounts
            ],
            network_mode="host",
            user=self.user,
            working_dir="/tmp",  # not a mounted folder: `python -m` puts it on sys.path
            detach=True,
        )
        try:
            container.start()
            for line in _lines(container.logs(stream=True, follow=True)):
                on_line(line)
            return int(container.wait().get("StatusCode", 1))
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines (with their newline) from a stream of byte chunks."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            yield line.decode("utf-8", errors="replace") + "\n"
    if pending:
        yield pending.decode("utf-8", errors="replace") + "\n"


# -- Building the image (make image) ----------------------------------------------------

# What a failed build's log says when the build could not reach a package index or a
# registry, and what to do then: (a pattern in the log, the one line make image prints).
UNREACHABLE = (
    (
        re.compile(r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError"),
        "the build's TLS to the package index was refused (an intercepting proxy?): pass its "
        "CA bundle with CA_BUNDLE=/path/to/ca.crt",
    ),
    (
        re.compile(
            r"Failed to establish a new connection|Temporary failure in name resolution|"
            r"Network is unreachable|Could not fetch URL|No matching distribution found|"
            r"Max retries exceeded|Connection refused"
        ),
        "the build could not reach the package index (pip); check the network or proxy "
        "($HTTPS_PROXY) of this machine, which the build shares",
    ),
    (
        re.compile(
            r"pinging container registry|manifest unknown|requested access to the "
            r"resource is denied|failed to resolve source metadata"
        ),
        "the build could not pull its base image; make base-image, then "
        "BASE_IMAGE=localhost/visionpipe-base:bookworm make image",
    ),
)
STEP_LINE = re.compile(r"^(STEP \d+/\d+: |#\d+ \[)")  # Podman's, BuildKit's plain progress


def diagnose(log_lines: Sequence[str]) -> tuple[str, bool]:
    """Why a build failed, in one line, and whether it could not reach a registry."""
    text = "".join(log_lines)
    for pattern, said in UNREACHABLE:
        if pattern.search(text):
            return said, True
    steps = [line.strip() for line in log_lines if STEP_LINE.match(line)]
    last = next((line.strip() for line in reversed(log_lines) if line.strip()), "no output")
    where = f" at {steps[-1][:80]}" if steps else ""
    return f"the build failed{where}: {last[:200]}", False


def build_image(args: list[str]) -> int:
    """``build ENGINE TAG EXTRAS BASE CA NETWORK LOG``: ``make image``'s build of one variant.

    The engine's whole output goes to LOG; the console gets its step lines. A failure is
    one line: exit 2 when the build could not reach a package index or a registry (with
    what to do), else 1 with the step and its last line.
    """
    engine, tag, extras, base, ca, network, log = args
    command = [engine, "build", "--network", network, "-f", "infra/Dockerfile"]
    command += ["--progress=plain"] if Path(engine).name == "docker" else []
    command += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"EXTRAS={extras}"]
    command += ["--secret", f"id=ca,src={ca}", "-t", tag, "."]
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with (
        open(log, "w") as out,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as process,
    ):
        for line in process.stdout:
            out.write(line)
            lines.append(line)
            if STEP_LINE.match(line):
                print(f"  {line.strip()[:110]}", flush=True)
        status = process.wait()
    if status == 0:
        return 0
    said, unreachable = diagnose(lines)
    print(f"make image: {tag}: {said} (full log: {log})", file=sys.stderr)
    return 2 if unreachable else 1


def main(argv: list[str] | None = None) -> int:
    """``podman-conf PATH`` (Podman's configuration for this host) or ``build ...``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "podman-conf":
        print(f"wrote {write_podman_conf(Path(args[1]))}")
        return 0
    if len(args) == 8 and args[0] == "build":
        return build_image(args[1:])
    print(
        "usage: python3 -m pipelines.adapters.containers podman-conf PATH\n"
        "       python3 -m pipelines.adapters.containers build ENGINE TAG EXTRAS BASE CA "
        "NETWORK LOG",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
