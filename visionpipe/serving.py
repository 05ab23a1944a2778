"""Using a served model: find it, classify image files, answer TF Serving REST payloads.

All preprocessing is inside the SavedModel (``serving_default`` on raw bytes); this
module only moves bytes in and results out.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from visionpipe import features as F
from visionpipe import layout, storage
from visionpipe.errors import UserError
from visionpipe.registry import MODELS_SCHEME, Registry, RegistryError, download_uri

MODEL_LOCATIONS = (
    "SavedModel directory, a model folder of a serving root (highest version), "
    "or models:/NAME@ALIAS or models:/NAME/VERSION from the MLflow registry"
)


def add_model_argument(parser) -> None:
    """``--model``: any location ``resolve_model`` takes (the verbs that use a model)."""
    parser.add_argument(
        "--model", required=True, metavar="PATH_OR_MODELS_URI", help=MODEL_LOCATIONS
    )


class ModelNotFoundError(UserError, ValueError):
    """The model location does not hold a SavedModel."""


def resolve_model(model: str, dst_dir: str, registry: Registry | None = None) -> str:
    """A SavedModel directory for a model location.

    Args:
        model: a SavedModel directory; a model's folder in a serving root (its highest
            integer version is taken, as TF Serving does); or an MLflow registry URI
            (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), downloaded under
            ``dst_dir`` from the configured tracking store.
        dst_dir: where registry models are downloaded.
        registry: the registry that ``models:/`` URIs name versions of; needed for
            those only.

    Raises:
        ModelNotFoundError: nothing at ``model`` is a SavedModel.
    """
    if model.startswith(MODELS_SCHEME):
        if registry is None:
            raise ValueError(f"{model}: a models:/ URI needs the model registry")
        try:
            return download_uri(registry, model, dst_dir)
        except RegistryError as err:
            raise ModelNotFoundError(str(err)) from None
    model = model.rstrip("/")
    if storage.exists(storage.join(model, "saved_model.pb")):
        return model
    inner = layout.saved_model_in(model)  # a downloaded MLflow Model of this project
    if inner:
        return inner
    versions = layout.versions(model, servable_only=True)
    if not versions:
        raise ModelNotFoundError(
            f"{model}: not a SavedModel directory (no saved_model.pb), nor a model folder "
            "with integer versions, nor a models:/ URI"
        )
    return storage.join(model, str(max(versions)))


@dataclass(frozen=True)
class Prediction:
    """The outcome for one file: a class and its probability, or an error."""

    file: str
    class_name: str | None = None
    class_id: int | None = None
    probability: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The non-empty fields."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Classifier:
    """A loaded served model; ``serving_default`` on raw bytes."""

    def __init__(self, model_dir: str) -> None:
        import tensorflow as tf

        self.model_dir = model_dir
        self._loaded = tf.saved_model.load(model_dir)
        self.signature = self._loaded.signatures[F.SERVING_SIGNATURE]

    def classify(self, images: list[bytes]) -> dict[str, Any]:
        """The signature's outputs for a batch of encoded images, as numpy arrays."""
        import tensorflow as tf

        out = self.signature(**{F.SERVING_INPUT: tf.constant(images, dtype=tf.string)})
        return {k: v.numpy() for k, v in out.items()}

    def predict_files(self, paths: list[str], batch_size: int = 64) -> list[Prediction]:
        """One ``Prediction`` per path, in order; unreadable files get an error, not a raise."""
        results: dict[int, Prediction] = {}
        good: list[tuple[int, bytes]] = []
        for index, path in enumerate(paths):
            data, error = _readable_image(path)
            if error:
                results[index] = Prediction(path, error=error)
            else:
                good.append((index, data))
        for start in range(0, len(good), batch_size):
            chunk = good[start : start + batch_size]
            out = self.classify([data for _, data in chunk])
            for row, (index, _) in enumerate(chunk):
                probabilities = [float(p) for p in out["probabilities"][row]]
                class_id = int(out["class_id"][row])
                results[index] = Prediction(
                    paths[index],
                    class_name=out["class_name"][row].decode(),
                    class_id=class_id,
                    probability=probabilities[class_id],
                    probabilities=probabilities,
                )
        return [results[i] for i in range(len(paths))]

    def rest_predict(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Answers a TF Serving REST ``:predict`` body in the row format.

        ``{"instances": [{"b64": "..."}, ...]}`` (or each instance as
        ``{"image_bytes": {"b64": "..."}}``) gives ``{"predictions": [{"class_name": ...,
        "class_id": ..., "probabilities": [...]}, ...]}``, as TF Serving would.

        Raises:
            ValueError: the body is not a row-format request for ``image_bytes``.
        """
        signature = payload.get("signature_name", F.SERVING_SIGNATURE)
        if signature != F.SERVING_SIGNATURE:
            raise ValueError(f"signature_name: only {F.SERVING_SIGNATURE!r} takes encoded bytes")
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise ValueError('request body: expected "instances": a non-empty list')
        images = [_instance_bytes(i, n) for n, i in enumerate(instances)]
        out = self.classify(images)
        return {
            "predictions": [
                {
                    "class_name": out["class_name"][row].decode(),
                    "class_id": int(out["class_id"][row]),
                    "probabilities": [float(p) for p in out["probabilities"][row]],
                }
                for row in range(len(images))
            ]
        }


def _instance_bytes(instance: Any, index: int) -> bytes:
    if isinstance(instance, dict) and F.SERVING_INPUT in instance:
        instance = instance[F.SERVING_INPUT]
    if not (isinstance(instance, dict) and isinstance(instance.get("b64"), str)):
        raise ValueError(
            f'instances[{index}]: expected {{"b64": "<base64 image>"}} '
            f'or {{"{F.SERVING_INPUT}": {{"b64": ...}}}}'
        )
    try:
        return base64.b64decode(instance["b64"], validate=True)
    except ValueError as err:
        raise ValueError(f"instances[{index}]: invalid base64: {err}") from None


UNDECODABLE = "not an image the model can decode (JPEG, PNG, GIF or BMP)"


def read_file(path: str) -> tuple[bytes, str]:
    """The file's bytes, or why it cannot be read (no such file, unreadable, empty)."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        return b"", "no such file"
    except (OSError, ValueError) as err:
        return b"", f"cannot read: {getattr(err, 'strerror', None) or err}"
    return (data, "") if data else (b"", "empty file")


def decodes(data: bytes) -> bool:
    """Whether the served model's decoder takes these bytes."""
    import tensorflow as tf

    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False
    return True


def _readable_image(path: str) -> tuple[bytes, str]:
    """The file's bytes, or an error saying why the model cannot take it."""
    data, error = read_file(path)
    if error:
        return b"", error
    return (data, "") if decodes(data) else (b"", UNDECODABLE)
