"""``visionpipe serve``: a registered model behind MLflow's scoring server, with a body limit."""

from __future__ import annotations

import subprocess
import sys
import tempfile

from pipelines.adapters.serve_guard import DEFAULT_MAX_BODY_BYTES
from visionpipe.config import Config, ConfigError


def add_verbs(command) -> None:
    """``serve``."""
    p = command(
        "serve",
        serve,
        "Serve a registered model over REST (MLflow's scoring server behind a body limit).",
    )
    p.add_argument(
        "--model",
        default="",
        metavar="MODELS_URI_OR_DIR",
        help="models:/NAME@ALIAS, models:/NAME/VERSION or an MLflow Model directory "
        "(default: models:/<push.model_name>@champion)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5002, help="port (default 5002)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=0,
        help="refuse request bodies over this size with 413 "
        f"(default: {DEFAULT_MAX_BODY_BYTES // 2**20} MiB)",
    )


def serve(args, config: Config) -> int:
    """Downloads the model, then runs the server in the foreground until Ctrl-C."""
    from pipelines.adapters.mlflow_model import guarded_serve_command
    from pipelines.adapters.mlflow_tracking import Tracking
    from visionpipe.registry import MODELS_SCHEME, resolve_version

    if args.max_body_bytes < 0 or not 0 < args.port < 65536:
        raise ConfigError(
            f"--port must be 1-65535 and --max-body-bytes 0 or more. "
            f"Received: {args.port}, {args.max_body_bytes}"
        )
    model = args.model or f"models:/{config.push.model_name}@champion"
    with tempfile.TemporaryDirectory(prefix="visionpipe-serve-") as tmp:
        model_dir = model
        if model.startswith(MODELS_SCHEME):  # RegistryError (one line) if it is not there
            registry = Tracking.open(config).registry()
            found = resolve_version(registry, model)
            model_dir = registry.download_model(found.name, found.version, tmp)
        argv, env = guarded_serve_command(
            model_dir, args.port, host=args.host, max_body_bytes=args.max_body_bytes or None
        )
        log_path = _log_path()
        url = f"http://{args.host}:{args.port}/invocations"
        print(f"serving {model} on {url}  (log: {log_path})", file=sys.stderr)
        with open(log_path, "a") as log:  # TensorFlow's and the server's own lines
            try:
                code = subprocess.run(argv, env=env, stdout=log, stderr=log).returncode
            except KeyboardInterrupt:
                return 0
        if code < 0:  # stopped from outside (SIGTERM, SIGKILL): not the server's fault
            print(f"server stopped by signal {-code}", file=sys.stderr)
            return 0
        if code:
            lines = [line for line in log_path.read_text().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {code}"
            print(
                f"visionpipe: error: the server stopped: {last}\nfull log: {log_path}",
                file=sys.stderr,
            )
        return code


def _log_path():
    import time

    from visionpipe.home import Home

    logs = Home.resolve().root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.log"
