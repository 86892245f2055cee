"""``flowrl serve`` in a child process, for scripts that need a server in the background (the demo, benches).

    with ServerProcess("policy.onnx") as server:   # returns once health is SERVING
        report = run_control(server.address, ...)
    # leaving the block (also on Ctrl-C or an error) sends SIGTERM (Windows: Ctrl-Break) and waits for exit

A separate process keeps the server's inference off the caller's GIL.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve.server import parse_banner

PARENT_PATH = "_FLOWRL_PARENT_SYS_PATH"
"""The environment variable that hands the child this process's ``sys.path`` (JSON)."""
PARENT_PID = "_FLOWRL_STOP_WITHOUT_PARENT"
"""The environment variable that hands the child this process's id: the child stops once it is gone
(:func:`stop_without_parent`)."""
PARENT_POLL_S = 0.5
"""How often the child looks whether its parent is still there."""
FLOWRL = (
    sys.executable,
    "-c",
    f"import json, os, runpy, sys; parent = os.environ.pop({PARENT_PATH!r}, None); "
    "sys.path[:] = json.loads(parent) if parent else [p for p in sys.path if p]; "
    "runpy.run_module('flowrl_deploy.cli', run_name='__main__', alter_sys=True)",
)
"""``python -m flowrl_deploy.cli`` importing as the parent does: on the parent's ``sys.path``
(:data:`PARENT_PATH`, as multiprocessing's spawn hands it over), else without the working directory.
``-m`` puts the working directory first, so a child started inside another checkout of the repo served
that checkout's code, and a test run from a clone (pytest puts it on the path) served the installed one."""
START_TIMEOUT_S = 120.0
"""How long the server may take to print its banner (load, export a checkpoint, warm up)."""
READER_TIMEOUT_S = 5.0
"""How long :meth:`ServerProcess.stop` waits for a thread reading a pipe of the stopped child to reach its end."""
KEPT_STDERR_CHARS = 1 << 16
"""Characters of the child's stderr kept (its last ones) to name why it did not start."""
STOP_SIGNAL = getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM)
"""What stops the child gracefully: SIGTERM; on Windows, where ``terminate()`` is a kill (TerminateProcess),
Ctrl-Break to the child's own process group (:data:`CREATION_FLAGS`), SIGBREAK in the child."""
CREATION_FLAGS = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
"""Windows: the child in a process group of its own, so that Ctrl-Break reaches it alone."""


def stop_without_parent(parent: str | None) -> None:
    """In a :class:`ServerProcess`'s child (``parent``: :data:`PARENT_PID`'s value, else None: nothing to do),
    send this process SIGTERM, a graceful stop, once that parent is gone: killed (SIGKILL, the OOM killer,
    ``timeout -s KILL``), it could not stop its server, which ran on for good, still listening. Not on
    Windows, where a process's parent id stays the same when the parent ends."""
    if parent is None or not parent.isdigit() or os.name == "nt":
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="flowrl-parent-watch", daemon=True).start()


JOURNAL_LEVEL = re.compile(r"<[0-7]>")
"""The syslog level before each line under journald (:mod:`flowrl_deploy.systemd`)."""


def refusal(stderr: str) -> str:
    """The last error of a child's stderr: an ``error: …`` line (``--log-format text``) or the message of
    a JSON line whose level is ERROR (``json``), either after journald's ``<N>``; '' if there is none."""
    found = ""
    for line in stderr.splitlines():
        if JOURNAL_LEVEL.match(line):
            line = line[3:]
        if line.startswith("error:"):
            found = line.removeprefix("error:").strip()
        elif line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
                found = str(entry.get("message", ""))
    return found


class ServerProcess:
    """Start ``flowrl serve MODEL --port 0 *args``; ``address`` is the ``host:port`` to connect to,
    ``banner`` the line it printed once serving.

    With ``log``, the server's stderr (its log) is copied to that file. It is read from the start:
    a child that logged more than a pipe holds before its banner blocked, and never printed it.
    A log that cannot be written (a full disk) is no longer copied to, but the stderr is still read
    to its end (a child whose pipe is not read blocks in its logging): ``log_error`` is then the
    ``OSError``, for the caller to say that the log is incomplete.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *args: str,
        log: str | os.PathLike[str] | None = None,
    ) -> None:
        self._stdout_reader: threading.Thread | None = None
        self._stderr_drain: threading.Thread | None = None
        self._stderr_tail: collections.deque[str] = collections.deque()
        self._stderr_lock = threading.Lock()
        self.log_error: OSError | None = None
        """Why the server log stopped being written (a full disk), or None: the log holds what came before."""
        try:  # opened here, not in the drain thread: a log that cannot be written is refused, naming it
            log_file = open(log, "w", encoding="utf-8") if log is not None else None  # noqa: SIM115 (the drain thread closes it)
        except OSError as exc:
            raise FlowRLError(f"cannot write the server log {log}: {exc.strerror or exc}") from None
        try:
            self.process = subprocess.Popen(
                [*FLOWRL, "serve", str(model), "--port", "0", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={
                    **os.environ,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                    PARENT_PATH: json.dumps(sys.path),
                    PARENT_PID: str(os.getpid()),
                },
                creationflags=CREATION_FLAGS,
            )
        except BaseException:
            if log_file is not None:
                log_file.close()
            raise
        try:  # from here on, whatever goes wrong (Ctrl-C during the wait included) stops the child
            self._stderr_drain = threading.Thread(target=self._drain_stderr, args=(log_file,), daemon=True)
            self._stderr_drain.start()
            line = self._first_line(START_TIMEOUT_S)
            try:
                self.version, self.address = parse_banner(line)
            except FlowRLError:
                error = self._stop_and_read_error()
                name = Path(model).name
                raise FlowRLError(
                    f"flowrl serve {name} did not start: {error or line.strip() or 'no output'}"
                ) from None
            self.banner = line.strip()
        except BaseException:
            self.stop()
            raise

    def _drain_stderr(self, log: TextIO | None) -> None:
        """Read the child's stderr to its end: copied to ``log`` (closed at the end), its last
        :data:`KEPT_STDERR_CHARS` kept. A failed write to ``log`` (a full disk) ends the copying, not
        the reading (:attr:`log_error`): a thread that died there left the child blocked in its logging."""
        kept, f = 0, log
        try:
            for line in self.process.stderr:
                if f is not None:
                    try:
                        f.write(line)
                    except OSError as exc:
                        self.log_error, f = exc, None
                with self._stderr_lock:
                    self._stderr_tail.append(line)
                    kept += len(line)
                    while kept > KEPT_STDERR_CHARS and len(self._stderr_tail) > 1:
                        kept -= len(self._stderr_tail.popleft())
        finally:
            if log is not None:
                try:  # flushes what is buffered, which may fail as a write did
                    log.close()
                except OSError as exc:
                    self.log_error = self.log_error or exc

    def _first_line(self, timeout_s: float) -> str:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()), daemon=True)
        self._stdout_reader = reader
        reader.start()
        reader.join(timeout_s)
        return lines[0] if lines else ""

    def _stop_and_read_error(self) -> str:
        self._terminate()
        if self._stderr_drain is not None:
            self._stderr_drain.join(READER_TIMEOUT_S)
        with self._stderr_lock:
            return refusal("".join(self._stderr_tail))

    def stop(self, timeout_s: float = 15.0) -> int:
        """:data:`STOP_SIGNAL` (graceful: SIGTERM, Ctrl-Break on Windows), then a kill after ``timeout_s``;
        returns the exit status. The pipes from the child are closed then."""
        self._terminate(timeout_s)
        readers = [reader for reader in (self._stdout_reader, self._stderr_drain) if reader is not None]
        for reader in readers:  # closing a pipe that a thread still reads would wait on that thread
            reader.join(READER_TIMEOUT_S)
        if not any(reader.is_alive() for reader in readers):
            self.process.stdout.close()
            self.process.stderr.close()
        return self.process.returncode

    def _terminate(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(STOP_SIGNAL)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
