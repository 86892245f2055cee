"""The served model replayed from onnxruntime's CUDA graphs.

At batch 1 onnxruntime's CUDA provider is launch-bound: each of the sampler's ~160 nodes launches a
kernel of its own, and a 10-step dog-run call took 1.8 ms on an H100, more than one CPU core's 0.7 ms.
A CUDA graph captures those launches once and replays them in one: 0.5 ms (``bench/infer_latency.py
--device cuda``, its ``cuda-graph`` row).

onnxruntime captures a graph on the first run of each ``gpu_graph_id`` and replays it after, which
holds only while the inputs and output stay at the same GPU addresses and shapes. So each *bucket*, a
power of two of rows, gets buffers of its own, bound once: a call's rows are copied into its bucket's
input buffers (the rows past them zeros), the graph replayed, and the call's rows copied back. The
sampler computes each row alone, so the padding changes no row's action.

onnxruntime keeps the graphs of each thread apart and captures in CUDA's global mode, in which a CUDA
call from any other thread during a capture fails (microsoft/onnxruntime#18806). So every run of a
session with graphs, and of the plain CUDA sessions served beside them, goes through one thread of the
process, :func:`on_cuda_thread`: the graphs are captured once, and no call of another model lands in a
capture. A GPU runs one call at a time anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from flowrl_deploy.contract import NOISE_INPUT, OBS_INPUT
from flowrl_deploy.ort import CUDA, import_onnxruntime, make_session, run_options

if TYPE_CHECKING:
    from flowrl_deploy.policy import OnnxPolicy

LARGEST_BUCKET = 1024
"""Rows of the largest graph; a call of more runs in chunks of this many (``max_request_batch``'s default)."""
GRAPH_PROVIDER = (CUDA, {"enable_cuda_graph": "1"})
DEVICE = "cuda"
"""Where the buffers live (onnxruntime's device name); device 0, where the provider runs by default."""


Result = TypeVar("Result")
_cuda_thread: ThreadPoolExecutor | None = None
_cuda_thread_made = threading.Lock()


def on_cuda_thread(call: Callable[..., Result], *args: Any) -> Result:
    """``call(*args)`` run on the process's one CUDA thread (made on first use), its result or error
    returned here."""
    global _cuda_thread
    with _cuda_thread_made:
        if _cuda_thread is None:
            _cuda_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowrl-cuda")
    return _cuda_thread.submit(call, *args).result()


def bucket_of(rows: int) -> int:
    """The rows of the graph a call of ``rows`` runs in: the next power of two, at most :data:`LARGEST_BUCKET`."""
    return min(1 << max(rows - 1, 0).bit_length(), LARGEST_BUCKET)


def buckets_up_to(rows: int) -> tuple[int, ...]:
    """Every bucket a call of 1 to ``rows`` rows can run in, smallest first: the graphs to capture at warm-up."""
    return tuple(1 << k for k in range(bucket_of(rows).bit_length()))


@dataclass
class _Bucket:
    binding: Any  # onnxruntime.IOBinding, its inputs and output bound to the buffers below
    inputs: dict[str, Any]  # input name -> onnxruntime.OrtValue on the GPU
    output: Any  # onnxruntime.OrtValue on the GPU; kept here so that it lives as long as the binding
    options: Any  # onnxruntime.RunOptions naming the bucket's gpu_graph_id


class CudaGraphs:
    """``run(obs, noise)`` as :meth:`OnnxPolicy.run <flowrl_deploy.policy.OnnxPolicy.run>` does it, each
    bucket of rows replayed from a CUDA graph of its own (captured on its first call).

    ``model`` is the policy graph's bytes, ``inputs`` the width of each of its inputs by name (``obs``,
    and ``noise`` where it takes one), ``output`` its output's name and width. Raises
    :class:`~flowrl_deploy.errors.FlowRLError` where onnxruntime's CUDA provider does not start with
    graphs on."""

    def __init__(
        self, model: bytes, inputs: Mapping[str, int], output: tuple[str, int], *, threads: int, name: str
    ) -> None:
        self._ort = import_onnxruntime()
        self.session = make_session(model, providers=[GRAPH_PROVIDER], threads=threads, name=name)
        self._widths = dict(inputs)
        self._output, self._act_dim = output
        self._buckets: dict[int, _Bucket] = {}

    @classmethod
    def for_policy(cls, model: bytes, policy: OnnxPolicy, *, threads: int, name: str) -> CudaGraphs:
        """The graphs of ``policy``, loaded from the file's bytes ``model``."""
        widths = {OBS_INPUT: policy.contract.obs_dim, NOISE_INPUT: policy.contract.act_dim}
        inputs = {input_name: widths[input_name] for input_name in policy.input_names}
        return cls(model, inputs, (policy.output_name, policy.contract.act_dim), threads=threads, name=name)

    def run(self, obs: npt.NDArray[np.float32], noise: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        """Actions [B, act_dim] for inputs checked as the server checks them (see ``OnnxPolicy.run``),
        run on :func:`on_cuda_thread`."""
        feeds = {OBS_INPUT: obs} if noise is None else {OBS_INPUT: obs, NOISE_INPUT: noise}
        return on_cuda_thread(self._run, feeds)

    def _run(self, feeds: dict[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        rows = len(feeds[OBS_INPUT])
        if rows <= LARGEST_BUCKET:
            return self._replay(feeds)
        starts = range(0, rows, LARGEST_BUCKET)
        chunks = [{k: v[i : i + LARGEST_BUCKET] for k, v in feeds.items()} for i in starts]
        return np.concatenate([self._replay(chunk) for chunk in chunks])

    def _replay(self, feeds: dict[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        rows = len(feeds[OBS_INPUT])
        size = bucket_of(rows)
        bucket = self._buckets.get(size) or self._bind(size)
        for name, value in bucket.inputs.items():
            given = feeds[name]
            if rows < size:  # the rows past the call's stay zeros in a fresh array: none of another call's
                given = np.concatenate([given, np.zeros((size - rows, given.shape[1]), np.float32)])
            value.update_inplace(np.ascontiguousarray(given))
        self.session.run_with_iobinding(bucket.binding, bucket.options)
        return bucket.binding.copy_outputs_to_cpu()[0][:rows]

    def _bind(self, size: int) -> _Bucket:
        """The buffers of a new bucket of ``size`` rows, bound; its graph is captured by its first run."""
        ort = self._ort

        def on_gpu(width: int) -> Any:
            return ort.OrtValue.ortvalue_from_shape_and_type([size, width], np.float32, DEVICE, 0)

        binding = self.session.io_binding()
        inputs = {name: on_gpu(width) for name, width in self._widths.items()}
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        output = on_gpu(self._act_dim)
        binding.bind_ortvalue_output(self._output, output)
        options = run_options()
        options.add_run_config_entry("gpu_graph_id", str(len(self._buckets) + 1))  # -1 would mean "no graph"
        self._buckets[size] = bucket = _Bucket(binding, inputs, output, options)
        return bucket
