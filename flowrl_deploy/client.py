"""Client SDK of ``flowrl.v1.PolicyService`` (no torch): :class:`PolicyClient` and :class:`ControlSession`.

client = PolicyClient("localhost:50051")
action = client.act(obs)                       # one unary call
with client.session(period_s=0.02, seed=0, fallback="hold") as control:
    action = control.act(obs)                  # every control tick; never later than the deadline
"""

from __future__ import annotations

import ipaddress
import json
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import numpy as np

from flowrl_deploy.codec import decode, encode
from flowrl_deploy.contract import PolicyContract
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.tls import check_key_pair, read_certificates

# Reconnect quickly after a server restart (gRPC's default first backoff is 1 s).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)
# Codes after which a control loop may carry on with its fallback; the others are mistakes to fix.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


class ServiceError(FlowRLError):
    """The server refused a call; ``code`` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


class WatchdogError(FlowRLError):
    """No fresh action for too long or too many times in a row: the robot should stop."""


def checked_seed(seed: int | None, name: str = "seed") -> int | None:
    """A noise seed travels as a uint64: refuse others with a clear error naming ``name`` (the
    argument or the flag), not protobuf's ValueError."""
    if seed is not None and not 0 <= seed < 2**64:
        raise FlowRLError(f"{name} must lie in [0, 2**64), got {seed}")
    return seed


_HOST = re.compile(r"[A-Za-z0-9._-]+")  # a host name or an IPv4 address
_PORT = re.compile(r"[0-9]{1,5}")


def checked_target(target: str) -> str:
    """``target`` when it is a server address gRPC reads as meant: ``host:port``, ``[IPv6]:port``
    or ``unix:PATH``. Anything else is refused naming --server: gRPC would wrap a negative port
    round to another one, take 443 for a missing port, or log its parser's trace."""

    def refused(why: str) -> FlowRLError:
        return FlowRLError(
            f"--server {target!r}: {why}; give host:port such as localhost:50051 (or [::1]:50051, unix:/path/to/socket)"
        )

    if not target:
        raise refused("empty")
    if target.startswith("unix:"):
        if not target.removeprefix("unix:").strip("/"):
            raise refused("no socket path after 'unix:'")
        return target
    if target.startswith("["):
        host, bracket, port = target[1:].partition("]")
        if not port.startswith(":"):
            raise refused("no ':port' after the bracketed IPv6 address" if bracket else "the '[' is not closed")
        port = port[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise refused(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port = target.rpartition(":")
        if not colon:
            raise refused("no port")
        if ":" in host:
            raise refused("more than one ':' (an IPv6 address goes in brackets)")
        if not _HOST.fullmatch(host):
            raise refused(f"{host!r} is not a host name or an IP address" if host else "no host")
    if not (_PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise refused(f"port {port} is not in 1-65535")
    return target


def _service_error(exc: grpc.RpcError) -> ServiceError:
    return ServiceError(exc.code(), exc.details() or "")


@dataclass(frozen=True)
class PolicyInfo:
    """What ``GetSpec`` says about the served policy."""

    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
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


@dataclass(frozen=True)
class CallTiming:
    """One control tick, as the client saw it."""

    seq: int
    source: str
    """'server' for a fresh served action, else the fallback used: 'hold', 'zeros' or 'local'."""
    round_trip_us: float
    server_us: float = 0.0
    """Receipt to reply on the server."""
    inference_us: float = 0.0
    clock_offset_us: float = 0.0
    """Server clock minus client clock, NTP-style: ((t1 - t0) + (t2 - t3)) / 2."""
    model_version: str = ""


def channel_credentials(tls_ca: str = "", tls_cert: str = "", tls_key: str = "") -> grpc.ChannelCredentials:
    """TLS credentials from PEM files: the server's CA, and for mTLS the client's cert and key.

    The files are checked here, each error naming its flag and file: gRPC would only fail the
    handshake (UNAVAILABLE), or abort the process for a certificate without its key."""
    ca = read_certificates(tls_ca, "--tls-ca") if tls_ca else None
    if not (tls_cert or tls_key):
        return grpc.ssl_channel_credentials(ca)
    cert, key = check_key_pair(tls_cert, tls_key)
    return grpc.ssl_channel_credentials(ca, key, cert)


class PolicyClient:
    """A connection to a ``flowrl serve`` server.

    Args:
        target: ``host:port``, ``[IPv6]:port`` or ``unix:PATH``.
        token: the server's shared secret, if it has one.
        tls_ca / tls_cert / tls_key: PEM paths for TLS (CA) and mTLS (client cert and key).
        timeout_s: default deadline of each unary call.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        timeout_s: float = 1.0,
    ) -> None:
        self.target = checked_target(target)
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls_ca or tls_cert or tls_key:
            self.channel = grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(target, CHANNEL_OPTIONS)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)

    def _call(self, method, request, timeout_s: float | None):
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _service_error(exc) from None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the server's health is SERVING; raise :class:`FlowRLError` after ``timeout_s``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        until = time.monotonic() + timeout_s
        why = ""
        while True:
            try:
                check_s = max(0.05, min(1.0, until - time.monotonic()))
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=check_s, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                why = f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            except grpc.RpcError as exc:
                why = f"{exc.code().name}: {exc.details() or ''}"
            if time.monotonic() > until:
                if why.startswith("DEADLINE_EXCEEDED"):  # waiting for the channel hides why: ask once more
                    try:
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    except grpc.RpcError as exc:
                        why = f"{exc.code().name}: {exc.details() or ''}"
                raise FlowRLError(
                    f"server {self.target} not SERVING after {timeout_s:g} s ({why}); is `flowrl serve` running there?"
                )
            time.sleep(0.05)

    def spec(self, timeout_s: float | None = None) -> PolicyInfo:
        reply = self._call(self.stub.GetSpec, pb.GetSpecRequest(), timeout_s)
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
        )

    def act_reply(
        self,
        obs: np.ndarray,
        *,
        session_id: str = "",
        seed: int | None = None,
        contract_hash: str = "",
        timeout_s: float | None = None,
    ) -> pb.ActReply:
        """The full ``Act`` reply (action tensor, model version, server timing)."""
        request = pb.ActRequest(obs=encode(obs), session_id=session_id, contract_hash=contract_hash)
        if checked_seed(seed) is not None:
            request.seed = seed
        return self._call(self.stub.Act, request, timeout_s)

    def act(self, obs: np.ndarray, **kwargs) -> np.ndarray:
        """Actions for ``obs`` ([obs_dim] → [act_dim], [B, obs_dim] → [B, act_dim])."""
        return decode(self.act_reply(obs, **kwargs).action, name="action")

    def reset(self, session_id: str, seed: int | None = None, *, contract_hash: str = "") -> str:
        """Open or restart a session (reseeding its noise); returns the model version."""
        request = pb.ResetRequest(session_id=session_id, contract_hash=contract_hash)
        if checked_seed(seed) is not None:
            request.seed = seed
        return self._call(self.stub.Reset, request, None).model_version

    def stats(self) -> pb.GetStatsReply:
        return self._call(self.stub.GetStats, pb.GetStatsRequest(), None)

    def reload(self, path: str = "", timeout_s: float = 60.0) -> tuple[str, str]:
        """Ask the server to swap in ``path`` (default: its own file); returns (new, previous) versions."""
        reply = self._call(self.stub.Reload, pb.ReloadRequest(path=path), timeout_s)
        return reply.model_version, reply.previous_version

    def session(self, **kwargs) -> ControlSession:
        """A :class:`ControlSession` on this connection (keyword arguments as there)."""
        return ControlSession(self, **kwargs)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class _Stream:
    """One open ``StreamAct`` call: requests go through a queue, a reader thread collects replies."""

    def __init__(self, client: PolicyClient) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.error: ServiceError | None = None
        self.call = client.stub.StreamAct(iter(self.requests.get, _END), metadata=client.metadata)
        self._reader = threading.Thread(target=self._read, name="flowrl-stream", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.put(reply)
            self.error = ServiceError(grpc.StatusCode.UNAVAILABLE, "the server closed the stream")
        except grpc.RpcError as exc:
            self.error = _service_error(exc)
        self.replies.put(_END)

    def close(self) -> None:
        self.requests.put(_END)
        self.call.cancel()
        self._reader.join(timeout=1.0)


@dataclass
class _Health:
    consecutive_misses: int = 0
    last_fresh: float = field(default_factory=time.monotonic)
    misses: int = 0


class ControlSession:
    """A control loop's connection: one ``StreamAct`` stream, a deadline per tick, fallbacks.

    ``act(obs)`` sends the observation and waits at most ``deadline_s`` for the reply to this
    tick (replies to earlier ticks are dropped by sequence number). Without a fresh action in
    time it returns the fallback: ``hold`` (the last action), ``zeros``, or ``local`` (the same
    ONNX policy run here with onnxruntime; pass ``local_model``). The watchdog raises
    :class:`WatchdogError` after ``max_consecutive_misses`` misses in a row or when the last
    fresh action is older than ``max_staleness_s``. A broken stream is reopened with
    exponential backoff (the server then restarts the session's noise from ``seed``).

    Args:
        period_s: the control period; the default deadline is half of it.
        max_rate: optional clamp of each action component's change, in units per second.
        contract_hash / contract: pin the policy contract; the server refuses a different one.
    """

    def __init__(
        self,
        client: PolicyClient,
        *,
        period_s: float,
        deadline_s: float | None = None,
        session_id: str = "",
        seed: int | None = None,
        fallback: str = "hold",
        local_model: str = "",
        max_consecutive_misses: int | None = None,
        max_staleness_s: float | None = None,
        max_rate: float | None = None,
        contract_hash: str = "",
        contract: PolicyContract | None = None,
        backoff_s: tuple[float, float] = (0.05, 1.0),
    ) -> None:
        if fallback not in ("hold", "zeros", "local"):
            raise FlowRLError(f"unknown fallback {fallback!r}; choose hold, zeros or local")
        if period_s <= 0:
            raise FlowRLError(f"period_s must be > 0, got {period_s}")
        self.client = client
        self.period_s = period_s
        self.deadline_s = deadline_s if deadline_s is not None else period_s / 2
        self.session_id = session_id or f"control-{uuid.uuid4().hex[:12]}"
        self.seed = checked_seed(seed)
        self.fallback = fallback
        self.max_consecutive_misses = max_consecutive_misses
        self.max_staleness_s = max_staleness_s
        self.max_delta = None if max_rate is None else max_rate * period_s
        self.contract_hash = contract_hash or (contract.hash() if contract else "")
        self.contract_json = json.dumps(contract.to_dict(), sort_keys=True) if contract else ""
        self.info = client.spec()
        self.local = None
        if fallback == "local":
            if not local_model:
                raise FlowRLError("fallback='local' needs local_model, the ONNX file the server serves")
            self.local = _LocalPolicy(local_model, seed)
            if self.local.policy.contract_hash != self.info.contract_hash:
                diff = "; ".join(self.info.contract.differences(self.local.policy.contract))
                raise FlowRLError(f"the local fallback model {local_model} is not the served policy ({diff})")
        self.timings: list[CallTiming] = []
        self.health = _Health()
        self.last_action: np.ndarray | None = None
        self._seq = 0
        self._backoff_s = backoff_s
        self._retry_in = backoff_s[0]
        self._retry_at = 0.0
        self._opened = False
        self._stream: _Stream | None = _Stream(client)

    # --- the tick ------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for this tick, fresh or fallback; raises :class:`WatchdogError` when unsafe."""
        self._seq += 1
        obs = np.asarray(obs, np.float32).reshape(-1)
        start = time.perf_counter()
        until = start + self.deadline_s
        reply = self._exchange(obs, until)
        if reply is not None:
            action = decode(reply.action, name="action")
            self.timings.append(self._timing(reply, start))
            self.health.consecutive_misses = 0
            self.health.last_fresh = time.monotonic()
        else:
            action = self._fallback(obs)
            self.timings.append(CallTiming(self._seq, self.fallback, (time.perf_counter() - start) * 1e6))
            self.health.consecutive_misses += 1
            self.health.misses += 1
            self._watchdog()
        if self.max_delta is not None and self.last_action is not None:
            action = np.clip(action, self.last_action - self.max_delta, self.last_action + self.max_delta)
        self.last_action = action
        return action

    def _exchange(self, obs: np.ndarray, until: float) -> pb.StreamActReply | None:
        stream = self._live_stream()
        if stream is None:
            return None
        request = pb.StreamActRequest(
            session_id=self.session_id,
            seq=self._seq,
            obs=encode(obs),
            client_send_unix_ns=time.time_ns(),
            timeout_us=max(1, int((until - time.perf_counter()) * 1e6)),
        )
        if not self._opened:
            if self.seed is not None:
                request.seed = self.seed
            request.contract_hash = self.contract_hash
            request.contract_json = self.contract_json
        stream.requests.put(request)
        while True:
            remaining = until - time.perf_counter()
            try:
                reply = stream.replies.get(timeout=remaining) if remaining > 0 else stream.replies.get_nowait()
            except queue.Empty:
                return None
            if reply is _END:
                self._broken()
                return None
            if reply.seq != self._seq:
                continue  # the late answer to an earlier tick
            if reply.status.code == 0:
                self._opened = True  # only now: a refused opening is sent again with the seed and pin
                self._retry_in, self._retry_at = self._backoff_s[0], 0.0  # a later break retries soon again
                return reply
            code = grpc.StatusCode[_code_name(reply.status.code)]
            if code not in TRANSIENT:
                raise ServiceError(code, reply.status.message)
            return None

    def _live_stream(self) -> _Stream | None:
        if self._stream is not None:
            return self._stream
        now = time.monotonic()
        if now < self._retry_at:
            return None
        self._retry_at = now + self._retry_in
        self._retry_in = min(self._retry_in * 2, self._backoff_s[1])
        self._opened = False
        self._stream = _Stream(self.client)
        return self._stream

    def _broken(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            if stream.error is not None and stream.error.code not in TRANSIENT:
                raise stream.error
            stream.close()
        if not self._retry_at or time.monotonic() >= self._retry_at:
            self._retry_at = time.monotonic() + self._retry_in

    def _fallback(self, obs: np.ndarray) -> np.ndarray:
        if self.local is not None:
            return self.local.act(obs)
        if self.fallback == "hold" and self.last_action is not None:
            return self.last_action
        return np.zeros(self.info.act_dim, np.float32)

    def _watchdog(self) -> None:
        misses = self.health.consecutive_misses
        if self.max_consecutive_misses is not None and misses >= self.max_consecutive_misses:
            raise WatchdogError(f"{misses} control ticks in a row without a fresh action")
        stale = time.monotonic() - self.health.last_fresh
        if self.max_staleness_s is not None and stale > self.max_staleness_s:
            raise WatchdogError(f"no fresh action for {stale * 1e3:.1f} ms (limit {self.max_staleness_s * 1e3:.1f} ms)")

    def _timing(self, reply: pb.StreamActReply, start: float) -> CallTiming:
        t3 = time.time_ns()
        t0, t1, t2 = reply.client_send_unix_ns, reply.server_recv_unix_ns, reply.server_send_unix_ns
        return CallTiming(
            seq=reply.seq,
            source="server",
            round_trip_us=(time.perf_counter() - start) * 1e6,
            server_us=(t2 - t1) / 1e3,
            inference_us=float(reply.inference_us),
            clock_offset_us=((t1 - t0) + (t2 - t3)) / 2e3,
            model_version=reply.model_version,
        )

    # --- episodes and lifetime -------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """A new episode: reseed the session's noise (and the local fallback's) and forget the last action."""
        self.seed = checked_seed(seed)
        self.last_action = None
        if self.local is not None:
            self.local.reseed(seed)
        self.client.reset(self.session_id, seed, contract_hash=self.contract_hash)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> ControlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _code_name(value: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.name
    return "UNKNOWN"


class _LocalPolicy:
    """The served ONNX policy run in-process, drawing noise the way a server session does."""

    def __init__(self, path: str, seed: int | None) -> None:
        from flowrl_deploy.runtime import OnnxPolicy
        from flowrl_deploy.serve.noise import Session

        self.policy = OnnxPolicy(path)
        self.noise = Session("local", seed)

    def reseed(self, seed: int | None) -> None:
        self.noise.reseed(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        noise = self.noise.noise(1, self.policy.contract.act_dim) if self.policy.takes_noise else None
        return self.policy.act(obs[None, :], noise)[0]
