"""``flowrl.v1.PolicyService`` handlers: decode → noise → (micro-batched) model → encode.

Every handler reports failures as a gRPC status with a client-safe message (see
:func:`status_of`); ``StreamAct`` reports them per request in ``status`` and keeps streaming.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar, cast

import grpc
import numpy as np
from google.protobuf.message import Message

from flowrl_deploy.affinity import normal_scheduling
from flowrl_deploy.codec import TensorError, as_batch, decode, encode
from flowrl_deploy.contract import PolicyContract
from flowrl_deploy.errors import FlowRLError, SpecError, printable
from flowrl_deploy.noise import Session, draw_noise, session_noise
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve.batcher import MicroBatcher
from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.errors import (
    ContractMismatch,
    DeadlineExpired,
    NotReady,
    ServeError,
    SessionLimitReached,
    SessionNotFound,
    status_of,
)
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.model import (
    Exporter,
    ServedModel,
    check_compatible,
    load_model,
    read_model_file,
    resolve_onnx,
)
from flowrl_deploy.serve.reload import reload_target, requested_path
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


def _session_shown(session_id: str) -> str:
    """A session id a client chose, as logs show it: cut at 100 characters, then escaped."""
    return printable(session_id, 100)


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


MAX_SESSION_ID = 256
"""Characters a session id may have: the server keeps each open session's id (for --session-idle-s
after a Reset), so ids of a megabyte each could take gigabytes."""


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


class _StreamOwner:
    """The sessions a ``StreamAct`` stream opened (by id), and whether its call has ended; both change
    under the sessions lock only, so that a stream that ends while it opens a session never leaves
    that session behind."""

    __slots__ = ("ended", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.ended = False


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    """The service state: the current model (swapped atomically on reload), sessions, batcher."""

    def __init__(self, config: ServeConfig, export_checkpoint: Exporter | None = None) -> None:
        self.config = config
        self._exporter = None if export_checkpoint is None else functools.partial(self._export, export_checkpoint)
        self.work_folder: Path | None = None
        """Where checkpoints are exported (made by the first export, removed by :meth:`close`), or None."""
        self._work_removed = False
        self._providers = list(config.providers) or None
        self.model: ServedModel | None = None
        self._generation = 0
        self._steps = config.steps
        """The N checkpoints are exported at: ``--steps``, else the N of the model served now."""
        self._reload_lock = threading.Lock()
        self._refusals_held: dict[str, str] = {}
        """By status: the latest refused Reload whose warning was held back (the next one names it)."""
        self._refusals_lock = threading.Lock()
        """Held from whether a refused Reload's warning is due to its ``_refusals_held`` update."""
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._anonymous = Session("", None)
        self.release = release()
        """This flowrl-deploy's release, sent in GetSpec and GetStats replies (read once: it may ask git)."""
        self.metrics = Metrics(self.session_count, lambda: self.model.version if self.model else "")
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch=config.max_batch,
            window_us=config.batch_window_us,
            workers=config.batch_workers,
        )

    # --- model ------------------------------------------------------------------------------
    def load(
        self,
        requested: str = "",
        still_wanted: Callable[[], bool] | None = None,
        wait_s: float | None = None,
        by: str = "--watch",
    ) -> tuple[str, str]:
        """Load, check, warm up and swap in a model; return (new version, previous version).

        ``requested`` is the path a Reload caller sent, confined by
        :func:`~flowrl_deploy.serve.reload.reload_target` ('': the served path, as when the server
        starts and for ``--watch``). ``still_wanted`` (a Reload's caller still waiting for the
        answer) is asked once the new model is ready: if it says no,
        the reload is abandoned (:class:`DeadlineExpired`) and the old model keeps serving, so that
        a caller told DEADLINE_EXCEEDED was not silently obeyed. A reload (a model is served
        already) that fails is counted (``flowrl_reload_failures_total``); one of the very bytes
        served now changes nothing and answers the served version twice. ``requested`` is checked
        before waiting for a reload in progress: a forbidden path is refused at once (PERMISSION_DENIED),
        not after that reload, or with DEADLINE_EXCEEDED when the caller's deadline passed meanwhile.
        A reload in progress is waited for at most ``wait_s`` (None: as long as it takes), so that
        callers who gave up do not pile up, each holding a handler thread, behind a slow one.
        ``by`` names who asked, for the log of a reload: ``Reload from <the caller's address>``, or
        ``--watch``, whose watcher calls this without arguments.
        """
        try:
            source = str(reload_target(self.config.model, requested)) if requested else self.config.model
            timeout = -1 if wait_s is None else min(max(wait_s, 0.0), threading.TIMEOUT_MAX)  # gRPC's "none" is huge
            if not self._reload_lock.acquire(timeout=timeout):
                raise DeadlineExpired(
                    f"reload abandoned, still serving {self._current().version}: another reload was still in "
                    "progress when the caller's deadline passed"
                )
            try:
                with normal_scheduling():  # under --rt-priority, a reload must not hold a core the calls need
                    return self._swap(source, self.model, still_wanted, by)
            finally:
                self._reload_lock.release()
        except Exception:
            if self.model is not None:  # a reload, not the first load
                self.metrics.record_reload_failure()
            raise

    def _swap(
        self, source: str, previous: ServedModel | None, still_wanted: Callable[[], bool] | None, by: str
    ) -> tuple[str, str]:
        """:meth:`load` of ``source``, under its lock."""
        path = resolve_onnx(source, Path(f"gen{self._generation + 1}"), self._steps, self._exporter)
        data, sha256 = read_model_file(path)
        self._drop_export(path)
        if previous is not None and sha256 == previous.sha256:  # e.g. `touch`: nothing to swap
            shown = printable(source)
            log.info("%s holds the model served now (%s): nothing to reload (by %s)", shown, previous.version, by)
            return previous.version, previous.version
        generation = self._generation + 1
        # named by its source, not its export: a refusal names the checkpoint the caller knows
        new = load_model(Path(source), data, sha256, generation, providers=self._providers, threads=self.config.threads)
        if previous is not None:
            check_compatible(previous, new)
        else:  # a reload keeps the contract, and with it the requests
            check_request_limit(self.config.max_message_bytes, new.contract)
        new.warm_up(tuple(sorted({1, self.config.max_batch})))
        if previous is not None and still_wanted is not None and not still_wanted():
            raise DeadlineExpired(
                f"reload abandoned, still serving {previous.version}: the caller stopped waiting (its "
                f"deadline passed, or it cancelled) before {source} was loaded and warmed up"
            )
        self._generation += 1
        self.model = new  # atomic reference swap: calls in flight keep the model they hold
        if self.config.steps is None:  # checkpoints exported by later reloads keep the served N
            self._steps = new.contract.flow_steps
        providers = ", ".join(new.policy.session.get_providers())
        steps = f"N={new.contract.flow_steps} flow steps"
        if previous is not None:
            self.metrics.record_reload()
            shown = printable(source)
            log.info("reloaded %s by %s: %s -> %s (%s, %s)", shown, by, previous.version, new.version, steps, providers)
        else:
            log.info("loaded %s as %s (%s, %s)", printable(source), new.version, steps, providers)
        return new.version, previous.version if previous else ""

    def _drop_export(self, path: Path) -> None:
        """Remove a checkpoint's export once its bytes are read (the model loads from them): each
        reload's stayed until the stop, so a --watch server of a training run filled its TMPDIR."""
        if self.work_folder is not None and path.is_relative_to(self.work_folder):
            shutil.rmtree(path.parent, ignore_errors=True)

    def _export(self, export_checkpoint: Exporter, checkpoint: Path, out: Path, steps: int | None) -> Path:
        """``export_checkpoint``, writing ``out`` (relative) into :attr:`work_folder`, made now if need be: an
        .onnx file is served without one, so a read-only file system with no writable TMPDIR serves it."""
        if self._work_removed:  # a --watch reload after the stop removed the folder
            raise FlowRLError(f"the server has stopped: {checkpoint} is not exported")
        if self.work_folder is None:
            try:
                self.work_folder = Path(tempfile.mkdtemp(prefix="flowrl-serve-"))
            except OSError as exc:
                raise FlowRLError(
                    f"serving a checkpoint exports it to a temporary directory, and none is writable "
                    f"({exc.strerror or exc}): set TMPDIR to a writable folder (in a container, mount one, "
                    "e.g. an emptyDir, at /tmp), or serve the .onnx file `flowrl export` writes"
                ) from None
        try:
            exported = export_checkpoint(checkpoint, self.work_folder / out, steps)
        finally:
            # a --watch reload's export may outlive the stop, which removed the folder it writes into
            stopped = self._work_removed
            if stopped:
                self.remove_work_folder()
        if stopped:
            raise FlowRLError(f"the server stopped while {checkpoint} was exported: it is not loaded")
        return exported

    def close(self) -> None:
        """Stop the batcher's threads and remove the work folder."""
        self.batcher.close()
        self.remove_work_folder()

    def remove_work_folder(self) -> None:
        """Remove the work folder, if a checkpoint was exported (the models loaded from it stay in memory),
        and what an export running now writes into it once done."""
        self._work_removed = True  # before the removal: an export that ends meanwhile removes it again
        if self.work_folder is not None:
            shutil.rmtree(self.work_folder, ignore_errors=True)

    def _current(self) -> ServedModel:
        model = self.model
        if model is None:
            raise NotReady("the model is still loading; retry when health reports SERVING")
        return model

    def _run_batch(self, obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, str, int]:
        model = self._current()
        action, inference_us = model.run(obs, noise)
        self.metrics.record_batch(len(obs), inference_us / 1e6)
        return action, model.version, inference_us

    # --- sessions and contracts ---------------------------------------------------------------
    def _check_contract(self, model: ServedModel, pinned: str, contract_json: str) -> None:
        if not pinned and not contract_json:
            return
        pinned = pinned.lower()  # hex digits, as `flowrl inspect` prints them or in capitals
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
        detail = "; ".join(model.contract.differences(theirs))
        raise ContractMismatch(f"{mismatch} (server != client: {detail})")

    def _open(self, session_id: str, seed: int | None, owner: _StreamOwner | None = None) -> Session:
        """Create a session, or reseed it (``seed`` None: unseeded); a stream ``owner`` takes it over
        (and evicts it when it ends), keeping its generator when it sends no seed. Taking over a
        session another stream still holds is logged: both streams then draw from its generator.
        A stream whose call has ended (:meth:`_evict` ran) opens nothing (CANCELLED)."""
        with self._sessions_lock:
            if owner is not None and owner.ended:
                raise ServeError("the stream has ended", grpc.StatusCode.CANCELLED)
            session = self._sessions.get(session_id)
            if owner is not None and session is not None and session.owner is not None and session.owner is not owner:
                log.warning(
                    "session %s taken over by another stream (a robot's reconnect, or two robots sharing one id)",
                    _session_shown(session_id),
                )
            if session is None:
                self._drop_idle_sessions()
                if len(self._sessions) >= self.config.max_sessions:
                    raise SessionLimitReached(f"session limit of {self.config.max_sessions} reached")
                session = self._sessions[session_id] = Session(session_id, seed)
            elif owner is None or seed is not None:  # a stream joining a session Reset opened keeps its noise
                session.reseed(seed)
            if owner is not None:
                session.owner = owner
                owner.sessions[session_id] = session
            return session

    def session_count(self) -> int:
        return len(self._sessions)

    def _session_limit_refused(self, exc: SessionLimitReached) -> None:
        """Count (and warn of) a call refused at ``--max-sessions``."""
        why = f"{exc}; raise --max-sessions (a session lives as long as its stream, or --session-idle-s after a Reset)"
        self.metrics.record_limit("sessions", why)

    def _drop_idle_sessions(self) -> None:
        """Forget the sessions no stream owns (opened by Reset) that went unused for ``session_idle_s``;
        called with the sessions lock held, whenever a new session opens."""
        stale = time.monotonic() - self.config.session_idle_s
        for session_id in [k for k, s in self._sessions.items() if s.owner is None and s.last_used < stale]:
            del self._sessions[session_id]

    def _evict(self, owner: _StreamOwner) -> None:
        """Drop the sessions a finished stream still owns (not those another stream took over); it
        opens none from now on."""
        with self._sessions_lock:
            owner.ended = True
            for session_id, session in owner.sessions.items():
                if self._sessions.get(session_id) is session and session.owner is owner:
                    del self._sessions[session_id]

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"unknown session {session_id!r}: open it with Reset or StreamAct")
        return session

    def _obs(self, tensor: pb.Tensor, model: ServedModel) -> np.ndarray:
        return as_batch(decode(tensor, name="obs"), model.obs_dim, max_batch=self.config.max_request_batch)

    # --- RPCs ---------------------------------------------------------------------------------
    @_unary("GetSpec")
    def GetSpec(self, request: pb.GetSpecRequest, context: grpc.ServicerContext) -> pb.GetSpecReply:
        model = self._current()
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
        model = self._current()
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
                noise = self._session(_checked_session_id(request.session_id)).noise(len(obs), model.act_dim)
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
        owner = _StreamOwner()
        opened = owner.sessions  # changed by this thread only (under the sessions lock): read without it
        unopened: dict[str, _Opening] = {}  # per session id, until it opens
        anonymous = f"stream-{uuid.uuid4().hex}"  # the session of requests without an id, until one opens
        limited = False  # a request was refused at the session limit: the stream counts once
        if not context.add_callback(lambda: self._evict(owner)):  # the call has ended already
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
                    self._session_limit_refused(exc)
            reply.server_send_unix_ns = time.time_ns()
            self.metrics.record("StreamAct", code, time.perf_counter() - start)
            yield reply

    def _open_for_stream(
        self, request: pb.StreamActRequest, session_id: str, owner: _StreamOwner, unopened: dict[str, _Opening]
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
        model = self._current()
        try:
            self._check_contract(model, opening.contract_hash, opening.contract_json)
        except ServeError as exc:
            refusal = (exc.code, str(exc)[:MAX_KEPT_MESSAGE])
            unopened[session_id] = replace(opening, contract_hash="", contract_json="", refusal=refusal)
            raise
        if opening.contract_hash or opening.contract_json:
            unopened[session_id] = replace(opening, contract_hash=model.contract.hash(), contract_json="")
        session = self._open(session_id, opening.seed, owner=owner)
        del unopened[session_id]
        return session

    def _stream_step(
        self, request: pb.StreamActRequest, deadline: float | None, session: Session, reply: pb.StreamActReply
    ) -> None:
        model = self._current()
        obs = self._obs(request.obs, model)
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
        model = self._current()
        if not request.session_id:
            raise ServeError("Reset needs a session_id", grpc.StatusCode.INVALID_ARGUMENT)
        self._check_contract(model, request.contract_hash, request.contract_json)
        try:
            self._open(_checked_session_id(request.session_id), request.seed if request.HasField("seed") else None)
        except SessionLimitReached as exc:
            self._session_limit_refused(exc)
            raise
        return pb.ResetReply(model_version=model.version)

    @_unary("GetStats")
    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.GetStatsReply:
        summary = self.metrics.summary()
        return pb.GetStatsReply(
            model_version=self.model.version if self.model else "",
            uptime_s=summary["uptime_s"],
            sessions=self.session_count(),
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
            if self.model is None:  # it would be the first load, unchecked, and start()'s own load would follow
                raise NotReady(
                    "reload refused: the server is still loading its own model at start-up; retry when health "
                    "reports SERVING"
                )
            try:
                version, previous = self.load(
                    request.path, functools.partial(_waiting, context), context.time_remaining(), f"Reload from {peer}"
                )
            except ServeError:  # PERMISSION_DENIED, ContractMismatch, DeadlineExpired (abandoned)
                raise
            except FlowRLError as exc:
                raise ServeError(
                    f"reload refused, still serving {self._current().version}: {exc}",
                    grpc.StatusCode.FAILED_PRECONDITION,
                ) from exc
        except ServeError as exc:
            self._reload_refused(request.path or self.config.model, peer, exc)
            raise
        return pb.ReloadReply(model_version=version, previous_version=previous)
