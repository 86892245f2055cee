"""The server's session table: each open session's noise generator, the ``--max-sessions`` limit, the
drop of idle sessions (``--session-idle-s``), the eviction of the least recently used one a full table
makes room by, and which ``StreamAct`` stream owns each session (it evicts them when it ends).

A session draws its noise by core's one convention (:mod:`flowrl_deploy.noise`); the RPC handlers
(:mod:`~flowrl_deploy.serve.servicer`) open, look up and end sessions here.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np
import numpy.typing as npt

from flowrl_deploy.errors import printable
from flowrl_deploy.noise import draw_noise, session_noise
from flowrl_deploy.serve.errors import ServeError, SessionLimitReached, SessionNotFound
from flowrl_deploy.serve.metrics import Metrics

log = logging.getLogger("flowrl.serve")


class Session:
    """One client's episode: its noise generator, reseeded by ``Reset``."""

    def __init__(self, session_id: str, seed: int | None) -> None:
        self.session_id = session_id
        self.owner: object = None
        """The stream that evicts this session when it ends; None for sessions opened by Reset."""
        self._lock = threading.Lock()
        self._generator = session_noise(seed)
        self.last_used = time.monotonic()

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._generator = session_noise(seed)
            self.last_used = time.monotonic()

    def noise(self, batch: int, act_dim: int) -> npt.NDArray[np.float32]:
        with self._lock:
            self.last_used = time.monotonic()
            return draw_noise(self._generator, batch, act_dim)


class StreamOwner:
    """The sessions a ``StreamAct`` stream opened (by id), and whether its call has ended; both change
    under the sessions lock only, so that a stream that ends while it opens a session never leaves
    that session behind."""

    __slots__ = ("ended", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.ended = False


def _session_shown(session_id: str) -> str:
    """A session id a client chose, as logs show it: cut at 100 characters, then escaped."""
    return printable(session_id, 100)


class SessionTable:
    """The open sessions by id, at most ``max_sessions`` of them: those no stream owns (opened by
    Reset) are dropped once unused for ``idle_s``, and the least recently used of them makes room in a
    full table; ``metrics`` counts (and warns of) the evictions and the calls refused at the limit."""

    def __init__(self, max_sessions: int, idle_s: float, metrics: Metrics) -> None:
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._metrics = metrics
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open_session(self, session_id: str, seed: int | None, owner: StreamOwner | None = None) -> Session:
        """Create a session, or reseed it (``seed`` None: unseeded); a stream ``owner`` takes it over
        (and evicts it when it ends), keeping its generator when it sends no seed. Taking over a
        session another stream still holds is logged: both streams then draw from its generator.
        A stream whose call has ended (:meth:`end_stream` ran) opens nothing (CANCELLED)."""
        evicted = None
        with self._lock:
            if owner is not None and owner.ended:
                raise ServeError("the stream has ended", grpc.StatusCode.CANCELLED)
            session = self._sessions.get(session_id)
            taken_over = owner is not None and session is not None and session.owner not in (None, owner)
            if session is None:
                self._drop_idle()
                if len(self._sessions) >= self.max_sessions:
                    evicted = self._evict_least_recent_unowned()
                    if evicted is None:
                        raise SessionLimitReached(f"session limit of {self.max_sessions} reached")
                session = self._sessions[session_id] = Session(session_id, seed)
            elif owner is None or seed is not None:  # a stream joining a session Reset opened keeps its noise
                session.reseed(seed)
            if owner is not None:
                session.owner = owner
                owner.sessions[session_id] = session
        # logged outside the lock: a slow log handler (a stalled journal) must not hold up sessions
        if evicted is not None:
            self._record_evicted(*evicted)
        if taken_over and (more := self._metrics.held_back_note("session taken over")) is not None:
            log.warning(
                "session %s taken over by another stream (a robot's reconnect, or two robots sharing one id)%s",
                _session_shown(session_id),
                more,
            )
        return session

    def count(self) -> int:
        """The open sessions, those idle past ``idle_s`` dropped first (the gauges and GetStats read it).
        It takes the sessions lock: the metrics call it holding theirs, so this lock is never held while
        taking the metrics' (the warnings of :meth:`open_session` come after it is released)."""
        with self._lock:
            self._drop_idle()
            return len(self._sessions)

    def get(self, session_id: str) -> Session:
        """The open session ``session_id``; SessionNotFound for none, or one Reset opened that went unused
        for ``idle_s`` (dropped now: the table drops the others when a session opens or is counted)."""
        session = self._sessions.get(session_id)
        if session is not None and session.owner is None and self._idle(session):
            with self._lock:  # checked again: a Reset or a stream may have used or taken it meanwhile
                if self._sessions.get(session_id) is session and session.owner is None and self._idle(session):
                    del self._sessions[session_id]
                    session = None
        if session is None:
            raise SessionNotFound(f"unknown session {session_id!r}: open it with Reset or StreamAct")
        return session

    def limit_refused(self, exc: SessionLimitReached) -> None:
        """Count (and warn of) a call refused at ``--max-sessions``."""
        why = f"{exc}; raise --max-sessions (open streams hold every session, and a stream's lasts as long as it)"
        self._metrics.record_limit("sessions", why)

    def end_stream(self, owner: StreamOwner) -> None:
        """Drop the sessions a finished stream still owns (not those another stream took over); it
        opens none from now on."""
        with self._lock:
            owner.ended = True
            for session_id, session in owner.sessions.items():
                if self._sessions.get(session_id) is session and session.owner is owner:
                    del self._sessions[session_id]

    def _drop_idle(self) -> None:
        """Forget the sessions no stream owns (opened by Reset) that went unused for ``idle_s``;
        called with the sessions lock held, whenever a new session opens or the sessions are counted."""
        for session_id in [k for k, s in self._sessions.items() if s.owner is None and self._idle(s)]:
            del self._sessions[session_id]

    def _idle(self, session: Session) -> bool:
        return session.last_used < time.monotonic() - self.idle_s

    def _evict_least_recent_unowned(self) -> tuple[str, float] | None:
        """Make room in a full table (the sessions lock held) by forgetting the least recently used
        session no stream owns (one Reset opened); its id and idle seconds, or None when streams own
        every session. Without it, a few seconds of Reset calls held the table full for
        --session-idle-s, refusing every robot's new stream; a robot whose Reset session goes is told
        NOT_FOUND by its next Act (a stream joining it unseeded opens it afresh, unseeded)."""
        unowned = [(s.last_used, k) for k, s in self._sessions.items() if s.owner is None]
        if not unowned:
            return None
        last_used, session_id = min(unowned)
        del self._sessions[session_id]
        return session_id, time.monotonic() - last_used

    def _record_evicted(self, session_id: str, idle_s: float) -> None:
        """Count a session forgotten to make room, and warn of it at most once a minute."""
        if (more := self._metrics.record_session_evicted()) is not None:
            log.warning(
                "session table full (--max-sessions %d): forgot session %s, opened by Reset and unused for %.0f s, "
                "to open a new one%s",
                self.max_sessions,
                _session_shown(session_id),
                idle_s,
                more,
            )
