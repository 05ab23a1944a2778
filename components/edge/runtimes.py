"""Running an edge model in its own runtime: the TFLite interpreter and ONNX Runtime.

Each runner takes uint8 pixels ``[n, size, size, 3]`` as the preprocessing contract
gives them, and returns float probabilities ``[n, classes]``: it quantises the input
and dequantises the output of an integer model with the scales stored in the model.
"""

from __future__ import annotations

import statistics
import time
import warnings

import numpy as np

from components.edge.convert import quiet_call


class TFLiteRunner:
    """A TFLite model in the TensorFlow Lite interpreter (XNNPACK on CPUs)."""

    runtime = "TFLite interpreter"

    def __init__(self, model: bytes, threads: int | None = None) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():  # its move to the ai-edge-litert package
            warnings.simplefilter("ignore")
            self._interpreter = tf.lite.Interpreter(model_content=model, num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    @property
    def input_name(self) -> str:
        """The input tensor's name in the model."""
        return str(self._input["name"])

    def quantization(self) -> tuple[tuple[float, int], tuple[float, int]]:
        """``(scale, zero_point)`` of the input and of the output (``(0.0, 0)``: float)."""
        return tuple(self._input["quantization"]), tuple(self._output["quantization"])

    def _quantise(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        scale, zero = self._input["quantization"]
        if dtype in (np.uint8, np.int8) and scale:
            info = np.iinfo(dtype)
            q = np.round(pixels.astype(np.float32) / scale + zero)
            return np.clip(q, info.min, info.max).astype(dtype)
        return pixels.astype(dtype)

    def _dequantise(self, values: np.ndarray) -> np.ndarray:
        scale, zero = self._output["quantization"]
        if values.dtype in (np.uint8, np.int8) and scale:
            return (values.astype(np.float32) - zero) * scale
        return values.astype(np.float32)

    def predict(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities of each image."""
        parts = []
        for start in range(0, len(pixels), batch_size):
            batch = self._quantise(pixels[start : start + batch_size])
            if self._batch != len(batch):
                self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
                quiet_call(self._interpreter.allocate_tensors)  # not its XNNPACK note
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            parts.append(self._dequantise(self._interpreter.get_tensor(self._output["index"])))
        return np.concatenate(parts)


class OnnxRunner:
    """An ONNX model in ONNX Runtime (CPU, or the execution providers given)."""

    runtime = "ONNX Runtime"

    def __init__(self, model: bytes, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: not its notes on unused initialisers
        self._session = ort.InferenceSession(
            model, options, providers=providers or ["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    @property
    def input_name(self) -> str:
        """The input tensor's name in the model."""
        return self._input

    def predict(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities of each image."""
        parts = [
            self._session.run(None, {self._input: pixels[s : s + batch_size].astype(np.float32)})[0]
            for s in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)


def runner(fmt: str, model: bytes):
    """The runtime for an export format."""
    return OnnxRunner(model) if fmt == "onnx" else TFLiteRunner(model)


def latency_ms(predict, image: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time of one single-image call, in milliseconds."""
    one = image[None]
    for _ in range(warmup):
        predict(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(one)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
