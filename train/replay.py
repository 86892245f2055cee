"""A numpy ring buffer of transitions with the reference code's mixed sampling: most of each batch
uniform over the whole buffer, a share (20 % by default) from the most recent transitions.

The 80/20 rule is the reference code's ``ReplayMemory.sample``; the paper does not describe it, and
``recent_fraction=0`` (``--recent-fraction 0``) gives the paper's plain uniform replay. The reference
draws both parts without replacement and takes B − int(0.8·B) recent rows (52 of 256); this draws
with replacement and takes int(0.2·B) (51): a difference taken to be negligible, not measured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from flowrl_deploy.checkpoint import SavedTensors
from flowrl_deploy.errors import CheckpointError

FIELDS = ("obs", "action", "reward", "next_obs", "mask")


class Batch(NamedTuple):
    """A batch of transitions; ``mask`` is 0 after a true termination, 1 otherwise."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    mask: np.ndarray


class ReplayBuffer:
    @staticmethod
    def bytes_needed(obs_dim: int, act_dim: int, capacity: int) -> int:
        """Memory of a full buffer: float32 obs, action, reward, next obs and mask per transition."""
        return 4 * capacity * (2 * obs_dim + act_dim + 2)

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        capacity: int,
        seed: int = 0,
        recent_fraction: float = 0.2,
        recent_window: int = 2048,
    ) -> None:
        self.capacity, self.recent_fraction, self.recent_window = capacity, recent_fraction, recent_window
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, act_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.mask = np.zeros(capacity, dtype=np.float32)
        self.size = 0
        self.pos = 0  # next write index
        self.rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.reward[i], self.next_obs[i] = obs, action, reward, next_obs
        self.mask[i] = 0.0 if terminated else 1.0
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """Indices of a batch: ⌊recent_fraction·B⌋ from the newest ``recent_window``, the rest uniform."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        n_recent = int(batch_size * self.recent_fraction)
        uniform = self.rng.integers(0, self.size, size=batch_size - n_recent)
        window = min(self.recent_window, self.size)
        recent = (self.pos - 1 - self.rng.integers(0, window, size=n_recent)) % self.capacity
        return np.concatenate([uniform, recent])

    def sample(self, batch_size: int) -> Batch:
        idx = self.sample_indices(batch_size)
        return Batch(*(getattr(self, name)[idx] for name in FIELDS))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays of the filled part, JSON state: position, size, capacity); the sampler's RNG is :meth:`rng_state`."""
        arrays = {name: getattr(self, name)[: self.size] for name in FIELDS}
        return arrays, {"pos": self.pos, "size": self.size, "capacity": self.capacity}

    def rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], state: dict) -> None:
        """Fill the buffer from :meth:`state_dict`'s arrays and state. A checkpoint's saved replay (a
        :class:`~flowrl_deploy.checkpoint.SavedTensors`) is checked from its header, then read into the buffer a
        block at a time: a resume needs the buffer's memory and one block (at most 32 MiB), not twice the buffer."""
        size = int(state["size"])
        if any(n not in arrays for n in FIELDS):
            raise CheckpointError(f"saved replay buffer lacks {', '.join(n for n in FIELDS if n not in arrays)}")
        saved = isinstance(arrays, SavedTensors)
        shapes = {n: arrays.shape(n) if saved else np.shape(arrays[n]) for n in FIELDS}
        if state["capacity"] != self.capacity or any(shapes[n][:1] != (size,) for n in FIELDS):
            raise CheckpointError(
                f"saved replay buffer (capacity {state['capacity']}, {size} transitions) does not fit this "
                f"run's buffer (capacity {self.capacity}); resume with the run's own --buffer-size"
            )
        for name in FIELDS:  # all checked before any is copied: a refused file leaves the buffer as it was
            if shapes[name][1:] != (row := getattr(self, name).shape[1:]):
                raise CheckpointError(
                    f"saved replay buffer's {name} has rows of shape {shapes[name][1:]}, this run's {row}"
                )
        for name in FIELDS:
            if saved:
                arrays.copy_into(name, getattr(self, name)[:size])
            else:
                getattr(self, name)[:size] = arrays[name]
        self.size, self.pos = size, int(state["pos"])
