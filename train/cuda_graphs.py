"""FlowRL's update replayed from CUDA graphs.

At batch 256 and width 512 one update is some hundreds of small kernels, and on a GPU launching
them one at a time from Python takes longer than running them. A CUDA graph records the kernels of
the critic step and of the delayed actor step once and replays each with a single launch. The
graphs run the same kernels on the same tensors as the eager update (the networks' weights, Adam's
moments, torch's CUDA generator), so training is unchanged; only the batch is copied into fixed
input tensors first.

The recipe is PyTorch's whole-network capture: a few eager updates on a side stream first (they
create Adam's state and do the other lazy set-up outside the capture), then capture with gradients
set to None, so that backward writes fresh gradient buffers that belong to the graphs. Between
replays those buffers may hold the other graph's scratch data: read gradients inside a step only.
Copying a batch in waits for the previous replay to finish, as the eager update's copy does.

Python's cyclic garbage collector is paused while a graph captures: a collection there may destroy an
unreachable object's CUDA graph or memory (another agent's, a finished run's), a synchronizing CUDA call
that invalidates the capture (``cudaErrorStreamCaptureInvalidated``), and the process's CUDA generator
with it. A suite run on an H100 failed so, in a test that passed alone (session 25); that this was the
cause is a hypothesis, which ``tests/train/test_train_cuda.py`` tests where a GPU is present.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from flowrl_deploy.train.replay import Batch

if TYPE_CHECKING:
    from flowrl_deploy.train.algorithm import FlowRL


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection inside the block (see the module docstring)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class CudaGraphUpdate:
    """``update(batch)`` for a FlowRL agent on a CUDA device; see the module docstring."""

    EAGER_WARMUP = 4  # eager updates before capture (at least policy_delay, so both steps have run)

    def __init__(self, agent: FlowRL) -> None:
        self.agent = agent
        self.eager_left = max(self.EAGER_WARMUP, agent.cfg.policy_delay)
        self.side_stream = torch.cuda.Stream(agent.device)
        self.inputs: list[torch.Tensor] = []
        self.critic_graph: torch.cuda.CUDAGraph | None = None
        self.actor_graph: torch.cuda.CUDAGraph | None = None
        self.critic_metrics: dict[str, torch.Tensor] = {}
        self.actor_metrics: dict[str, torch.Tensor] = {}
        self.min_q_beta: torch.Tensor | None = None  # the critic graph's output that the actor graph reads

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.eager_left > 0:
            self.eager_left -= 1
            return self._on_side_stream(batch)
        if self.critic_graph is None:
            self._capture(batch)
        for static, array in zip(self.inputs, batch, strict=True):
            static.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))
        self.critic_graph.replay()
        metrics = dict(self.critic_metrics)
        if self.agent.count_update():
            self.actor_graph.replay()
            metrics.update(self.actor_metrics)
        return {k: v.clone() for k, v in metrics.items()}  # the next replay overwrites the graph's outputs

    def _on_side_stream(self, batch: Batch) -> dict[str, torch.Tensor]:
        current = torch.cuda.current_stream(self.agent.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            metrics = self.agent.eager_update(batch)
        current.wait_stream(self.side_stream)
        return metrics

    def _capture(self, batch: Batch) -> None:
        agent = self.agent
        self.inputs = [torch.as_tensor(np.asarray(x, dtype=np.float32), device=agent.device).clone() for x in batch]
        obs, action, reward, next_obs, mask = self.inputs
        groups = [group for name in agent.OPTIMIZERS for group in getattr(agent, name).param_groups]
        for group in groups:
            group["capturable"] = True  # only checked at capture (fused Adam keeps its step count on the GPU)
        critic_graph, actor_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        try:
            with collector_paused(), torch.cuda.device(agent.device):  # capture runs on the current device's stream
                with torch.cuda.graph(critic_graph):
                    self.critic_metrics, self.min_q_beta = agent.critic_step(obs, action, reward, next_obs, mask)
                # the actor graph reads min_q_beta from the critic graph's memory pool, which it shares
                with torch.cuda.graph(actor_graph, pool=critic_graph.pool()):
                    self.actor_metrics = agent.actor_step(obs, action, self.min_q_beta)
        finally:
            for group in groups:
                group["capturable"] = False  # checkpoints stay loadable on a CPU
        self.critic_graph, self.actor_graph = critic_graph, actor_graph  # only once both are captured
