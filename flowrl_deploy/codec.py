"""Tensors on the wire: numpy float32 arrays ↔ ``flowrl.v1.Tensor`` (packed little-endian bytes).

Decoding checks everything a remote sender can get wrong (dtype, shape, byte count, NaN/Inf)
and raises :class:`TensorError` with a message that names the mistake; the server turns it
into INVALID_ARGUMENT. Encoding and :func:`policy_batch` (the local runtime's input check)
refuse what is not an array of real numbers the same way.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

_LE_FLOAT32 = np.dtype("<f4")


UNCOUNTED_REFUSALS = frozenset({"connections"})
"""Limits (``LimitStats.limit`` of GetStats) whose refusals are not counted: gRPC closes a connection
beyond ``--max-connections`` unseen by Python, so its ``refused`` is always 0 (the server's metrics have no
``flowrl_refused_total`` series for it; `flowrl stats` shows '-', not 0)."""


class TensorError(FlowRLError):
    """A tensor message is malformed or holds values a policy cannot take."""


_NUMBERS = "; pass float or integer numbers"
_DTYPE_REFUSALS = {  # what follows "dtype X is not accepted", by dtype kind
    "b": f"{_NUMBERS} (x.astype(np.float32) if the flags are meant as 0 and 1)",
    "c": "; float32 has no imaginary part (pass x.real if it is zero)",
    "O": f" (None, or objects that are not numbers){_NUMBERS}",
    "U": f" (text){_NUMBERS}",
    "S": f" (bytes){_NUMBERS}",
    "V": f" (structured records){_NUMBERS}",
    "M": f" (dates){_NUMBERS}",
    "m": f" (time spans){_NUMBERS}",
}


MAX_DIMS = 8
"""Dimensions a decoded tensor may declare (a policy's take 1 or 2; numpy refuses over 64)."""


def as_float32(array: npt.ArrayLike, *, name: str = "tensor") -> npt.NDArray[np.float32]:
    """``array`` as C-contiguous float32: float and integer dtypes convert (silently: a value beyond
    float32's range becomes Inf, for :func:`check_finite` to refuse); booleans, complex numbers,
    text, objects and ragged sequences raise :class:`TensorError`."""
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except (ValueError, TypeError):
            raise TensorError(
                f"{name}: not a rectangular array of numbers (rows of different lengths, or nested objects?)"
            ) from None
    check_number_dtype(array.dtype, name=name)
    if array.dtype.itemsize <= 4:  # float32 already, or an integer float32 holds (the hot path: no errstate)
        return np.asarray(array, dtype=np.float32, order="C")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, which check_finite names
        return np.asarray(array, dtype=np.float32, order="C")


def check_number_dtype(dtype: np.dtype, *, name: str = "tensor") -> None:
    """Raise :class:`TensorError` for a dtype that does not hold real numbers, saying what it holds."""
    if dtype.kind not in "fiu":
        raise TensorError(f"{name}: dtype {dtype} is not accepted{_DTYPE_REFUSALS.get(dtype.kind, _NUMBERS)}")


def encode(array: npt.ArrayLike, *, name: str = "tensor") -> pb.Tensor:
    """A ``Tensor`` holding ``array`` as packed little-endian float32 bytes; raise :class:`TensorError`
    for what is not real numbers (see :func:`as_float32`)."""
    array = as_float32(array, name=name).astype(_LE_FLOAT32, copy=False)
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=array.shape, data=array.tobytes())


def decode(tensor: pb.Tensor, *, name: str = "tensor") -> npt.NDArray[np.float32]:
    """The float32 array a ``Tensor`` carries; raise :class:`TensorError` if it is malformed.

    From packed ``data`` (what :func:`encode` writes) it is a read-only view of the message's
    bytes, with no copy on the server's hot path: ``a = a * 2`` works, ``a *= 2`` raises, and
    ``np.array(a)`` is a writable copy."""
    if tensor.dtype not in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_FLOAT32):
        named = tensor.dtype in pb.DType.values()  # proto3 enums are open: a newer client may send any number
        dtype = pb.DType.Name(tensor.dtype) if named else f"{tensor.dtype} (no DType value)"
        raise TensorError(f"{name}: dtype {dtype} is not accepted; send float32")
    shape = tuple(tensor.shape)
    if not shape:
        raise TensorError(f"{name}: missing shape")
    if len(shape) > MAX_DIMS:  # numpy takes at most 64, and a policy's tensors have 1 or 2
        raise TensorError(f"{name}: shape has {len(shape)} dimensions; a policy's tensors have at most 2")
    if any(d < 0 for d in shape):
        raise TensorError(f"{name}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    data = tensor.data  # a copy on every access: read it once
    if data and len(tensor.values):
        raise TensorError(f"{name}: set either data or values, not both")
    if tensor.values:
        array = np.asarray(tensor.values, dtype=np.float32)
    else:
        if len(data) != 4 * count:
            raise TensorError(
                f"{name}: {len(data)} bytes do not hold shape {list(shape)} of float32 ({4 * count} bytes)"
            )
        array = np.frombuffer(data, dtype=_LE_FLOAT32).astype(np.float32, copy=False)
    if array.size != count:
        raise TensorError(f"{name}: {array.size} values do not fill shape {list(shape)}")
    if count == 0:
        raise TensorError(f"{name}: empty tensor (shape {list(shape)})")
    check_finite(array, name=name)
    return array.reshape(shape)


def check_finite(array: np.ndarray, *, name: str = "tensor") -> None:
    """Raise :class:`TensorError` if ``array`` holds NaN or Inf (about 1 µs for a few hundred floats).

    The message also names values beyond float32's range (as ``flowrl query`` does): cast to
    float32 by :func:`as_float32` or :func:`encode`, they arrive here as Inf."""
    if not np.isfinite(array).all():
        raise TensorError(f"{name}: holds NaN, infinite or beyond-float32 values")


def as_batch(
    array: npt.NDArray[np.float32],
    width: int,
    *,
    name: str = "obs",
    max_batch: int | None = None,
    rows: str = "B",
) -> npt.NDArray[np.float32]:
    """``array`` as [B, width] with B >= 1 (a 1-D [width] becomes B = 1); raise if its shape cannot be,
    naming the shape as given and the shapes taken, [width] or [``rows``, width] (``rows="1"`` where
    the caller takes one observation)."""
    if array.ndim == 1 and array.shape[0] == width:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != width:
        raise TensorError(f"{name}: shape {list(array.shape)} does not match [{width}] or [{rows}, {width}]")
    if array.shape[0] == 0:
        raise TensorError(f"{name}: empty batch (shape {list(array.shape)})")
    if max_batch is not None and array.shape[0] > max_batch:
        raise TensorError(f"{name}: batch of {array.shape[0]} exceeds the limit of {max_batch}")
    return array


def policy_batch(array: npt.ArrayLike, width: int, *, name: str) -> npt.NDArray[np.float32]:
    """``array`` as a float32 [B, width] batch of finite numbers, as a policy graph takes it
    (a 1-D [width] is B = 1); raise :class:`TensorError` naming ``name`` otherwise."""
    batch = as_batch(as_float32(array, name=name), width, name=name)
    check_finite(batch, name=name)
    return batch
