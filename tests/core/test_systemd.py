"""systemd's notify protocol and journal level prefixes, in the standard library (flowrl_deploy.systemd)."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time

import pytest

from flowrl_deploy.systemd import (
    JournalFormatter,
    Notifier,
    log_formatter,
    stderr_is_journal,
    syslog_level,
)


@pytest.fixture
def listener(tmp_path):
    """A datagram socket bound to a path, as systemd's notify socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        yield sock


def test_messages_reach_a_path_socket_in_one_datagram(listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.getsockname()})
    assert notifier.enabled and notifier.watchdog_s is None
    assert notifier.send("READY=1", "STATUS=serving v1\non :1")  # a newline in a value would start another
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving v1 on :1"


def test_an_abstract_socket_name_begins_with_at():
    name = f"flowrl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_no_socket_sends_nothing_and_a_failure_is_logged_once(tmp_path, caplog):
    assert not Notifier({}).enabled and not Notifier({}).send("READY=1")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    with caplog.at_level(logging.WARNING, "flowrl.systemd"):
        assert not gone.send("READY=1")
        assert not gone.send("WATCHDOG=1")  # never raised
    assert len(caplog.records) == 1 and "cannot notify the service manager" in caplog.records[0].getMessage()


def test_the_watchdog_is_ours_unless_its_pid_is_another(listener):
    path = listener.getsockname()
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}).watchdog_s == 4.0
    mine = {"WATCHDOG_PID": str(os.getpid())}
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", **mine}).watchdog_s == 4.0
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}).watchdog_s is None


def test_journal_lines_carry_their_syslog_level_and_no_timestamp():
    assert [syslog_level(level) for level in (50, 40, 30, 20, 10)] == [3, 3, 4, 6, 7]
    record = logging.LogRecord("flowrl.serve", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert JournalFormatter().format(record) == "<4>WARNING flowrl.serve: two\n<4>lines"


def test_the_journal_is_stderr_only_when_journal_stream_names_it():
    status = os.fstat(2)
    here = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
    assert stderr_is_journal(here)
    elsewhere = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"}  # stderr redirected elsewhere
    assert not stderr_is_journal(elsewhere) and not stderr_is_journal({})


def _record(level: int = logging.WARNING, message: str = "two\nlines", exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("flowrl.serve", level, __file__, 1, message, None, exc_info)
    record.created, record.msecs = 1795998682.25, 250.0  # 2026-11-30T00:31:22.250Z
    return record


def test_text_lines_carry_a_utc_iso_8601_timestamp():
    """Local time without an offset (2026-11-27 00:27:09,339) could not be lined up across hosts."""
    assert log_formatter("text", {}).format(_record(message="one")) == (
        "2026-11-30T00:31:22.250Z WARNING flowrl.serve: one"
    )


@pytest.fixture
def away_from_utc(monkeypatch):
    """This process's local zone set to UTC+05:30 (a POSIX rule: no tz database needed), then back."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    assert time.localtime(0).tm_min == 30  # the zone took
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("away_from_utc")
def test_text_and_json_times_are_utc_whatever_the_local_zone():
    """On a machine (or CI) whose zone is UTC, local time would pass for UTC unseen."""
    assert log_formatter("text", {}).format(_record(message="one")).startswith("2026-11-30T00:31:22.250Z ")
    assert json.loads(log_formatter("json", {}).format(_record()))["time"] == "2026-11-30T00:31:22.250Z"


def test_json_lines_are_one_object_each_with_the_traceback_as_a_field():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        line = log_formatter("json", {}).format(_record(logging.ERROR, "Act failed", sys.exc_info()))
    assert "\n" not in line
    entry = json.loads(line)
    assert {key: entry[key] for key in ("time", "level", "logger", "message")} == {
        "time": "2026-11-30T00:31:22.250Z",
        "level": "ERROR",
        "logger": "flowrl.serve",
        "message": "Act failed",
    }
    assert entry["traceback"].startswith("Traceback (most recent call last):")
    assert entry["traceback"].endswith("ValueError: bad\nvalue")
    assert "traceback" not in json.loads(log_formatter("json", {}).format(_record()))


def test_json_lines_keep_a_records_extra_fields():
    record = _record(message="refused")
    record.peer, record.count = "ipv4:10.0.0.7:51234", 3
    entry = json.loads(log_formatter("json", {}).format(record))
    assert entry["message"] == "refused" and entry["peer"] == "ipv4:10.0.0.7:51234" and entry["count"] == 3


def test_under_journald_text_lines_lose_the_timestamp_and_json_lines_keep_one_line():
    status = os.fstat(2)
    journal = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
    assert log_formatter("text", journal).format(_record()) == "<4>WARNING flowrl.serve: two\n<4>lines"
    line = log_formatter("json", journal).format(_record())
    assert line.startswith("<4>{") and "\n" not in line
    assert json.loads(line[3:])["message"] == "two\nlines"
