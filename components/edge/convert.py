"""Converting the served classifier to edge formats.

Every format takes decoded pixels of the training size, ``[batch, size, size, 3]``
RGB, 0-255 (decoding JPEG is not an edge-runtime op); the normalisation stays inside
the model. The formats:

- ``tflite_float16``: float32 in and out, weights stored as float16 (half the size;
  computed in float32 on CPUs, in float16 on GPU delegates).
- ``tflite_int8``: full-integer: int8 weights and activations, uint8 pixels in, uint8
  probabilities out (scale 1/256), calibrated on a representative dataset of training
  images. What microcontrollers, Edge TPUs and NPUs run.
- ``onnx``: float32 with a dynamic batch, through ``tf2onnx`` from the classifier's
  traced function, for ONNX Runtime, TensorRT and DeepStream. tf2onnx is the converter
  for TensorFlow graphs (keras2onnx is retired); Keras 3's own ``model.export(format=
  "onnx")`` calls the same tf2onnx function on this backend, but names the output
  ``Identity:0`` and, like a direct call, leaves EfficientNet unloadable (see
  ``to_onnx``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

import numpy as np

from visionpipe.errors import UserError
from visionpipe.sections import EDGE_FORMATS

log = logging.getLogger(__name__)

FORMATS = EDGE_FORMATS  # the one list, in visionpipe.sections
FILE_NAMES = {"tflite_float16": "model.tflite", "tflite_int8": "model.tflite", "onnx": "model.onnx"}
INPUT_NAME = "pixels"


class EdgeFormatError(UserError, ValueError):
    """An export format this project does not make."""


def check_formats(formats: list[str]) -> list[str]:
    """The formats, deduplicated in the order given.

    Raises:
        EdgeFormatError: an unknown format, or none at all.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EdgeFormatError(
            f"unknown edge format {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}"
        )
    if not formats:
        raise EdgeFormatError(f"no edge format given; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def convert(classifier, fmt: str, representative: np.ndarray | None = None, opset: int = 17):
    """The model file's bytes for ``fmt``.

    Args:
        classifier: the served Keras classifier (pixels 0-255 in, probabilities out).
        fmt: one of ``FORMATS``.
        representative: uint8 training images ``[n, size, size, 3]``; int8 calibration.
        opset: the ONNX opset.
    """
    if fmt == "onnx":
        return to_onnx(classifier, opset)
    return to_tflite(classifier, int8=fmt == "tflite_int8", representative=representative)


def to_tflite(classifier, int8: bool, representative: np.ndarray | None = None) -> bytes:
    """A TFLite flatbuffer: float16 weights, or full-integer int8 calibrated on images."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(classifier)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if not int8:
        converter.target_spec.supported_types = [tf.float16]
        return quiet_call(converter.convert)
    if representative is None or not len(representative):
        raise ValueError("int8 quantisation needs representative images")

    def samples():
        for image in representative:
            yield [image[None].astype(np.float32)]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return quiet_call(converter.convert)


def to_onnx(classifier, opset: int = 17) -> bytes:
    """An ONNX model with a dynamic batch: input ``pixels``, output ``probabilities``.

    tf2onnx lists tensors the traced function captured by value (EfficientNet's
    normalisation constants) as graph inputs that no node reads; they are dropped, so
    ``pixels`` is the only input a runtime asks for.
    """
    import tensorflow as tf
    import tf2onnx

    shape = [None, *classifier.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
    def classify(pixels):
        return {"probabilities": tf.cast(classifier(pixels, training=False), tf.float32)}

    proto, _ = quiet_call(
        tf2onnx.convert.from_function,
        classify,
        input_signature=classify.input_signature,
        opset=opset,
    )
    graph = proto.graph
    read = {name for node in graph.node for name in node.input}
    for unused in [i for i in graph.input if i.name != INPUT_NAME and i.name not in read]:
        graph.input.remove(unused)
    extra = [i.name for i in graph.input if i.name != INPUT_NAME]
    if extra:
        raise RuntimeError(f"the ONNX conversion left inputs besides pixels: {extra}")
    return proto.SerializeToString()


def quiet_call(fn, *args, **kwargs):
    """Runs a converter without its console output, which goes to this module's log.

    TensorFlow's converter prints the traced signature and its captures (a line per
    variable) and its C++ side writes to the file descriptors; tf2onnx logs each
    rewrite. A person wants the report, so the descriptors are pointed at a temporary
    file for the call: its text is logged at debug level, or at error level with the
    exception when the conversion fails.
    """
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    python_level = io.StringIO()  # where sys.stdout is not fd 1 (a capture, a test)
    with (
        tempfile.TemporaryFile() as sink,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(python_level),
        contextlib.redirect_stderr(python_level),
    ):
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            logger.setLevel(level)
            sink.seek(0)
            text = (python_level.getvalue() + sink.read().decode(errors="replace")).strip()
            if text:
                log.log(logging.ERROR if failed else logging.DEBUG, "converter output:\n%s", text)
