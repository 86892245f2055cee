"""An exported policy graph run with onnxruntime, without torch: :class:`OnnxPolicy` (``act(obs, noise)``),
:class:`SeededPolicy` (``act(obs)``, its noise drawn as a seeded server session draws it) and
:func:`one_observation`. Shared by export verification, the server, ``flowrl eval`` and the client's
local fallback policy; the session they run in is :func:`~flowrl_deploy.ort.make_session`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from flowrl_deploy.contract import NOISE_INPUT, OBS_INPUT, PolicyContract, contract_from_metadata
from flowrl_deploy.errors import FlowRLError, SpecError
from flowrl_deploy.noise import Seed, draw_noise, session_noise
from flowrl_deploy.onnxfile import read_policy_file, unlike_a_policy
from flowrl_deploy.ort import ModelLoadError, make_session, run_options

if TYPE_CHECKING:  # for the hints only: onnxruntime is imported where it is used, by import_onnxruntime
    import onnxruntime as ort


Tensor = tuple[str, Sequence[int | str | None]]
"""A graph input or output: its name and shape (a dimension is a size, a symbolic name or None)."""


def check_graph_matches_contract(
    contract: PolicyContract, inputs: Sequence[Tensor], outputs: Sequence[Tensor], name: str
) -> None:
    """The graph's tensors must be the ones its contract promises (a hand-edited file may differ)."""
    input_names = [tensor for tensor, _ in inputs]
    output_name = outputs[0][0] if outputs else ""
    if sorted(input_names) != sorted(contract.input_names) or output_name != contract.output_name:
        raise FlowRLError(
            f"{name}: its graph has inputs {input_names} and output {output_name!r}, "
            f"but its contract promises {list(contract.input_names)} and {contract.output_name!r}"
        )
    widths = {OBS_INPUT: contract.obs_dim, NOISE_INPUT: contract.act_dim, contract.output_name: contract.act_dim}
    for tensor, shape in (*inputs, *outputs):
        width = shape[-1] if shape else None
        if isinstance(width, int) and tensor in widths and width != widths[tensor]:
            raise FlowRLError(
                f"{name}: its {tensor} tensor has {width} columns, but its contract says {widths[tensor]}"
            )


class OnnxPolicy:
    """An exported FlowRL policy: ``act(obs, noise)`` → actions already in the env's bounds.

    ``act`` checks its inputs against the policy contract before onnxruntime sees them and raises
    :class:`~flowrl_deploy.codec.TensorError` (a :class:`FlowRLError`) in the server's words for the
    same mistakes: a shape other than [obs_dim] or [B >= 1, obs_dim], NaN or Inf, or values that are
    not real numbers (booleans, complex, text, ragged sequences); likewise for the noise.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: list[str] | None = None,
        threads: int = 1,
        name: str | None = None,
    ) -> None:
        """``model``: a path, or the file's bytes (then ``name`` names it in errors)."""
        if not isinstance(model, (str, os.PathLike, bytes)):
            raise FlowRLError(f"model must be an ONNX file's path or its bytes, got {type(model).__name__}")
        if not isinstance(model, bytes):  # read here, as the server reads it: a pipe is never opened blocking
            name, model = name or str(model), read_policy_file(model)
        name = name or "model"
        from flowrl_deploy import codec  # here, not at the top: the CLI imports this module and starts without protobuf

        self._codec = codec
        try:
            self.session: ort.InferenceSession = make_session(model, providers=providers, threads=threads, name=name)
        except ModelLoadError as exc:  # flowrl inspect's words where they apply: not ONNX, not a policy
            raise unlike_a_policy(model, name) or exc from exc.__cause__
        self._run_options = run_options()
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.contract, self.provenance = contract_from_metadata(metadata)
        except SpecError as exc:
            raise FlowRLError(f"{name}: {exc}") from exc
        self.input_names: list[str] = [i.name for i in self.session.get_inputs()]
        self.output_name: str = self.session.get_outputs()[0].name
        check_graph_matches_contract(
            self.contract,
            [(i.name, i.shape) for i in self.session.get_inputs()],
            [(o.name, o.shape) for o in self.session.get_outputs()],
            name,
        )
        obs_batch = next((i.shape[0] for i in self.session.get_inputs() if i.name == OBS_INPUT and i.shape), None)
        self.fixed_batch: int | None = obs_batch if isinstance(obs_batch, int) and obs_batch > 0 else None
        """The batch size of a graph exported with ``--batch N`` (``act`` pads and splits to it); None: dynamic."""

    @property
    def contract_hash(self) -> str:
        return self.contract.hash()

    @property
    def takes_noise(self) -> bool:
        return NOISE_INPUT in self.input_names

    def act(self, obs: npt.ArrayLike, noise: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Actions [B, act_dim] for observations [B, obs_dim] (and noise [B, act_dim] if stochastic);
        one observation [obs_dim] (noise [act_dim]) gives one action [act_dim], as ``PolicyClient.act`` does."""
        codec, c = self._codec, self.contract
        feeds = {OBS_INPUT: codec.policy_batch(obs, c.obs_dim, name="obs")}
        rows = len(feeds[OBS_INPUT])
        if self.takes_noise:
            if noise is None:
                raise FlowRLError("this policy graph takes a noise input; pass noise [B, act_dim]")
            feeds[NOISE_INPUT] = noise_batch = codec.policy_batch(noise, c.act_dim, name="noise")
            if len(noise_batch) != rows:
                raise codec.TensorError(f"noise: batch of {len(noise_batch)} does not match obs's batch of {rows}")
        elif noise is not None:
            raise FlowRLError("this policy is deterministic (no noise input); pass noise=None")
        action = self.run(feeds[OBS_INPUT], feeds.get(NOISE_INPUT))
        return action[0] if np.ndim(obs) == 1 else action

    def run(self, obs: npt.NDArray[np.float32], noise: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        """Actions [B, act_dim] for inputs already checked as :meth:`act` checks them (float32
        [B, obs_dim] of finite numbers, and noise [B, act_dim] exactly when the graph takes it):
        the server's decoded batches, which would otherwise be checked twice on its hot path."""
        feeds = {OBS_INPUT: obs} if noise is None else {OBS_INPUT: obs, NOISE_INPUT: noise}
        if self.fixed_batch is not None and len(obs) != self.fixed_batch:
            return self._act_in_fixed_batches(feeds)
        return self.session.run([self.output_name], feeds, self._run_options)[0]

    def _act_in_fixed_batches(self, feeds: dict[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """Run a fixed-batch graph on any number of rows: chunks of ``fixed_batch``, the last zero-padded."""
        b, n = self.fixed_batch, feeds[OBS_INPUT].shape[0]
        padded = -(-n // b) * b
        feeds = {k: np.concatenate([v, np.zeros((padded - n, *v.shape[1:]), np.float32)]) for k, v in feeds.items()}
        chunks = [
            self.session.run([self.output_name], {k: v[i : i + b] for k, v in feeds.items()}, self._run_options)[0]
            for i in range(0, padded, b)
        ]
        return np.concatenate(chunks)[:n]


def one_observation(obs: npt.ArrayLike, obs_dim: int) -> npt.NDArray[np.float32]:
    """``obs``, one observation [obs_dim], as the float32 [1, obs_dim] batch of finite numbers a policy
    takes; :class:`~flowrl_deploy.codec.TensorError` otherwise, in the words ``OnnxPolicy.act`` uses."""
    from flowrl_deploy import codec  # here, not at the top: the CLI imports this module and starts without protobuf

    array = codec.as_float32(obs, name="obs")
    if array.shape != (obs_dim,):
        raise codec.TensorError(f"obs: shape {list(array.shape)} is not [{obs_dim}], one observation")
    return codec.policy_batch(array, obs_dim, name="obs")


class SeededPolicy:
    """An exported policy as ``act(obs) -> action`` for one observation, its noise drawn as a server
    session seeded ``seed`` draws it (:func:`~flowrl_deploy.noise.session_noise`, one
    :func:`~flowrl_deploy.noise.draw_noise` block per action). ``flowrl eval`` acts through it; a
    client's local fallback draws the same stream, one block every tick sent (see
    :class:`~flowrl_deploy.session.ControlSession`), so a seeded ``flowrl control`` run reproduces
    ``flowrl eval``, fallbacks or not, while the local model computes the served actions.

    ``deterministic``: a0 = 0 instead of a draw (a graph exported with ``--deterministic`` takes no
    noise at all). ``providers`` applies when ``model`` is a path, not an :class:`OnnxPolicy`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | OnnxPolicy,
        seed: Seed | None = 0,
        *,
        deterministic: bool = False,
        providers: list[str] | None = None,
    ) -> None:
        self.policy = model if isinstance(model, OnnxPolicy) else OnnxPolicy(model, providers=providers)
        self.deterministic = deterministic
        self.reseed(seed)

    def reseed(self, seed: Seed | None) -> None:
        """Restart the noise as a session seeded ``seed`` (None: OS entropy)."""
        self._noise = session_noise(seed)

    def act(self, obs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The action [act_dim] for one observation [obs_dim]; a :class:`~flowrl_deploy.codec.TensorError`
        for another shape, NaN or Inf, or values that are not real numbers."""
        batch = one_observation(obs, self.policy.contract.obs_dim)
        act_dim = self.policy.contract.act_dim
        if not self.policy.takes_noise:
            noise = None
        elif self.deterministic:
            noise = np.zeros((1, act_dim), np.float32)
        else:
            noise = draw_noise(self._noise, 1, act_dim)
        return self.policy.run(batch, noise)[0]

    def __call__(self, obs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return self.act(obs)
