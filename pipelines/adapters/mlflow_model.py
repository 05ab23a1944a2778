"""The registered model as an MLflow Model: a pyfunc around the served SavedModel.

Push saves the pushed SavedModel (the very files of the TF Serving version) with
``pipelines/adapters/pyfunc_model.py`` as an MLflow Model: ``MLmodel`` with a signature, an
input example of real image bytes, the requirements (the locked versions of what the
wrapper imports) and the labels and preprocessing contract as metadata. So
``mlflow.pyfunc.load_model("models:/NAME@champion")``, ``mlflow models serve`` and
``build-docker`` work on the registry's versions.

Why a pyfunc wrapper rather than MLflow's ``tensorflow`` flavor: that flavor saves a
Keras model or ``tf.Module`` again (the files would differ from the pushed version's,
and so would the digest the registry and the serving root are reconciled by), and its
pyfunc hands the DataFrame's columns to the signature as they are, with no per-row
error for an image that cannot be decoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from importlib import metadata as importlib_metadata

from visionpipe import features as F
from visionpipe import storage
from visionpipe.layout import SAVED_MODEL_ARTIFACT, saved_model_in

log = logging.getLogger(__name__)

WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc_model.py")
# What the wrapper imports at serving time, pinned to the versions installed here (the lock).
REQUIREMENTS = ("mlflow", "tensorflow", "pandas", "numpy")


def requirements() -> list[str]:
    """``name==version`` of each package the wrapper needs, as installed from the lock."""
    return [f"{name}=={importlib_metadata.version(name)}" for name in REQUIREMENTS]


def model_metadata(saved_model_dir: str, digest: str) -> dict:
    """Labels and the preprocessing contract, from the model's training record."""
    record = storage.read_json(storage.join(saved_model_dir, F.TRAINING_RECORD))
    return {
        "visionpipe_model_digest": digest,
        "labels": record["labels"],
        "input": {
            "column": "image",
            "type": "encoded image bytes (JPEG, PNG, GIF, BMP or WebP); base64 strings over REST",
            "preprocessing": "inside the model: decode to RGB, resize, normalise",
        },
        "outputs": ["class_name", "class_id", "probability", "probabilities", "error"],
    }


def signature():
    """Input: ``image`` (binary). Output: class name, id, probability, all probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "class_name"),
                ColSpec(DataType.long, "class_id"),
                ColSpec(DataType.double, "probability"),
                ColSpec(Array(DataType.double), "probabilities"),
                ColSpec(DataType.string, "error", required=False),
            ]
        ),
    )


def save_mlflow_model(
    saved_model_dir: str,
    out_dir: str,
    example_image: bytes | None,
    digest: str,
    extra_files: dict[str, str] | None = None,
) -> str:
    """Writes the MLflow Model of a served SavedModel to ``out_dir`` (which must not exist).

    Args:
        saved_model_dir: the served SavedModel (``serving_default`` on image bytes).
        out_dir: a new local directory for the MLflow Model.
        example_image: encoded bytes of a real image for the input example, or None.
        digest: the model's content digest (also in the metadata).
        extra_files: files to add to the SavedModel's copy, as push adds them to the
            served one (path in the SavedModel -> source), e.g. the reference profile.
    """
    import pandas as pd

    example = None if example_image is None else pd.DataFrame({"image": [example_image]})
    if example is None:
        log.info("mlflow model: no example image next to the blessing; saved without one")
    # The signature is explicit (no type hints on predict by design: MLflow would then
    # check inputs by the hints, not the signature), and a missing example is logged
    # above. MLflow resets warning filters around these ("once"), so they are dropped
    # where they are shown instead.
    with dropping_warnings("type hints to the `predict` method", "input example was not provided"):
        from mlflow.pyfunc import save_model

        save_model(
            path=out_dir,
            python_model=WRAPPER,
            artifacts={SAVED_MODEL_ARTIFACT: saved_model_dir},
            signature=signature(),
            input_example=example,
            pip_requirements=requirements(),
            metadata=model_metadata(saved_model_dir, digest),
        )
    copied = saved_model_in(out_dir)  # where MLflow put its copy, as MLmodel records it
    for rel, source in (extra_files or {}).items():
        target = os.path.join(copied, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(storage.read_bytes(source))
    return out_dir


@contextlib.contextmanager
def dropping_warnings(*fragments: str) -> Iterator[None]:
    """Warnings whose text contains one of ``fragments`` are not shown; others are."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not any(fragment in str(message) for fragment in fragments):
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def serve_command(model_uri: str, tracking_uri: str, port: int, host: str = "127.0.0.1"):
    """The argv and environment of ``mlflow models serve`` for a model of this store.

    ``--env-manager local``: the server runs in this environment (it has the model's
    requirements), started by name (``uvicorn``) from this interpreter's ``bin``.
    """
    import sys

    bin_dir = os.path.dirname(sys.executable)
    argv = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri]
    argv += ["--env-manager", "local", "-h", host, "-p", str(port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return argv, env


SERVE_GUARD = "pipelines.adapters.serve_guard"


def guarded_serve_command(
    model_dir: str, port: int, host: str = "127.0.0.1", max_body_bytes: int | None = None
):
    """The argv and environment of MLflow's scoring server behind a body limit.

    ``model_dir`` is a local MLflow Model (``MlflowRegistry.download_model`` fetches a
    registry version); the server is uvicorn running ``SERVE_GUARD`` (MLflow's own app,
    unchanged, behind ``BodyLimit``), with MLflow's request timeout.
    """
    import sys

    from mlflow.pyfunc.scoring_server import _SERVER_MODEL_PATH

    from pipelines.adapters.serve_guard import DEFAULT_MAX_BODY_BYTES, MAX_BODY_ENV

    bin_dir = os.path.dirname(sys.executable)
    argv = [os.path.join(bin_dir, "uvicorn"), "--factory", f"{SERVE_GUARD}:create_app"]
    argv += ["--host", host, "--port", str(port), "--log-level", "warning"]
    env = {
        **os.environ,
        _SERVER_MODEL_PATH: model_dir,
        MAX_BODY_ENV: str(max_body_bytes or DEFAULT_MAX_BODY_BYTES),
    }
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return argv, env
