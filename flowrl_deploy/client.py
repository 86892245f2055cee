"""Client SDK of ``flowrl.v1.PolicyService`` (no torch): :class:`PolicyClient` and its unary calls
(what it is given is checked by :mod:`flowrl_deploy.connection`, the TLS files by
:mod:`flowrl_deploy.tls`).

client = PolicyClient("localhost:50051")
action = client.act(obs)                       # one unary call
with client.session(period_s=0.02, seed=0, fallback="hold") as control:
    action = control.act(obs)                  # every control tick; never later than the deadline

``client.session(...)`` opens a :class:`~flowrl_deploy.session.ControlSession`, the control loop's
stream, which lives in :mod:`flowrl_deploy.session` with its :class:`~flowrl_deploy.session.WatchdogError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowrl_deploy.codec import decode, encode
from flowrl_deploy.connection import checked_target, checked_timeout, checked_token, is_flag
from flowrl_deploy.contract import CONTRACT_HASH_FORM as CONTRACT_HASH_FORM  # defined there since the server checks
from flowrl_deploy.contract import PolicyContract
from flowrl_deploy.contract import checked_contract_hash as checked_contract_hash  # pins too; still imported from here
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.moved import moved_names
from flowrl_deploy.noise import Seed, checked_seed
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.tls import check_key_pair, read_certificates

if TYPE_CHECKING:  # the names that moved to flowrl_deploy.session, typed for old code; __getattr__ loads them
    from flowrl_deploy.session import DEFAULT_MAX_TIMINGS as DEFAULT_MAX_TIMINGS
    from flowrl_deploy.session import DEFAULT_RESET_TIMEOUT_S as DEFAULT_RESET_TIMEOUT_S
    from flowrl_deploy.session import FALLBACKS as FALLBACKS
    from flowrl_deploy.session import TRANSIENT as TRANSIENT
    from flowrl_deploy.session import CallTiming as CallTiming
    from flowrl_deploy.session import ControlSession as ControlSession
    from flowrl_deploy.session import WatchdogError as WatchdogError

_Reply = TypeVar("_Reply", bound=Message)  # a unary RPC's reply (PolicyClient._call)

HTTP_PROXY_OPTION = "grpc.enable_http_proxy"
"""gRPC sends every call through the proxy that grpc_proxy, https_proxy or http_proxy names, even to
127.0.0.1 (no_proxy aside): a proxy then read the token in clear (without TLS), and added a hop to
each control tick. Set to 0 on every channel the package makes; PolicyClient(use_proxy=True) sets 1."""

CHANNEL_OPTIONS = (
    # reconnect quickly after a server restart (gRPC's default first backoff is 1 s)
    ("grpc.initial_reconnect_backoff_ms", 50),
    # the least time one connection attempt gets (gRPC reads it so, despite its name; default 20 s):
    # at 50 (clamped to 100 ms) a link whose TCP and HTTP/2 set-up took longer failed every first call;
    # longer, a call to a host that takes the connection but never answers waits out its deadline
    # (DEADLINE_EXCEEDED, not UNAVAILABLE) for as long, and a healed partition is noticed that late
    ("grpc.min_reconnect_backoff_ms", 2_000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    # ping every 10 s, with calls in flight or none, and drop the connection when a ping goes unanswered
    # for 5 s: a server gone without closing it (a cut cable, a power loss) was noticed only by call
    # deadlines (`flowrl serve` takes pings every 5 s; gRPC servers by default every 5 minutes only)
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # else the pings stop after 2 without data
    # a keepalive ping joins a flow-control ping in flight, which waited 60 s for its answer (gRPC
    # 1.85): a stopped server was noticed after 61-68 s, not 15
    ("grpc.http2.ping_timeout_ms", 5_000),
    (HTTP_PROXY_OPTION, 0),
)


LB_POLICIES = ("pick_first", "round_robin")
"""Load-balancing policies a :class:`PolicyClient` may ask its channel for, over the addresses its
target resolves to (a ``dns:///`` name's records, an ``ipv4:`` list): gRPC's default ``pick_first``
sends every call to one address, falling over to the next when it fails; ``round_robin`` spreads
the calls over all of them (a session's stream stays on the one it opened on)."""


class ServiceError(FlowRLError):
    """The server refused a call; ``code`` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


class ContractMismatchError(ServiceError):
    """The served policy's contract is not the one pinned (its ``code`` is FAILED_PRECONDITION, as the
    server's refusal of a pin): a :class:`~flowrl_deploy.session.ControlSession` raises it when it is made
    with a pin the server does not serve, and from ``act``/``reset`` when the server it reconnected to
    serves another contract than the one the session pinned (or read when it opened)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


class ClientClosedError(FlowRLError):
    """A call on a :class:`PolicyClient` after its ``close()`` (or on a session of that client)."""


def service_error(exc: grpc.RpcError) -> ServiceError:
    return ServiceError(exc.code(), exc.details() or "")


@dataclass(frozen=True)
class PolicyInfo:
    """What ``GetSpec`` says about the served policy."""

    obs_dim: int
    act_dim: int
    action_low: npt.NDArray[np.float32]
    action_high: npt.NDArray[np.float32]
    obs_names: tuple[str, ...]
    action_names: tuple[str, ...]
    flow_steps: int
    solver: str
    takes_noise: bool
    control_period_s: float
    env_id: str
    model_version: str
    contract_hash: str
    contract: PolicyContract
    max_batch: int
    server_version: str = ""
    """The server's flowrl-deploy release; '' from an older server."""


def pin_mismatch(
    info: PolicyInfo, contract_hash: str, contract: PolicyContract | None = None, target: str = "HOST:PORT"
) -> str:
    """Why a pin of ``contract_hash`` (checked; '' if none) or ``contract`` does not fit the served
    policy ``info`` (GetSpec of ``target``), naming the fields that differ where the contract is known;
    '' when it fits."""
    pinned = contract_hash or (contract.hash() if contract is not None else "")
    if not pinned or pinned == info.contract_hash.lower():
        return ""
    mismatch = f"pinned policy contract {pinned}, the server serves {info.contract_hash}"
    if contract is not None and contract.hash() == pinned:
        return f"{mismatch} (server != client: {'; '.join(info.contract.differences(contract))})"
    return (
        f"{mismatch}; only the hash was pinned, so the fields that differ cannot be named: compare "
        f"`flowrl inspect FILE` of the policy you expect with `flowrl inspect --server {target}`"
    )


TLS_ARGUMENTS = ("tls_ca", "tls_cert", "tls_key")
TLS_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key")
"""How errors name the TLS files: by :class:`PolicyClient`'s arguments, or by the commands' flags."""


def channel_credentials(
    tls_ca: str | os.PathLike[str] = "",
    tls_cert: str | os.PathLike[str] = "",
    tls_key: str | os.PathLike[str] = "",
    names: tuple[str, str, str] = TLS_ARGUMENTS,
) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files: the server's CA, and for mTLS the client's cert and key.

    The files are checked here, each error naming its file and setting as ``names`` gives them
    (:data:`TLS_ARGUMENTS` or :data:`TLS_FLAGS`): gRPC would only fail the handshake
    (UNAVAILABLE), or abort the process for a certificate without its key."""
    ca_name, *pair_names = names
    ca = read_certificates(tls_ca, ca_name) if tls_ca else None
    if not (tls_cert or tls_key):
        return grpc.ssl_channel_credentials(ca)
    cert, key = check_key_pair(tls_cert, tls_key, tuple(pair_names))
    return grpc.ssl_channel_credentials(ca, key, cert)


class PolicyClient:
    """A connection to a ``flowrl serve`` server.

    It may be shared between threads (its calls keep no state of their own; a gRPC channel is
    thread-safe); a :class:`~flowrl_deploy.session.ControlSession` belongs to one control loop, its calls
    from any thread but one at a time.
    After :meth:`close` every call, and every tick of its sessions, raises :class:`ClientClosedError`.
    Its channel pings the server every 10 s (5 s to answer), so a vanished server ends its streams.

    Args:
        target: ``host:port``, ``[IPv6]:port``, or a gRPC naming scheme: ``dns:///name:port`` (all
            of a name's addresses, re-resolved by gRPC: a headless Service), ``ipv4:a:port,b:port``,
            ``ipv6:[a]:port,…``, ``unix:PATH`` (:func:`~flowrl_deploy.connection.checked_target`).
        token: the server's shared secret, if it has one ("" or None: none, so ``os.environ.get(...)`` fits).
        tls_ca / tls_cert / tls_key: PEM paths for TLS (CA) and mTLS (client cert and key).
        timeout_s: default deadline of each unary call, in (0, 86400] s; None: no deadline. A
            method's own ``timeout_s`` (None: this default) is checked the same way.
        target_name: how errors about ``target`` name it. ``flowrl`` commands pass their flag,
            ``--server``; errors about the token and the TLS files then name their flags too
            (``--token``, ``--tls-ca`` ...), else these arguments (``token``, ``tls_ca`` ...).
        lb_policy: one of :data:`LB_POLICIES` over the target's addresses ('': gRPC's ``pick_first``).
        use_proxy: connect through the HTTP CONNECT proxy that ``grpc_proxy``, ``https_proxy`` or
            ``http_proxy`` names (``no_proxy`` excepted), as gRPC does by default; False: directly,
            whatever the environment says (a proxy reads a token sent without TLS).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = "",
        tls_ca: str | os.PathLike[str] = "",
        tls_cert: str | os.PathLike[str] = "",
        tls_key: str | os.PathLike[str] = "",
        timeout_s: float | None = 1.0,
        target_name: str = "target",
        lb_policy: str = "",
        use_proxy: bool = False,
    ) -> None:
        self.target = checked_target(target, target_name)
        if lb_policy and lb_policy not in LB_POLICIES:
            raise FlowRLError(f"lb_policy {lb_policy!r}: one of {', '.join(LB_POLICIES)} ('': gRPC's pick_first)")
        options = (*CHANNEL_OPTIONS, ("grpc.lb_policy_name", lb_policy)) if lb_policy else CHANNEL_OPTIONS
        if use_proxy:
            options = tuple((key, 1 if key == HTTP_PROXY_OPTION else value) for key, value in options)
        self.timeout_s = None if timeout_s is None else checked_timeout(timeout_s)
        flags = is_flag(target_name)
        token = checked_token("" if token is None else token, "--token" if flags else "token")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls_ca or tls_cert or tls_key:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key, TLS_FLAGS if flags else TLS_ARGUMENTS)
            self.channel = grpc.secure_channel(target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        # made now, with the channel: a stub made on a channel another thread just closed crashes the process
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.closed = False
        """Whether :meth:`close` was called: every call then raises :class:`ClientClosedError`."""

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` if :meth:`close` was called."""
        if self.closed:
            raise ClientClosedError(
                f"the PolicyClient of {self.target} is closed (close() was called): make a new PolicyClient"
            )

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Around an RPC on :attr:`channel`: refuse it once the client is closed, also when another
        thread closed it meanwhile (gRPC's raw ``ValueError``; a stub made on a closed channel
        even crashes the process)."""
        self.check_open()
        try:
            yield
        except ValueError:
            self.check_open()
            raise

    def _call(self, method: Callable[..., _Reply], request: Message, timeout_s: float | None) -> _Reply:
        """``method``'s reply to ``request`` within ``timeout_s`` (None: the client's), a failed call raised as
        :class:`ServiceError`."""
        timeout = self.timeout_s if timeout_s is None else checked_timeout(timeout_s)
        try:
            with self.calling():
                return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise service_error(exc) from None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the server's health is SERVING; raise :class:`FlowRLError` after ``timeout_s``."""
        timeout_s = checked_timeout(timeout_s)
        stub = self._health
        until = time.monotonic() + timeout_s
        why = ""
        while True:
            try:
                check_s = max(0.05, min(1.0, until - time.monotonic()))
                with self.calling():
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=check_s, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                why = f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            except grpc.RpcError as exc:
                why = f"{exc.code().name}: {exc.details() or ''}"
            if time.monotonic() > until:
                if why.startswith("DEADLINE_EXCEEDED"):  # waiting for the channel hides why: ask once more
                    try:
                        with self.calling():
                            stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    except grpc.RpcError as exc:
                        why = f"{exc.code().name}: {exc.details() or ''}"
                raise FlowRLError(
                    f"server {self.target} not SERVING after {timeout_s:g} s ({why}); is `flowrl serve` running there?"
                )
            time.sleep(0.05)

    def spec(self, timeout_s: float | None = None) -> PolicyInfo:
        reply: pb.GetSpecReply = self._call(self.stub.GetSpec, pb.GetSpecRequest(), timeout_s)
        return PolicyInfo(
            obs_dim=reply.obs_dim,
            act_dim=reply.act_dim,
            action_low=np.asarray(reply.action_low, np.float32),
            action_high=np.asarray(reply.action_high, np.float32),
            obs_names=tuple(reply.obs_names),
            action_names=tuple(reply.action_names),
            flow_steps=reply.flow_steps,
            solver=reply.solver,
            takes_noise=reply.takes_noise,
            control_period_s=reply.control_period_s,
            env_id=reply.env_id,
            model_version=reply.model_version,
            contract_hash=reply.contract_hash,
            contract=PolicyContract.from_dict(json.loads(reply.contract_json)),
            max_batch=reply.max_batch,
            server_version=reply.server_version,
        )

    def act_reply(
        self,
        obs: npt.ArrayLike,
        *,
        session_id: str = "",
        seed: Seed | None = None,
        contract_hash: str = "",
        timeout_s: float | None = None,
    ) -> pb.ActReply:
        """The full ``Act`` reply (action tensor, model version, server timing). ``contract_hash`` pins the
        served contract (16 hex digits, any case; '' none): a malformed one is refused before the call
        (:class:`FlowRLError`), one the server does not serve by it (:class:`ServiceError`)."""
        pin = checked_contract_hash(contract_hash)
        request = pb.ActRequest(obs=encode(obs, name="obs"), session_id=session_id, contract_hash=pin)
        if checked_seed(seed) is not None:
            request.seed = seed
        return self._call(self.stub.Act, request, timeout_s)

    def act(
        self,
        obs: npt.ArrayLike,
        *,
        session_id: str = "",
        seed: Seed | None = None,
        contract_hash: str = "",
        timeout_s: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Actions for ``obs`` ([obs_dim] → [act_dim], [B, obs_dim] → [B, act_dim]); the arguments
        as :meth:`act_reply`'s."""
        reply = self.act_reply(obs, session_id=session_id, seed=seed, contract_hash=contract_hash, timeout_s=timeout_s)
        return decode(reply.action, name="action")

    def reset(
        self,
        session_id: str,
        seed: Seed | None = None,
        *,
        contract_hash: str = "",
        contract_json: str = "",
        timeout_s: float | None = None,
    ) -> str:
        """Open or restart a session (reseeding its noise); returns the model version. ``contract_json``
        (the pinned contract's JSON) lets the server name the fields that differ from its own; a malformed
        ``contract_hash`` is refused as :meth:`act_reply` refuses it."""
        pin = checked_contract_hash(contract_hash)
        request = pb.ResetRequest(session_id=session_id, contract_hash=pin, contract_json=contract_json)
        if checked_seed(seed) is not None:
            request.seed = seed
        return self._call(self.stub.Reset, request, timeout_s).model_version

    def stats(self) -> pb.GetStatsReply:
        return self._call(self.stub.GetStats, pb.GetStatsRequest(), None)

    def reload(self, path: str = "", timeout_s: float = 60.0) -> tuple[str, str]:
        """Ask the server to swap in ``path`` (default: its own file); returns (new, previous) versions."""
        reply: pb.ReloadReply = self._call(self.stub.Reload, pb.ReloadRequest(path=path), timeout_s)
        return reply.model_version, reply.previous_version

    def session(
        self,
        *,
        period_s: float,
        deadline_s: float | None = None,
        session_id: str = "",
        seed: Seed | None = None,
        fallback: str = "hold",
        local_model: str | os.PathLike[str] = "",
        max_consecutive_misses: int | None = None,
        max_staleness_s: float | None = None,
        max_rate: float | None = None,
        initial_action: npt.ArrayLike | None = None,
        contract_hash: str | None = "",
        contract: PolicyContract | None = None,
        backoff_s: tuple[float, float] = (0.05, 1.0),
        reset_timeout_s: float | None = None,
        max_timings: int | None = 100_000,
    ) -> ControlSession:
        """A :class:`~flowrl_deploy.session.ControlSession` on this connection; the arguments as there
        (spelled out for IDEs; a test keeps them ControlSession's)."""
        arguments = {name: value for name, value in locals().items() if name != "self"}  # every argument
        from flowrl_deploy.session import ControlSession  # session.py imports this module

        return ControlSession(self, **arguments)

    def close(self) -> None:
        """Close the channel; every later call (and each session's) raises :class:`ClientClosedError`."""
        self.closed = True
        self.channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MOVED_TO_SESSION = frozenset(
    {"ControlSession", "WatchdogError", "CallTiming", "FALLBACKS", "TRANSIENT", "DEFAULT_MAX_TIMINGS",
     "DEFAULT_RESET_TIMEOUT_S"}
)  # fmt: skip
"""Names this module held until the control-loop session moved to :mod:`flowrl_deploy.session`."""


if not TYPE_CHECKING:  # type checkers read the moved names from imports; a module __getattr__ would pass any typo
    # Robot code written against earlier releases (``from flowrl_deploy.client import WatchdogError``) keeps
    # working, with a DeprecationWarning naming the new home.
    __getattr__ = moved_names(__name__, dict.fromkeys(MOVED_TO_SESSION, "flowrl_deploy.session"))
