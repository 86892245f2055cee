"""Tensors on the wire: numpy float32 arrays ↔ ``flowrl.v1.Tensor`` (packed little-endian bytes).

Decoding checks everything a remote sender can get wrong (dtype, shape, byte count, NaN/Inf)
and raises :class:`TensorError` with a message that names the mistake; the server turns it
into INVALID_ARGUMENT.
"""

from __future__ import annotations

import math

import numpy as np

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

_LE_FLOAT32 = np.dtype("<f4")


class TensorError(FlowRLError):
    """A tensor message is malformed or holds values a policy cannot take."""


def encode(array: np.ndarray) -> pb.Tensor:
    """A ``Tensor`` holding ``array`` as packed little-endian float32 bytes."""
    array = np.asarray(array, dtype=_LE_FLOAT32)
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=array.shape, data=array.tobytes())


def decode(tensor: pb.Tensor, *, name: str = "tensor") -> np.ndarray:
    """The float32 array a ``Tensor`` carries; raise :class:`TensorError` if it is malformed."""
    if tensor.dtype not in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_FLOAT32):
        raise TensorError(f"{name}: dtype {pb.DType.Name(tensor.dtype)} is not accepted; send float32")
    shape = tuple(tensor.shape)
    if not shape:
        raise TensorError(f"{name}: missing shape")
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
    if not np.isfinite(array).all():
        raise TensorError(f"{name}: contains NaN or Inf")
    return array.reshape(shape)


def as_batch(array: np.ndarray, width: int, *, name: str = "obs", max_batch: int | None = None) -> np.ndarray:
    """``array`` as [B, width] (a 1-D [width] becomes B = 1); raise if its shape cannot be."""
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != width:
        raise TensorError(f"{name}: shape {list(array.shape)} does not match [{width}] or [B, {width}]")
    if max_batch is not None and array.shape[0] > max_batch:
        raise TensorError(f"{name}: batch of {array.shape[0]} exceeds the limit of {max_batch}")
    return array
