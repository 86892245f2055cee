"""``flowrl.v1.PolicyService`` handlers: decode → noise → (micro-batched) model → encode.

Every handler reports failures as a gRPC status with a client-safe message (see
:func:`status_of`); ``StreamAct`` reports them per request in ``status`` and keeps streaming.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar, cast

import grpc
import numpy as np
from google.protobuf.message import Message

from flowrl_deploy.codec import TensorError, as_batch, decode, encode
from flowrl_deploy.contract import MAX_SESSION_ID, PolicyContract, checked_contract_hash
from flowrl_deploy.errors import FlowRLError, SpecError, printable
from flowrl_deploy.noise import draw_noise, session_noise
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve.batcher import MicroBatcher
from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.errors import (
    ContractMismatch,
    NotReady,
    ServeError,
    SessionLimitReached,
    status_of,
)
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.model import Exporter, ModelSlot, ServedModel
from flowrl_deploy.serve.reload import requested_path
from flowrl_deploy.serve.sessions import Session, SessionTable, StreamOwner
from flowrl_deploy.versions import release

log = logging.getLogger("flowrl.serve")


_Handler = TypeVar("_Handler", bound=Callable[..., Message])
"""A unary RPC handler of :class:`PolicyServicer`: ``(self, request, context) -> reply``."""


def _unary(method: str) -> Callable[[_Handler], _Handler]:
    """Time a unary handler, count it, and turn its exceptions into statuses."""

    def wrap(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        def run(self: PolicyServicer, request: Message, context: grpc.ServicerContext) -> Message:
            start = time.perf_counter()
            try:
                reply = handler(self, request, context)
            except Exception as exc:
                code, message = status_of(exc)
                if code == grpc.StatusCode.INTERNAL:
                    self._failed(method, exc)
                self.metrics.record(method, code.name, time.perf_counter() - start)
                context.abort(code, message)
            self.metrics.record(method, "OK", time.perf_counter() - start)
            return reply

        return cast("_Handler", run)  # the handler's own signature

    return wrap


def _checked_session_id(session_id: str) -> str:
    """``session_id``, refused (INVALID_ARGUMENT) when longer than :data:`MAX_SESSION_ID`."""
    if len(session_id) > MAX_SESSION_ID:
        raise ServeError(
            f"session_id of {len(session_id)} characters: at most {MAX_SESSION_ID}", grpc.StatusCode.INVALID_ARGUMENT
        )
    return session_id


def _waiting(context: grpc.ServicerContext) -> bool:
    """The caller still waits for this call's answer: not cancelled, its deadline not passed."""
    remaining = context.time_remaining()
    return context.is_active() and (remaining is None or remaining > 0)


def _status(exc: BaseException) -> pb.Status:
    code, message = status_of(exc)
    return pb.Status(code=code.value[0], message=message)


def request_floor(contract: PolicyContract) -> int:
    """Bytes of the largest request that carries one observation of ``contract``'s policy: a
    ``StreamAct`` request opening a session, with a :data:`MAX_SESSION_ID`-character id, a seed, the
    contract's hash and its JSON (as :class:`~flowrl_deploy.session.ControlSession` sends it). A
    ``--max-message-bytes`` below it would refuse some robot's first tick of every session."""
    request = pb.StreamActRequest(
        session_id="s" * MAX_SESSION_ID,
        seq=2**64 - 1,
        obs=encode(np.zeros((1, contract.obs_dim), np.float32), name="obs"),
        client_send_unix_ns=2**63 - 1,
        timeout_us=2**63 - 1,
        seed=2**64 - 1,
        contract_hash=contract.hash(),
        contract_json=json.dumps(contract.to_dict(), sort_keys=True),
    )
    return request.ByteSize()


def check_request_limit(max_message_bytes: int, contract: PolicyContract) -> None:
    """Refuse a ``--max-message-bytes`` below :func:`request_floor`: the server would say SERVING
    and refuse every robot's session (and, far below it, every observation)."""
    floor = request_floor(contract)
    if max_message_bytes < floor:
        raise FlowRLError(
            f"--max-message-bytes {max_message_bytes} is less than the {floor} bytes of this policy's largest "
            f"request of one observation (a StreamAct opening a session, with the contract; obs_dim "
            f"{contract.obs_dim}); give at least {floor}, or leave it at its default ({1 << 20})"
        )


MAX_KEPT_OPENINGS = 8
"""Sessions a stream may have asked for and not opened yet (their openings are kept); a request
naming another one is refused (RESOURCE_EXHAUSTED), so that a refused pin is never forgotten."""
MAX_KEPT_MESSAGE = 1000
"""Characters of a refused pin's message kept for the stream's later requests."""


@dataclass(frozen=True)
class _Opening:
    """What a ``StreamAct`` stream asks of a session it has not opened yet: a seed and a contract pin.

    Kept until the session opens, so that a later request is never opened unpinned or unseeded (the
    proto reads these fields from the request that opens the session): each field a request leaves
    out is the kept one's, and a pin the server refused stays refused (``refusal``: its status,
    without the client's contract) until a request sends another pin. Once a pin has passed, only
    the served contract's hash is kept, never a client's contract_json."""

    seed: int | None = None
    contract_hash: str = ""
    contract_json: str = ""
    refusal: tuple[grpc.StatusCode, str] | None = None

    def updated(self, request: pb.StreamActRequest) -> _Opening:
        pinned = bool(request.contract_hash or request.contract_json)  # a new pin replaces the kept one
        return _Opening(
            request.seed if request.HasField("seed") else self.seed,
            request.contract_hash if pinned else self.contract_hash,
            request.contract_json if pinned else self.contract_json,
            None if pinned else self.refusal,
        )


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    """The service: its RPC handlers, their contract pins, and the batcher; the open sessions are
    :attr:`sessions`' (:class:`SessionTable`), and the model served, its reloads and a checkpoint's
    export on the fly :attr:`slot`'s (:class:`ModelSlot`)."""

    def __init__(self, config: ServeConfig, export_checkpoint: Exporter | None = None) -> None:
        self.config = config
        self._refusals_held: dict[str, str] = {}
        """By status: the latest refused Reload whose warning was held back (the next one names it)."""
        self._refusals_lock = threading.Lock()
        """Held from whether a refused Reload's warning is due to its ``_refusals_held`` update."""
        self._anonymous = Session("", None)
        self.release = release()
        """This flowrl-deploy's release, sent in GetSpec and GetStats replies (read once: it may ask git)."""
        self.metrics = Metrics(lambda: self.sessions.count(), lambda: self.model.version if self.model else "")
        self.sessions = SessionTable(config.max_sessions, config.session_idle_s, self.metrics)
        """The open sessions: their noise, the --max-sessions limit, idle drop and eviction, stream ownership."""
        self.slot = ModelSlot(
            config,
            self.metrics,
            export_checkpoint,
            check_first=lambda contract: check_request_limit(config.max_message_bytes, contract),
        )
        """The served model and its lifecycle: load, reload, export on the fly, its work folder."""
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch=config.max_batch,
            window_us=config.batch_window_us,
            workers=config.batch_workers,
        )

    # --- model ------------------------------------------------------------------------------
    @property
    def model(self) -> ServedModel | None:
        """The model served now (None until the first load): :attr:`ModelSlot.model`."""
        return self.slot.model

    def close(self) -> None:
        """Stop the batcher's threads and remove the work folder (:meth:`ModelSlot.close`)."""
        self.batcher.close()
        self.slot.close()

    def _run_batch(self, obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, str, int]:
        model = self.slot.current()
        action, inference_us = model.run(obs, noise)
        self.metrics.record_batch(len(obs), inference_us / 1e6)
        return action, model.version, inference_us

    # --- contracts and observations -----------------------------------------------------------
    def _check_contract(self, model: ServedModel, pinned: str, contract_json: str) -> None:
        if not pinned and not contract_json:
            return
        try:  # 16 hex digits, as `flowrl inspect` prints them or in capitals
            pinned = checked_contract_hash(pinned)
        except FlowRLError as exc:  # a client's bug (a cut or padded string), not a contract the server lacks
            raise ServeError(str(exc), grpc.StatusCode.INVALID_ARGUMENT) from None
        theirs = None
        if contract_json:
            try:
                theirs = PolicyContract.from_dict(json.loads(contract_json))
            except (ValueError, RecursionError, SpecError) as exc:  # bad JSON, nested or huge numbers; a non-object
                message = f"contract_json is not a policy contract: {exc}"
                raise ServeError(message, grpc.StatusCode.INVALID_ARGUMENT) from None
        wanted = pinned or theirs.hash()
        served = model.contract.hash()
        if wanted == served:
            return
        mismatch = f"client pinned policy contract {wanted}, the server serves {served}"
        if theirs is None:
            raise ContractMismatch(
                f"{mismatch}; the client pinned only the hash, so the fields that differ cannot be named: "
                "compare `flowrl inspect` of the policy file the client expects with the served policy "
                "(GetSpec), or pin the contract itself (e.g. from that ONNX file) to see them"
            )
        if detail := "; ".join(model.contract.differences(theirs)):
            raise ContractMismatch(f"{mismatch} (server != client: {detail})")
        if pinned and pinned != theirs.hash():  # which of the two the client meant is unknown
            raise ContractMismatch(
                f"{mismatch}; the contract_json sent has the served contract's fields, so the pinned hash is not "
                "its hash: pin the hash `flowrl inspect` prints of the policy file the client expects"
            )
        raise ContractMismatch(  # e.g. -0.0 for 0.0: equal as numbers, not as the JSON the hash covers
            f"{mismatch}; the contract_json sent has the served contract's fields but writes a value otherwise "
            f"(hash {theirs.hash()}): send the contract_json GetSpec gives"
        )

    def _obs(self, tensor: pb.Tensor, model: ServedModel, rows: str = "B") -> np.ndarray:
        """The request's obs as a [B, obs_dim] batch; a refusal of its shape offers [obs_dim] or [``rows``, obs_dim]."""
        return as_batch(decode(tensor, name="obs"), model.obs_dim, max_batch=self.config.max_request_batch, rows=rows)

    # --- RPCs ---------------------------------------------------------------------------------
    @_unary("GetSpec")
    def GetSpec(self, request: pb.GetSpecRequest, context: grpc.ServicerContext) -> pb.GetSpecReply:
        model = self.slot.current()
        c = model.contract
        return pb.GetSpecReply(
            obs_dim=c.obs_dim,
            act_dim=c.act_dim,
            obs_names=[f"{name}[{i}]" for name, size in c.obs_layout for i in range(size)],
            action_names=c.action_names,
            action_low=c.action_low,
            action_high=c.action_high,
            flow_steps=c.flow_steps,
            solver=c.solver,
            takes_noise=model.policy.takes_noise,
            control_period_s=c.control_period_s,
            env_id=c.env_id,
            model_version=model.version,
            contract_hash=c.hash(),
            contract_json=json.dumps(c.to_dict(), sort_keys=True),
            max_batch=self.config.max_request_batch,
            server_version=self.release,
        )

    @_unary("Act")
    def Act(self, request: pb.ActRequest, context: grpc.ServicerContext) -> pb.ActReply:
        received = time.time_ns()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        model = self.slot.current()
        self._check_contract(model, request.contract_hash, "")
        if request.session_id and request.HasField("seed"):  # the seed was ignored without a word
            raise ServeError(
                "set session_id (its generator's noise) or seed (a fresh generator's), not both: to seed a "
                "session, call Reset(session_id, seed) once, then Act with session_id alone; for one seeded "
                "draw, send seed without session_id",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        obs = self._obs(request.obs, model)
        noise = None
        if model.policy.takes_noise:
            if request.session_id:
                noise = self.sessions.get(_checked_session_id(request.session_id)).noise(len(obs), model.act_dim)
            elif request.HasField("seed"):
                noise = draw_noise(session_noise(request.seed), len(obs), model.act_dim)
            else:
                noise = self._anonymous.noise(len(obs), model.act_dim)
        result = self.batcher.call(obs, noise, deadline)
        action = result.action if len(request.obs.shape) == 2 else result.action[0]
        return pb.ActReply(
            action=encode(action),
            model_version=result.model_version,
            inference_us=result.inference_us,
            server_recv_unix_ns=received,
            server_send_unix_ns=time.time_ns(),
        )

    def StreamAct(
        self, request_iterator: Iterator[pb.StreamActRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamActReply]:
        owner = StreamOwner()
        opened = owner.sessions  # changed by this thread only (under the sessions lock): read without it
        unopened: dict[str, _Opening] = {}  # per session id, until it opens
        anonymous = f"stream-{uuid.uuid4().hex}"  # the session of requests without an id, until one opens
        limited = False  # a request was refused at the session limit: the stream counts once
        if not context.add_callback(lambda: self.sessions.end_stream(owner)):  # the call has ended already
            owner.ended = True
        for request in request_iterator:
            received = time.time_ns()
            start = time.perf_counter()
            # 0 or below: no deadline, as every release before e6ab329 served it (a C++ client's -1 for "none")
            deadline = time.monotonic() + request.timeout_us / 1e6 if request.timeout_us > 0 else None
            reply = pb.StreamActReply(
                seq=request.seq, client_send_unix_ns=request.client_send_unix_ns, server_recv_unix_ns=received
            )
            try:
                session_id = _checked_session_id(request.session_id) or next(iter(opened), anonymous)
                session = opened.get(session_id)
                if session is None:
                    session = self._open_for_stream(request, session_id, owner, unopened)
                self._stream_step(request, deadline, session, reply)
                code = "OK"
            except Exception as exc:
                reply.status.CopyFrom(_status(exc))
                code = status_of(exc)[0].name
                if code == "INTERNAL":
                    self._failed("StreamAct", exc)
                if isinstance(exc, SessionLimitReached) and not limited:
                    limited = True
                    self.sessions.limit_refused(exc)
            reply.server_send_unix_ns = time.time_ns()
            self.metrics.record("StreamAct", code, time.perf_counter() - start)
            yield reply

    def _open_for_stream(
        self, request: pb.StreamActRequest, session_id: str, owner: StreamOwner, unopened: dict[str, _Opening]
    ) -> Session:
        """Open (or join) ``session_id`` for a stream, as its :class:`_Opening` kept in ``unopened`` and
        ``request`` ask."""
        kept = unopened.get(session_id)
        if kept is None and len(unopened) >= MAX_KEPT_OPENINGS:  # bounded, and no kept refusal ever forgotten
            raise ServeError(
                f"this stream has {MAX_KEPT_OPENINGS} sessions it could not open yet; open one of them or "
                "use another stream",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        opening = unopened[session_id] = (kept or _Opening()).updated(request)
        if opening.refusal is not None:
            code, message = opening.refusal
            raise ServeError(message, code)
        model = self.slot.current()
        try:
            self._check_contract(model, opening.contract_hash, opening.contract_json)
        except ServeError as exc:
            refusal = (exc.code, str(exc)[:MAX_KEPT_MESSAGE])
            unopened[session_id] = replace(opening, contract_hash="", contract_json="", refusal=refusal)
            raise
        if opening.contract_hash or opening.contract_json:
            unopened[session_id] = replace(opening, contract_hash=model.contract.hash(), contract_json="")
        session = self.sessions.open_session(session_id, opening.seed, owner=owner)
        del unopened[session_id]
        return session

    def _stream_step(
        self, request: pb.StreamActRequest, deadline: float | None, session: Session, reply: pb.StreamActReply
    ) -> None:
        model = self.slot.current()
        obs = self._obs(request.obs, model, rows="1")
        if len(obs) != 1:
            raise TensorError(f"obs: StreamAct takes one observation per request, got {len(obs)}")
        # drawn whatever the deadline: the draws follow the ticks sent, not their timing
        noise = session.noise(1, model.act_dim) if model.policy.takes_noise else None
        result = self.batcher.call(obs, noise, deadline)
        reply.action.CopyFrom(encode(result.action[0]))
        reply.model_version = result.model_version
        reply.inference_us = result.inference_us

    @_unary("Reset")
    def Reset(self, request: pb.ResetRequest, context: grpc.ServicerContext) -> pb.ResetReply:
        model = self.slot.current()
        if not request.session_id:
            raise ServeError("Reset needs a session_id", grpc.StatusCode.INVALID_ARGUMENT)
        self._check_contract(model, request.contract_hash, request.contract_json)
        try:
            self.sessions.open_session(
                _checked_session_id(request.session_id), request.seed if request.HasField("seed") else None
            )
        except SessionLimitReached as exc:
            self.sessions.limit_refused(exc)
            raise
        return pb.ResetReply(model_version=model.version)

    @_unary("GetStats")
    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.GetStatsReply:
        summary = self.metrics.summary()
        return pb.GetStatsReply(
            model_version=self.model.version if self.model else "",
            uptime_s=summary["uptime_s"],
            sessions=self.sessions.count(),
            methods=[pb.MethodStats(method=m, **figures) for m, figures in sorted(summary["methods"].items())],
            batches=summary["batches"],
            mean_batch_size=summary["mean_batch_size"],
            reloads=summary["reloads"],
            reload_failures=summary["reload_failures"],
            percentile_window=summary["percentile_window"],
            limits=[
                pb.LimitStats(limit=limit, in_use=in_use, most=most, refused=refused)
                for limit, (in_use, most, refused) in summary["limits"].items()
            ],
            server_version=self.release,
        )

    def _failed(self, method: str, exc: BaseException) -> None:
        """Log a call (a StreamAct request) that failed with INTERNAL (a bug, or the runtime failing:
        out of memory, a CUDA error): the first of each method and exception type with its traceback,
        then at most one a minute, with how many failed alike since the last line: each failure logged
        its traceback, and a model failing every call made 10,800 lines in 2 s for one robot at 200 Hz
        (with onnxruntime's own). Every one is counted in ``flowrl_requests_total{code="INTERNAL"}``."""
        kind = type(exc)
        due = self.metrics.warning_due(f"INTERNAL {method} {kind.__module__}.{kind.__qualname__}")
        if due is None:
            return
        held, age = due
        more = (
            ""
            if not held
            else f" (and {held} more {method} failures with {kind.__name__} in the last {age:.0f} s, not logged)"
        )
        what = "StreamAct request failed" if method == "StreamAct" else f"{method} failed"
        log.error("%s%s", what, more, exc_info=exc)

    def _reload_refused(self, path: str, peer: str, exc: ServeError) -> None:
        """Warn of a refused Reload, naming its caller (``peer``), at most once a minute per status (a
        caller refused in a loop must not flood the log), with how many were refused since the last
        warning and the latest of them."""
        code = exc.code.name
        why = printable(f"{exc}; {exc.detail}" if exc.detail else exc)  # the log says all the client was not told
        refusal = f"of {requested_path(path)} from {peer}"
        with self._refusals_lock:  # a refusal held back is stored before the warning falling due takes it
            due = self.metrics.warning_due(f"Reload {code}")
            if due is None:
                self._refusals_held[code] = f"{refusal}: {why}"
                return
            latest = self._refusals_held.pop(code, "")
        held, age = due
        more = ""
        if held:
            held_back = f"{held} more Reloads refused {code} in the last {age:.0f} s"
            more = f" (and {held_back}, not logged; the latest, {latest})"
        log.warning("Reload %s refused (%s): %s%s", refusal, code, why, more)

    @_unary("Reload")
    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadReply:
        peer = printable(context.peer())
        try:
            if not self.config.reload:
                raise ServeError(
                    "reload refused: this server takes no Reload calls (flowrl serve --no-reload); "
                    "its model changes only when its file does (--watch)",
                    grpc.StatusCode.PERMISSION_DENIED,
                )
            if self.model is None:  # it would be the first load, unchecked, and start()'s own load would follow
                raise NotReady(
                    "reload refused: the server is still loading its own model at start-up; retry when health "
                    "reports SERVING"
                )
            try:
                version, previous = self.slot.load(
                    request.path, functools.partial(_waiting, context), context.time_remaining(), f"Reload from {peer}"
                )
            except ServeError:  # PERMISSION_DENIED, ContractMismatch, DeadlineExpired (abandoned)
                raise
            except FlowRLError as exc:
                raise ServeError(
                    f"reload refused, still serving {self.slot.current().version}: {exc}",
                    grpc.StatusCode.FAILED_PRECONDITION,
                ) from exc
        except ServeError as exc:
            self._reload_refused(request.path or self.config.model, peer, exc)
            raise
        return pb.ReloadReply(model_version=version, previous_version=previous)
