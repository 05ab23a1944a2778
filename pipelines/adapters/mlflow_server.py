"""A local MLflow tracking server on PostgreSQL, with artifacts served by it (`make mlflow-server`).

PostgreSQL comes from the OS packages (``initdb``, ``pg_ctl``); its data directory,
the artifact store and the logs live under ``<VISIONPIPE_HOME>/mlflow-server``. Both
listen on 127.0.0.1 only, with trust authentication: a development server, not a
deployment (``infra/k8s/mlflow`` is that).

Usage: python -m pipelines.adapters.mlflow_server [--port 5001] [--db-port 5433] [--root DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from visionpipe.errors import UserError

DATABASE = "mlflow"


class PostgresNotFoundError(UserError, RuntimeError):
    """The PostgreSQL server programs are not installed."""


def postgres_bin() -> Path:
    """The directory of ``initdb`` and ``pg_ctl`` (on PATH, or Debian's versioned folder)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if versions:
        return Path(versions[-1]).parent
    raise PostgresNotFoundError(
        "PostgreSQL is not installed (no initdb): `make postgres` installs Debian's package"
    )


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the MLflow database."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> Postgres:
        """Initialises the cluster if needed, starts it and creates the database."""
        bin_dir = postgres_bin()
        user = _as_postgres()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(self.data_dir, "postgres", "postgres")
            _run([*user, str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8"])  # fmt: skip
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data_dir}"
        _run([*user, str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
              "-l", str(self.data_dir / "server.log"), "-w", "start"])  # fmt: skip
        exists = subprocess.run(
            [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not exists:
            _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", DATABASE])  # fmt: skip
        return self

    def stop(self) -> None:
        """Stops the cluster (fast shutdown)."""
        _run([*_as_postgres(), str(postgres_bin() / "pg_ctl"), "-D", str(self.data_dir),
              "-m", "fast", "-w", "stop"])  # fmt: skip


def server_command(backend_uri: str, artifacts_dir: Path, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1 with the given store and served artifacts."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend_uri,
        "--serve-artifacts", "--artifacts-destination", str(artifacts_dir),
        "--workers", "1",
    ]  # fmt: skip


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0):
    """Waits for the server's ``/health`` to answer.

    Raises:
        RuntimeError: ``process`` (the server) exited first.
        TimeoutError: no answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"MLflow server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"MLflow server at {url} did not come up in {timeout:.0f} s")


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    """Starts PostgreSQL and the MLflow server; stops PostgreSQL when the server exits."""
    from visionpipe.home import Home

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--db-port", type=int, default=5433)
    parser.add_argument("--root", default=str(Home.resolve().root / "mlflow-server"))
    args = parser.parse_args()
    root = Path(args.root).resolve()
    postgres = Postgres(root / "postgres", args.db_port).start()
    print(f"PostgreSQL on 127.0.0.1:{args.db_port}; MLflow on http://127.0.0.1:{args.port}")
    print(f"use it with: export MLFLOW_TRACKING_URI=http://127.0.0.1:{args.port}")
    # Stopped by Ctrl-C or by SIGTERM (a supervisor, `timeout`): stop both servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(server_command(postgres.uri, root / "artifacts", args.port))
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
