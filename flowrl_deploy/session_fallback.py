"""A control session's fallback (no torch): the action of a tick without a fresh one in time
(:class:`FallbackPolicy`): ``hold`` (the last action), ``zeros`` (clipped into the action bounds) or
``local`` (the served ONNX policy run here, on the noise the server's session draws for the tick)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.noise import Seed, draw_noise, session_noise

if TYPE_CHECKING:
    from flowrl_deploy.client import PolicyInfo
    from flowrl_deploy.policy import OnnxPolicy

log = logging.getLogger("flowrl.client")


def _check_local_file(local_model: str | os.PathLike[str], model_version: str) -> None:
    """Warn when the local fallback's file is not the served one: the served ``model_version`` is
    ``v<generation>-<sha256 prefix of the served file>``. Matching contracts say only that the
    shapes, bounds and names agree; another seed's or checkpoint's weights have them too. Not an
    error: a server serving a checkpoint exports its own file, whose bytes may differ from yours."""
    served = model_version.partition("-")[2]
    local = hashlib.sha256(Path(local_model).read_bytes()).hexdigest()  # a policy file: a few MB at most
    if served and not local.startswith(served):
        log.warning(
            "the local fallback model %s (sha256 %s) is not the file the server serves (model version %s): "
            "the contracts match, but a fallback action may come from other weights than the server's; "
            "pass the served .onnx file",
            local_model,
            local[: len(served)],
            model_version,
        )


class FallbackPolicy:
    """What a :class:`~flowrl_deploy.session.ControlSession` acts on when no fresh action came in time.

    ``kind`` is ``hold``, ``zeros`` or ``local`` (checked by
    :func:`~flowrl_deploy.session_settings.check_session_settings`). A local fallback loads
    ``local_model`` once, on the CPU, refuses a file whose contract is not the served one (``info``),
    warns of one that is not the served file, and runs once on zeros so that the first tick falling back
    does not pay onnxruntime's first-run costs. Its noise follows the server's session: one block drawn
    every tick sent (:meth:`draw`), answered in time or not, restarted from the seed where the server restarts its own
    (:meth:`restart_noise`, :meth:`opening_refused`) and by a reset (:meth:`reseed`)."""

    def __init__(self, kind: str, local_model: str | os.PathLike[str], seed: Seed | None, info: PolicyInfo) -> None:
        self.kind = kind
        self.local: OnnxPolicy | None = None
        """The local fallback's policy; None for ``hold`` and ``zeros``."""
        self._act_dim = info.act_dim
        self._noise: np.random.Generator | None = None
        """The local fallback's noise, as the server's session draws it: one block every tick sent (answered
        in time or not), restarted from the seed by the request that opens the session on a stream, so that a
        fallback at tick t acts on the server's draw for tick t."""
        self._noise_from = 0  # the tick whose request last restarted the noise
        if kind == "local":
            from flowrl_deploy.policy import OnnxPolicy  # onnxruntime, loaded only for a local fallback

            # On the CPU: predictable, a CPU server's actions, and no competition for a GPU.
            self.local = OnnxPolicy(local_model, providers=["CPUExecutionProvider"])
            if self.local.takes_noise:
                self._noise = session_noise(seed)
            if self.local.contract_hash != info.contract_hash:
                diff = "; ".join(info.contract.differences(self.local.contract))
                raise FlowRLError(f"the local fallback model {local_model} is not the served policy ({diff})")
            _check_local_file(local_model, info.model_version)
            # One run on zeros now (drawing no noise), so that the first tick falling back, when the robot
            # is already late, does not pay onnxruntime's first-run costs.
            dims = self.local.contract
            zero_noise = np.zeros((1, dims.act_dim), np.float32) if self.local.takes_noise else None
            self.local.run(np.zeros((1, dims.obs_dim), np.float32), zero_noise)
        zeros = np.zeros(info.act_dim, np.float32)
        if len(info.action_low) == len(info.action_high) == info.act_dim:
            zeros = np.clip(zeros, info.action_low, info.action_high)  # bounds may exclude 0
        zeros.setflags(write=False)  # the session holds it as its last action: no caller edits it
        self.zeros = zeros
        """The ``zeros`` fallback's action (and ``hold``'s before any action): clipped into the bounds;
        read-only."""

    def action(
        self,
        obs: npt.NDArray[np.float32],
        noise: npt.NDArray[np.float32] | None,
        last_action: npt.NDArray[np.float32] | None,
    ) -> npt.NDArray[np.float32]:
        """The fallback action for ``obs``, with this tick's ``noise`` (:meth:`draw`) for a local policy;
        ``hold`` repeats ``last_action`` (the zeros before any)."""
        if self.local is not None:
            return self.local.run(obs[None], noise)[0]
        if self.kind == "hold" and last_action is not None:
            return last_action
        return self.zeros

    def draw(self) -> npt.NDArray[np.float32] | None:
        """This tick's local fallback noise, the block the server draws for it; None without a local
        fallback taking noise."""
        if self._noise is None:
            return None
        return draw_noise(self._noise, 1, self._act_dim)

    def undrawn(self) -> npt.NDArray[np.float32] | None:
        """The local fallback's noise for a tick not sent, for which the server draws nothing: zeros (a0 = 0,
        the policy's action from the middle of its noise), the session's noise left as it was."""
        return None if self._noise is None else np.zeros((1, self._act_dim), np.float32)

    def restart_noise(self, seed: Seed | None, opening: int, passed: int = 0) -> None:
        """Restart the local fallback's noise from the session's ``seed`` where the server restarts its
        own: with tick ``opening``'s request, which may open the session on its stream. ``passed`` ticks sent
        since (this one excluded) were drawn for on the server: their blocks are drawn and dropped."""
        if self._noise is None or seed is None:
            return
        self._noise = session_noise(seed)
        self._noise_from = opening
        for _ in range(passed):
            draw_noise(self._noise, 1, self._act_dim)

    def opening_refused(self, seed: Seed | None, refused: int, sent_after: int) -> None:
        """The server refused tick ``refused``'s request, which would have opened the session, before
        drawing for it: the next request it takes opens the session, so the noise restarts after ``refused``
        with the ``sent_after`` ticks sent since (this one excluded) drawn (unless a later request restarted
        it already). A tick not sent (``backlog``) draws nothing on the server."""
        if refused >= self._noise_from:
            self.restart_noise(seed, refused + 1, sent_after)

    def reseed(self, seed: Seed | None) -> None:
        """A reset to ``seed``: the local fallback's noise restarts from it, as the server's does."""
        if self._noise is not None:
            self._noise = session_noise(seed)
