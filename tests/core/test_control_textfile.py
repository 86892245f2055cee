"""ControlTextfile, the control loop's node_exporter textfile: rewritten whole (a reader never sees part
of a file), periodically from its own thread and once more at the end, and a write that fails (a full
disk, a broken render) is counted and warned of once per kind, never raised into the control loop."""

from __future__ import annotations

import errno
import logging
import os
import threading
from types import SimpleNamespace

import pytest
from deploying import wait_for
from exposition_text import parse, value

from flowrl_deploy import atomic, control_metrics
from flowrl_deploy.control_metrics import ControlTextfile
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.session import _Health


def _session(**health) -> SimpleNamespace:
    """What exposition reads of a ControlSession, with ``health`` as given."""
    return SimpleNamespace(
        health=_Health(model_version="v1-0123456789", **health),
        session_id="control-test",
        fallback="hold",
        period_s=0.02,
        deadline_s=0.01,
    )


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "robot.prom")


def test_the_file_is_written_at_watch_then_every_interval_and_at_close_with_running_0(tmp_path):
    path = tmp_path / "robot.prom"
    session = _session()
    textfile = ControlTextfile(path, interval_s=0.02)
    textfile.watch(session)
    assert wait_for(path.exists, timeout_s=10)  # at once, before any tick
    assert value(parse(path.read_text()), "flowrl_control_ticks_total") == 0
    session.health.ticks = 7
    assert wait_for(lambda: "flowrl_control_ticks_total 7\n" in path.read_text(), timeout_s=10)
    assert value(parse(path.read_text()), "flowrl_control_running") == 1
    session.health.ticks = 9
    textfile.close()
    families = parse(path.read_text())
    assert value(families, "flowrl_control_ticks_total") == 9 and value(families, "flowrl_control_running") == 0
    assert _leftovers(tmp_path) == []
    textfile.close()  # again: nothing


def test_close_without_a_session_writes_nothing(tmp_path):
    with ControlTextfile(tmp_path / "robot.prom"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """node_exporter may read at any moment: each read is a whole file, old or new."""
    path = tmp_path / "robot.prom"
    session = _session()
    textfile = ControlTextfile(path, interval_s=3600)
    textfile.watch(session)
    assert wait_for(path.exists, timeout_s=10)  # the writer thread's first write
    stop, reads, bad = threading.Event(), [], []

    def read() -> None:
        while not stop.is_set():
            text = path.read_text()
            reads.append(text)
            try:
                parse(text)
            except ValueError as exc:
                bad.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for tick in range(300):
            session.health.ticks = tick
            session.health.fallbacks[f"CODE_{tick % 7}"] = tick  # files of different lengths
            assert textfile.write()
    finally:
        stop.set()
        reader.join()
        textfile.close()
    assert len(reads) > 10 and bad == []
    assert _leftovers(tmp_path) == []


def test_a_full_disk_is_counted_and_warned_of_once_per_kind_and_the_old_file_stays(tmp_path, monkeypatch, caplog):
    path = tmp_path / "robot.prom"
    session = _session()
    textfile = ControlTextfile(path, interval_s=3600)
    textfile.watch(session)
    assert wait_for(path.exists, timeout_s=10)  # the writer thread's first write
    before = path.read_text()
    failure = {"errno": errno.ENOSPC}

    def fsync(fd: int) -> None:
        raise OSError(failure["errno"], os.strerror(failure["errno"]))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    caplog.set_level(logging.WARNING, logger="flowrl.client")
    assert [textfile.write() for _ in range(3)] == [False] * 3  # no exception
    failure["errno"] = errno.EIO
    assert [textfile.write() for _ in range(2)] == [False] * 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "flowrl.client"]
    assert len(warnings) == 2, warnings  # one per kind, not one per write
    assert os.strerror(errno.ENOSPC) in warnings[0] and "ENOSPC" in warnings[0]
    assert os.strerror(errno.EIO) in warnings[1] and "EIO" in warnings[1]
    assert path.read_text() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert textfile.write()
    assert value(parse(path.read_text()), "flowrl_control_textfile_write_failures_total") == 5
    textfile.close()


def test_a_failing_render_neither_raises_nor_stops_the_writes(tmp_path, monkeypatch, caplog):
    path = tmp_path / "robot.prom"
    session = _session()
    real = control_metrics.exposition
    broken = {"on": True}

    def exposition(*args, **kwargs):
        if broken["on"]:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(control_metrics, "exposition", exposition)
    textfile = ControlTextfile(path, interval_s=0.02)
    with caplog.at_level(logging.WARNING, logger="flowrl.client"):
        textfile.watch(session)
        assert wait_for(lambda: textfile.failures >= 3, timeout_s=10)
    assert [r.getMessage() for r in caplog.records if r.name == "flowrl.client"] == [
        "the control metrics file was not written (a bug); the control loop goes on, and further RuntimeError "
        "failures of this file are not logged"
    ]
    broken["on"] = False
    assert wait_for(path.exists, timeout_s=10)  # the thread lived on
    textfile.close()
    assert value(parse(path.read_text()), "flowrl_control_running") == 0


def test_close_does_not_wait_for_a_write_stuck_in_a_hung_file_system(tmp_path, monkeypatch, caplog):
    path = tmp_path / "robot.prom"
    textfile = ControlTextfile(path, interval_s=0.01)
    textfile.watch(_session())
    hung = threading.Event()
    monkeypatch.setattr(control_metrics, "write_text_atomic", lambda *args: hung.wait(30))
    monkeypatch.setattr(control_metrics, "FINAL_WRITE_TIMEOUT_S", 0.2)
    caplog.set_level(logging.WARNING, logger="flowrl.client")
    try:
        textfile.close()
    finally:
        hung.set()
    assert any("did not end within 0.2 s" in r.getMessage() for r in caplog.records)


def test_the_writer_thread_is_a_daemon(tmp_path):
    """It never keeps a stopped robot's process alive (close waits for its last write a bounded time)."""
    textfile = ControlTextfile(tmp_path / "robot.prom")
    textfile.watch(_session())
    thread = textfile._thread
    try:
        assert thread is not None and thread.daemon and thread.name == "flowrl-metrics-textfile"
    finally:
        textfile.close()
    assert not thread.is_alive()


def test_watch_returns_at_once_though_the_first_write_hangs(tmp_path, monkeypatch):
    """The first write was the caller's: a hung file system held the control loop's first tick."""
    release = threading.Event()

    def hung(path, text):
        release.wait(10)

    monkeypatch.setattr(control_metrics, "write_text_atomic", hung)
    textfile = ControlTextfile(tmp_path / "robot.prom", interval_s=0.05)
    returned = threading.Event()
    watching = threading.Thread(target=lambda: (textfile.watch(_session()), returned.set()))
    watching.start()
    try:
        assert returned.wait(2)
    finally:
        release.set()
        watching.join(10)
        textfile.close()


def test_a_second_watch_is_refused_and_leaves_the_first_writer_the_only_one(tmp_path):
    """A second watch() started a second writer thread over the first, which close() then never joined:
    two threads rewrote one file, and close() returned while the first could still write."""
    path = tmp_path / "robot.prom"
    running = set(threading.enumerate())

    def writers() -> list[threading.Thread]:
        return [t for t in set(threading.enumerate()) - running if t.name == "flowrl-metrics-textfile"]

    textfile = ControlTextfile(path, interval_s=0.01)
    textfile.watch(_session())
    first = textfile._thread
    try:
        with pytest.raises(FlowRLError, match="already writes"):
            textfile.watch(_session(ticks=5))
        assert textfile._thread is first
        assert writers() == [first]
    finally:
        textfile.close()
    assert not first.is_alive()
    assert value(parse(path.read_text()), "flowrl_control_ticks_total") == 0  # the first session's, to the end
    with pytest.raises(FlowRLError, match="after close"):
        textfile.watch(_session())  # its writes have ended: one thread would write running 0 and stop
    assert writers() == []
