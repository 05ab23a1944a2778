"""The ``visionpipe`` command line, one module per verb family.

- ``steps``: a verb per declared step (``components/<step>/spec.py``), derived;
- ``run``: the whole local run, ``compare`` and ``sample-data``;
- ``kfp``: ``compile``, ``submit`` and ``schedule``;
- ``serve``: a registered model over REST, behind a body limit.

Every verb takes ``--config FILE.yaml`` and repeatable ``--set section.key=value``; the
configuration is validated before any work starts, and so are the options that stand
for config keys (``--top-k`` is ``predict.top_k``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from visionpipe.config import load_config
from visionpipe.errors import UserError

log = logging.getLogger("visionpipe")

# How this CLI starts itself again: the processes of multi-worker training and tuning.
SELF = [sys.executable, "-m", "pipelines.cli"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``visionpipe`` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.self_command = SELF
    args.argv_without = lambda name: without_option(argv, name)
    _quiet_libraries()
    try:
        config = load_config(args.config, args.set or [])
        return args.handler(args, config) or 0
    except (UserError, FileNotFoundError) as err:  # the user's to fix: one line, no traceback
        print(f"visionpipe: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: the shared options, then each family's verbs."""
    from pipelines.cli import kfp, run, serve, steps

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE.yaml", help="YAML file with config sections")
    common.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set trainer.epochs=5",
    )
    parser = argparse.ArgumentParser(
        prog="visionpipe",
        description="Labelled images in, a tested, versioned, served classifier out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help_text, under=sub) -> argparse.ArgumentParser:
        p = under.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    run.add_sample_data(command)
    steps.add_verbs(command)
    run.add_verbs(command)
    run.add_schema(command, sub)
    serve.add_verbs(command)
    kfp.add_verbs(command, sub)
    return parser


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` or ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    # MLflow draws a tqdm bar per artifact download where tqdm is installed (cleanlab
    # brings it): a dozen lines of stderr for one champion download.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("absl", "tensorflow", "apache_beam", "alembic", "mlflow", "kfp", "keras_tuner"):
        logging.getLogger(name).setLevel(logging.WARNING)


def interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: unwind the run in progress the same way."""
    raise KeyboardInterrupt


INTERRUPT_GRACE_SECONDS = 30.0


def _interrupt_with_deadline(signum, frame) -> None:
    """Ctrl-C: unwind, but never hang.

    The steps mark their runs FAILED and the console says what was kept. A second
    Ctrl-C, or cleanup still running after the grace period, ends the process at once
    with 130: an interrupt that lands inside a library's critical section (a store
    write, a tf.data thread) must not keep the run alive.
    """
    import threading

    if getattr(_interrupt_with_deadline, "armed", False):
        os._exit(130)
    _interrupt_with_deadline.armed = True

    def give_up() -> None:
        sys.stderr.write(
            f"\nvisionpipe: cleanup after the interrupt took over {INTERRUPT_GRACE_SECONDS:.0f}"
            " s; exiting now\n"
        )
        sys.stderr.flush()
        os._exit(130)

    timer = threading.Timer(INTERRUPT_GRACE_SECONDS, give_up)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def entry() -> None:
    """The console script: ``main``, then an exit without interpreter finalization.

    With TensorFlow and Beam loaded, finalizing the interpreter (module teardown and
    the libraries' C++ destructors) took ~3 s after every command had finished. Output
    is flushed, logging shut down and exit handlers run first; only that teardown is
    skipped. Ctrl-C gets a deadline (``_interrupt_with_deadline``). Tests call ``main``
    and keep the normal exit.
    """
    import atexit

    signal.signal(signal.SIGINT, _interrupt_with_deadline)
    code = main()
    atexit._run_exitfuncs()  # MLflow's and Beam's exit handlers, as a normal exit runs them
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
