"""systemd's side of a service, in the standard library: the notify protocol (sd_notify(3)) and the
journal's level prefixes (sd-daemon(3)). Outside systemd every function here does nothing.

- :class:`Notifier` sends ``READY=1``, ``STATUS=…``, ``STOPPING=1`` and ``WATCHDOG=1`` to
  ``$NOTIFY_SOCKET`` (what ``Type=notify`` and ``WatchdogSec=`` wait for): one datagram per message
  on an AF_UNIX socket, whose name is abstract when it begins with ``@``.
- :func:`log_formatter` is ``flowrl serve --log-format``'s: ``text`` (``TIME LEVEL LOGGER: MESSAGE``,
  TIME in UTC, ISO 8601) or ``json`` (one object a line, :class:`JsonFormatter`). When
  ``$JOURNAL_STREAM`` says stderr is the journal (systemd.exec(5)), each line begins with its syslog
  level (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), the only level journald reads
  from a service's stderr, and text lines leave out the time (:class:`JournalFormatter`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("flowrl.systemd")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
JOURNAL_STREAM = "JOURNAL_STREAM"


class Notifier:
    """Messages to the service manager at ``$NOTIFY_SOCKET``; does nothing when it is unset. A
    message that cannot be sent is logged once (a WARNING), never raised: the server serves on.

    :attr:`watchdog_s` is ``$WATCHDOG_USEC`` in seconds when the watchdog is meant for this process
    (``$WATCHDOG_PID`` unset or ours), else None: send ``WATCHDOG=1`` every half of it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        name = environ.get(NOTIFY_SOCKET, "")
        self.address: str | bytes | None = None
        if name.startswith("@"):  # Linux's abstract namespace: a NUL byte, then the name
            self.address = b"\0" + name[1:].encode()
        elif name.startswith("/"):
            self.address = name
        elif name:  # e.g. systemd 254's vsock:CID:PORT, which this module does not speak
            log.warning("%s=%r is not an AF_UNIX socket path: no notification is sent", NOTIFY_SOCKET, name)
        self.watchdog_s = _watchdog_s(environ) if self.address is not None else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``assignments`` (``"READY=1"``, ``"STATUS=…"``) in one datagram; whether it was sent."""
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify the service manager at %s=%s (%s); the server serves on, but a Type=notify "
                    "unit waits for READY=1 and a WatchdogSec= one for WATCHDOG=1 (not logged again)",
                    NOTIFY_SOCKET,
                    os.environ.get(NOTIFY_SOCKET, "") if isinstance(self.address, bytes) else self.address,
                    exc.strerror or exc,
                )
            return False
        return True


def _watchdog_s(environ: Mapping[str, str]) -> float | None:
    pid = environ.get(WATCHDOG_PID, "")
    if pid and pid != str(os.getpid()):  # meant for another process (e.g. a wrapper's)
        return None
    try:
        usec = int(environ.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is connected to the journal: ``$JOURNAL_STREAM`` holds its ``device:inode``
    (systemd sets it for the service's stdout and stderr; a redirect in between changes stderr)."""
    value = (os.environ if environ is None else environ).get(JOURNAL_STREAM, "")
    try:
        status = os.fstat(2)
    except OSError:
        return False
    return value == f"{status.st_dev}:{status.st_ino}"


SYSLOG_LEVELS = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
"""(at least this Python level, syslog level); below them all, 7 (debug)."""


def syslog_level(levelno: int) -> int:
    """The syslog level of a Python logging level: <3> error (CRITICAL too), <4> warning, <6> info, <7> debug."""
    return next((level for least, level in SYSLOG_LEVELS if levelno >= least), 7)


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL name: message``, with no timestamp (the journal adds its own), and ``<N>`` before
    every line of a record that has several (a traceback), so that each is one entry at its level."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_level(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def journal_prefix(level: int, environ: Mapping[str, str] | None = None) -> str:
    """``<level>`` (a syslog level) for a line written to stderr when stderr is the journal, else ''."""
    return f"<{level}>" if stderr_is_journal(environ) else ""


class UTCFormatter(logging.Formatter):
    """``%(asctime)s`` in UTC, ISO 8601 to the millisecond: ``2026-11-27T00:27:09.339Z``. Local time
    without an offset (Python's default, ``2026-11-27 00:27:09,339``) could not be lined up with
    another host's lines, nor read across a change to or from summer time."""

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""``flowrl serve --log-format text``'s lines (a traceback follows its line on lines of its own)."""

_RECORD_FIELDS = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", "taskName"]
)
"""What every log record has: the fields beyond these were given by its caller (``extra=``)."""


class JsonFormatter(UTCFormatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601, as :class:`UTCFormatter`), ``level``
    (``DEBUG`` … ``CRITICAL``), ``logger``, ``message``, then ``traceback`` (a record's exception,
    its lines joined by ``\n`` inside the string) and ``stack`` when it has them, and any field its
    caller gave (``extra=``); ``journal`` puts the record's ``<N>`` syslog level before the object.
    Non-ASCII characters are escaped (``\u00b5``): a line is valid JSON in any stderr encoding."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for name, value in record.__dict__.items():
            if name not in _RECORD_FIELDS and name not in entry:
                entry[name] = value
        line = json.dumps(entry, default=str)
        return f"<{syslog_level(record.levelno)}>{line}" if self.journal else line


LOG_FORMATS = ("text", "json")


def log_formatter(kind: str = "text", environ: Mapping[str, str] | None = None) -> logging.Formatter:
    """The formatter of ``flowrl serve --log-format kind``. ``text``: :data:`TEXT_FORMAT` with a UTC
    timestamp, or when stderr is the journal :class:`JournalFormatter` (no timestamp: the journal
    adds its own). ``json``: :class:`JsonFormatter`, with its ``<N>`` prefix under the journal (which
    takes it off; the entry is then the object, one line, traceback included)."""
    journal = stderr_is_journal(environ)
    if kind == "json":
        return JsonFormatter(journal)
    if kind != "text":
        raise ValueError(f"unknown log format {kind!r}; use one of {', '.join(LOG_FORMATS)}")
    return JournalFormatter() if journal else UTCFormatter(TEXT_FORMAT)
