"""Using a served model: find it, classify image files, answer TF Serving REST payloads.

All preprocessing is inside the SavedModel (``serving_default`` on raw bytes); this
module only moves bytes in and results out.
"""

from __future__ import annotations

import base64
import copy
import functools
from dataclasses import dataclass
from typing import Any

from visionpipe import features as F
from visionpipe import layout, storage
from visionpipe.errors import UserError
from visionpipe.registry import MODELS_SCHEME, Registry, RegistryError, download_uri
from visionpipe.sections import IngestConfig

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
    """A loaded served model; ``serving_default`` on raw bytes.

    ``monitored``: call the model's ``monitor`` signature instead (the same answers,
    and the embedding and image properties a prediction log records), when it has one.
    """

    def __init__(self, model_dir: str, monitored: bool = False) -> None:
        import tensorflow as tf

        self.model_dir = model_dir
        self.max_pixels = model_max_pixels(model_dir)
        self._loaded = tf.saved_model.load(model_dir)
        signatures = self._loaded.signatures
        self.monitored = monitored and F.MONITOR_SIGNATURE in signatures
        name = F.MONITOR_SIGNATURE if self.monitored else F.SERVING_SIGNATURE
        self.signature = signatures[name]

    def plain(self) -> Classifier:
        """The same loaded model answering through ``serving_default`` (no monitor outputs)."""
        if not self.monitored:
            return self
        other = copy.copy(self)
        other.monitored = False
        other.signature = self._loaded.signatures[F.SERVING_SIGNATURE]
        return other

    def classify(self, images: list[bytes]) -> dict[str, Any]:
        """The signature's outputs for a batch of encoded images, as numpy arrays."""
        import tensorflow as tf

        out = self.signature(**{F.SERVING_INPUT: tf.constant(images, dtype=tf.string)})
        return {k: v.numpy() for k, v in out.items()}

    def predict_files(
        self,
        paths: list[str],
        batch_size: int = 64,
        max_batch_pixels: int = 0,
        sink: OutputSink | None = None,
    ) -> list[Prediction]:
        """One ``Prediction`` per path, in order; a file the model must not take gets an error.

        Each file is read once and its header checked (unreadable, not an image, a
        decompression bomb: an error naming it, nothing decoded); the others are decoded
        once, by the model, in calls of at most ``batch_size`` images and
        ``max_batch_pixels`` declared pixels (default: the model's own bound). A call that
        fails on a corrupt image is retried image by image, so only that file fails.
        Each classified image's outputs also go to ``sink`` (a prediction log, or a
        collector of observations), with its content hash, path and bytes.
        """
        found: list[tuple[str, bytes, str]] = [(path, *read_file(path)) for path in paths]
        return self.predict_contents(found, batch_size, max_batch_pixels, sink)

    def predict_contents(
        self,
        contents: list[tuple[str, bytes, str]],
        batch_size: int = 64,
        max_batch_pixels: int = 0,
        sink: OutputSink | None = None,
    ) -> list[Prediction]:
        """``predict_files`` of contents already read: ``(name, bytes, error)`` each.

        An entry with an error (why it could not be read) gets it as its prediction.
        """
        paths = [name for name, _, _ in contents]
        results: dict[int, Prediction] = {}
        read: list[tuple[int, bytes]] = []
        for index, (path, data, error) in enumerate(contents):
            if error:
                results[index] = Prediction(path, error=error)
            else:
                read.append((index, data))
        checked = check_images([data for _, data in read], self.max_pixels)
        good: list[tuple[int, bytes, int]] = []
        for (index, data), (error, pixels) in zip(read, checked, strict=True):
            if error:
                results[index] = Prediction(paths[index], error=error)
            else:
                good.append((index, data, pixels))
        limit = max_batch_pixels or self.max_pixels
        for group in batches([p for _, _, p in good], batch_size, limit):
            chunk = [good[i] for i in group]
            data = {i: d for i, d, _ in chunk}
            for index, out, row in self._classify_chunk([(i, d) for i, d, _ in chunk]):
                results[index] = self._prediction(paths[index], out, row)
                if sink is not None and out is not None:
                    content = data[index]
                    sink.add_outputs(out, [row], [content_hash(content)], [paths[index]], [content])
        return [results[i] for i in range(len(paths))]

    def _classify_chunk(self, chunk: list[tuple[int, bytes]]):
        """``(index, outputs, row)`` per image; a corrupt image yields ``(index, None, 0)``."""
        import tensorflow as tf

        try:
            out = self.classify([data for _, data in chunk])
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            if len(chunk) == 1:
                yield chunk[0][0], None, 0
                return
            for one in chunk:  # find the one that does not decode; score the rest
                yield from self._classify_chunk([one])
            return
        yield from ((index, out, row) for row, (index, _) in enumerate(chunk))

    @staticmethod
    def _prediction(path: str, out: dict[str, Any] | None, row: int) -> Prediction:
        if out is None:
            return Prediction(path, error=UNDECODABLE)
        probabilities = [float(p) for p in out["probabilities"][row]]
        class_id = int(out["class_id"][row])
        return Prediction(
            path,
            class_name=out["class_name"][row].decode(),
            class_id=class_id,
            probability=probabilities[class_id],
            probabilities=probabilities,
        )

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


class OutputSink:
    """Where a monitored classifier's outputs go, row by row (``visionpipe.predlog``)."""

    def add_outputs(self, outputs, rows, hashes, files=None, images=None) -> None:
        """Takes output rows ``rows`` of one call, with each image's hash, path and bytes."""


class Collector(OutputSink):
    """Keeps the rows it is given, for ``visionpipe.drift.Observations.from_outputs``."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.keys: list[str] = []

    def add_outputs(self, outputs, rows, hashes, files=None, images=None) -> None:
        """Keeps each row as a one-row output dict."""
        for i, row in enumerate(rows):
            self.outputs.append({k: v[row : row + 1] for k, v in outputs.items()})
            self.keys.append(files[i] if files else hashes[i])


def content_hash(data: bytes) -> str:
    """The SHA-256 of an input's bytes, as ingest and the prediction log record it."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


UNDECODABLE = "not an image the model can decode (JPEG, PNG, GIF, BMP or WebP)"
# The bound of models exported before it was recorded: ingest.max_pixels' default.
DEFAULT_MAX_PIXELS: int = IngestConfig.model_fields["max_pixels"].default


def read_file(path: str) -> tuple[bytes, str]:
    """The file's bytes, or why it cannot be read (no such file, unreadable, empty)."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        return b"", "no such file"
    except (OSError, ValueError) as err:
        return b"", f"cannot read: {getattr(err, 'strerror', None) or err}"
    return (data, "") if data else (b"", "empty file")


@functools.cache
def _header_reader():
    """``pixels.declared_sizes`` as one graph, traced once per process."""
    import tensorflow as tf

    from visionpipe.pixels import declared_sizes

    return tf.function(declared_sizes, input_signature=[tf.TensorSpec([None], tf.string)])


def _read_headers(images: list[bytes]):
    """``[n, 4]`` format, height, width, frames of each image's header."""
    import tensorflow as tf

    return _header_reader()(tf.constant(images, dtype=tf.string)).numpy()


def check_images(images: list[bytes], max_pixels: int) -> list[tuple[str, int]]:
    """Per image, ``(problem, pixels)``: why the model must not decode it ("" when it may).

    The problem is that the bytes are no image the model takes, or that the header
    declares more than ``max_pixels`` (a decompression bomb); ``pixels`` is what the
    header declares (0 when unknown). The headers of the whole list are read in one
    call of the function the served graph runs, decoding nothing; a JPEG too broken to
    have a frame header fails that call, and the list is then read image by image.
    """
    import tensorflow as tf

    from visionpipe.pixels import FORMAT_NAMES, UNKNOWN

    if not images:
        return []
    try:
        rows = _read_headers(images)
    except tf.errors.InvalidArgumentError:
        if len(images) == 1:
            return [(UNDECODABLE, 0)]
        return [found for one in images for found in check_images([one], max_pixels)]
    found = []
    for fmt, height, width, frames in rows.tolist():
        pixels = height * width * frames
        if fmt == UNKNOWN:
            found.append((UNDECODABLE, 0))
        elif pixels > max_pixels:
            shown = f" x {frames} frames" if frames > 1 else ""
            problem = (
                f"{FORMAT_NAMES[fmt]} declares {width}x{height} pixels{shown}, over the "
                f"model's bound of {max_pixels} (a decompression bomb, or too large to serve)"
            )
            found.append((problem, pixels))
        else:
            found.append(("", pixels))
    return found


def check_image(data: bytes, max_pixels: int) -> tuple[str, int]:
    """``check_images`` of one image."""
    return check_images([data], max_pixels)[0]


def model_max_pixels(model_dir: str) -> int:
    """The pixel bound the model was exported with (its preprocessing contract)."""
    record = storage.join(model_dir, F.TRAINING_RECORD)
    if not storage.exists(record):
        return DEFAULT_MAX_PIXELS
    contract = storage.read_json(record).get("preprocessing", {})
    return int(contract.get("max_pixels", DEFAULT_MAX_PIXELS))


def batches(sizes: list[int], max_images: int, max_pixels: int) -> list[list[int]]:
    """Positions grouped into model calls of at most ``max_images`` and ``max_pixels`` in all.

    An image larger than ``max_pixels`` alone (already checked against the model's own
    bound) gets a call of its own.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(sizes):
        if current and (len(current) >= max_images or total + size > max_pixels):
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        groups.append(current)
    return groups
