"""The NumPy forward pass: a network exported layer by layer, run in float32 on one BLAS
thread, 16 faces a pass, batch normalisation folded into the layer before it. No TensorFlow."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from fercli.core.errors import ModelError

# The forward pass runs in float32, the precision Keras trained and computes in: twice as fast
# as float64, and the same probabilities within about 1e-7 (tests allow 1e-5). The softmax at
# the end is taken in float64, so that probabilities still sum to 1 within 1e-15.
RUNTIME_DTYPE = np.float32
# Faces per forward pass: few enough that a pass's im2col copy (a paper network's second
# convolution: 320 KB a face) stays in the processor's cache. Ten paper networks took 1.4 ms
# of CPU a face in passes of 16, 1.7 ms in passes of 64, 2.3 ms with 300 faces in one pass
# (which also held 100 MB more memory).
FORWARD_BATCH = 16
# Activations that keep the order of their inputs: a max pooling after them can go before
# them (and before the bias), where it makes the tensor they work on 4 times smaller.
_MONOTONE = ("linear", None, "relu")


def _activation(x: np.ndarray, name: str | None) -> np.ndarray:
    if name in ("linear", None):
        return x
    if name == "relu":
        return np.maximum(x, 0)
    if name == "softmax":
        x = x.astype(np.float64)
        shifted = np.exp(x - x.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    raise ModelError(f"activation {name!r} is not supported by the numpy runtime")


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    # TensorFlow's "same": output ceil(size/stride); the extra pixel goes after.
    output = -(-size // stride)
    total = max((output - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _padded(
    x: np.ndarray, window: tuple[int, int], strides: tuple[int, int], padding: str, fill: float
) -> np.ndarray:
    if padding != "same":
        return x
    pad_h = _same_padding(x.shape[1], window[0], strides[0])
    pad_w = _same_padding(x.shape[2], window[1], strides[1])
    return np.pad(x, ((0, 0), pad_h, pad_w, (0, 0)), constant_values=fill)


def _convolve(
    x: np.ndarray,
    kernel: np.ndarray,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: str,
) -> np.ndarray:
    """An NHWC convolution as one matrix product: each output pixel's window copied into one
    contiguous row in the kernel's (kh, kw, c) order (im2col); kernel: (kh * kw * c, f)."""
    x = _padded(x, window, strides, padding, 0.0)
    windows = np.lib.stride_tricks.sliding_window_view(x, window, axis=(1, 2))[
        :, :: strides[0], :: strides[1]
    ]
    n, height, width = windows.shape[:3]
    columns = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(
        n * height * width, -1
    )
    return (columns @ kernel).reshape(n, height, width, kernel.shape[1])


def _max_pool(
    x: np.ndarray, window: tuple[int, int], strides: tuple[int, int], padding: str
) -> np.ndarray:
    """Max pooling as the elementwise maximum of one strided slice per window position: about
    5 times faster than reducing sliding windows."""
    x = _padded(x, window, strides, padding, -np.inf)
    height = (x.shape[1] - window[0]) // strides[0] + 1
    width = (x.shape[2] - window[1]) // strides[1] + 1
    pooled = None
    for row in range(window[0]):
        for column in range(window[1]):
            part = x[
                :,
                row : row + strides[0] * (height - 1) + 1 : strides[0],
                column : column + strides[1] * (width - 1) + 1 : strides[1],
            ]
            pooled = part.copy() if pooled is None else np.maximum(pooled, part, out=pooled)
    return pooled


@dataclass
class _Linear:
    """A convolution or dense layer, with the batch normalisation, activation and max pooling
    that follow it folded in: x @ kernel, pooled, plus bias, activation."""

    kernel: np.ndarray  # (inputs, outputs); a convolution's inputs in (kh, kw, c) order
    bias: np.ndarray | None
    activation: str | None
    window: tuple[int, int] | None = None  # a convolution's kernel size; None for a dense layer
    strides: tuple[int, int] = (1, 1)
    padding: str = "valid"
    pool: tuple | None = None  # (window, strides, padding) of a max pooling taken before the bias

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.window is None:
            x = x @ self.kernel
        else:
            x = _convolve(x, self.kernel, self.window, self.strides, self.padding)
        if self.pool is not None:
            x = _max_pool(x, *self.pool)
        # x is this step's own array: bias and relu can go in place.
        if self.bias is not None:
            x += self.bias
        if self.activation == "relu":
            return np.maximum(x, 0, out=x)
        return _activation(x, self.activation)


def _compile(specs: list[dict], weights: dict[str, np.ndarray], dtype: np.dtype) -> list:
    """The layers of an exported network as the forward pass runs them: callables on a batch.

    A batch normalisation after a convolution or dense layer without activation is folded
    into its kernel and bias; an activation layer after one becomes its activation; a max
    pooling after a convolution with relu (or none) is taken right after the matrix product
    (max commutes with adding a per-channel bias and with relu, so the result is the same).
    """
    steps: list = []
    for spec in specs:
        values = [np.asarray(weights[key], np.float64) for key in spec["weights"]]
        last = steps[-1] if steps and isinstance(steps[-1], _Linear) else None
        compile_layer = _LAYER_STEPS.get(spec["type"])
        if compile_layer is None:
            raise ModelError(f"layer type {spec['type']!r} is not supported by the numpy runtime")
        compile_layer(steps, spec, values, last, dtype)
    for step in steps:
        if isinstance(step, _Linear):
            step.kernel = np.ascontiguousarray(step.kernel, dtype)
            step.bias = None if step.bias is None else np.asarray(step.bias, dtype)
    return steps


def _linear_step(steps: list, spec: dict, values: list, last, dtype) -> None:
    kernel = values[0]
    bias = values[1] if len(values) > 1 else None
    if spec["type"] == "dense":
        steps.append(_Linear(kernel, bias, spec["activation"]))
        return
    window, strides = tuple(kernel.shape[:2]), tuple(spec["strides"])
    flat = kernel.reshape(-1, kernel.shape[3])
    steps.append(_Linear(flat, bias, spec["activation"], window, strides, spec["padding"]))


def _batchnorm_step(steps: list, spec: dict, values: list, last, dtype) -> None:
    named = dict(zip(batchnorm_names(spec), values, strict=True))
    scale = named.get("gamma", 1.0) / np.sqrt(named["variance"] + spec["epsilon"])
    shift = named.get("beta", 0.0) - named["mean"] * scale
    if last is not None and last.activation in ("linear", None) and last.pool is None:
        last.kernel = last.kernel * scale
        last.bias = shift if last.bias is None else last.bias * scale + shift
        return
    scale, shift = scale.astype(dtype), shift.astype(dtype)
    steps.append(lambda x: x * scale + shift)


def _activation_step(steps: list, spec: dict, values: list, last, dtype) -> None:
    if last is not None and last.activation in ("linear", None):
        last.activation = spec["activation"]
    else:
        steps.append(lambda x, name=spec["activation"]: _activation(x, name))


def _maxpool_step(steps: list, spec: dict, values: list, last, dtype) -> None:
    pool = (tuple(spec["pool_size"]), tuple(spec["strides"]), spec["padding"])
    foldable = last is not None and last.window is not None and last.pool is None
    if foldable and last.activation in _MONOTONE:
        last.pool = pool
    else:
        steps.append(lambda x: _max_pool(x, *pool))


def _flatten_step(steps: list, spec: dict, values: list, last, dtype) -> None:
    steps.append(lambda x: x.reshape(len(x), -1))


# How each exported layer type becomes steps of the forward pass (see _compile).
_LAYER_STEPS = {
    "conv2d": _linear_step,
    "dense": _linear_step,
    "batchnorm": _batchnorm_step,
    "activation": _activation_step,
    "maxpool2d": _maxpool_step,
    "flatten": _flatten_step,
}


@lru_cache(maxsize=1)
def _blas_controller():
    # A dependency (pyproject.toml); should an install lack it, the forward pass runs as numpy is
    # set up.
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def one_blas_thread() -> contextlib.AbstractContextManager:
    """A context in which numpy's BLAS (OpenBLAS) runs matrix products on one thread.

    The forward pass's products are small (a few MB): on two threads OpenBLAS gains little
    on an idle machine, and on a busy one its threads wait for each other, which cost a
    10-network model more CPU time than the networks themselves (fer predict on one photo,
    at load average 7-12 on 2 cores: 0.70 s of CPU against 0.35 s on one thread). fercli
    spreads its work over the cores with processes instead.
    """
    controller = _blas_controller()
    return (
        contextlib.nullcontext()
        if controller is None
        else controller.limit(limits=1, user_api="blas")
    )


class NumpyNetwork:
    """The forward pass of an exported network in numpy (float32, as Keras computes)."""

    def __init__(
        self, specs: list[dict], weights: dict[str, np.ndarray], dtype: type = RUNTIME_DTYPE
    ) -> None:
        self.specs = specs
        # Its own arrays, as the file stores them (fine-tuning starts Keras from them).
        self.weights = {key: weights[key] for spec in specs for key in spec["weights"]}
        self.dtype = np.dtype(dtype)

    @cached_property
    def _steps(self) -> list:
        # Prepared at the first forward pass, so that a layer that does not fit is reported
        # where the pass is checked (load_model: which member of an ensemble).
        return _compile(self.specs, self.weights, self.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (float64) for a batch of normalised inputs of shape (n, h, w, 1)."""
        # Overflow in a damaged network gives inf or NaN, which callers check for; numpy's
        # warnings about it would only be stray lines on stderr.
        with np.errstate(all="ignore"), one_blas_thread():
            x = np.asarray(x, self.dtype)
            if len(x) <= FORWARD_BATCH:
                return self._forward(x)
            return np.concatenate(
                [
                    self._forward(x[start : start + FORWARD_BATCH])
                    for start in range(0, len(x), FORWARD_BATCH)
                ]
            )

    def _forward(self, x: np.ndarray) -> np.ndarray:
        for step in self._steps:
            x = step(x)
        return np.asarray(x, np.float64)


def batchnorm_names(spec: dict) -> list[str]:
    return [key.rsplit("_", 1)[1] for key in spec["weights"]]
