"""Connections cost the server a file descriptor and memory each, before any token is checked: it
kept every one for ever, so that about 1000 silent TCP connections (under the usual `ulimit -n 1024`)
locked every client out. Connections beyond ``max_connections`` are closed at once, one that has
not begun HTTP/2 within the handshake timeout is closed, and one with no call in flight for the idle
time is closed (a client reconnects on its next call); an open stream is never idle."""

from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import pytest

from flowrl_deploy.codec import encode
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import connections as connections_module
from flowrl_deploy.serve import run as run_module

OBS = [0.1, -0.2, 0.3]


def closed_within(connection: socket.socket, wait: float) -> bool:
    """Whether the server closes ``connection`` within ``wait`` s (whatever it sends first)."""
    connection.settimeout(wait)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            connection.settimeout(max(deadline - time.monotonic(), 0.01))
            if not connection.recv(4096):
                return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True
    return False


def test_max_connections_is_checked(policy_path):
    with pytest.raises(FlowRLError, match=r"^--max-connections must be >= 1, got 0$"):
        ServeConfig(str(policy_path), max_connections=0)


def test_connections_beyond_the_cap_are_closed_at_once(policy_path):
    config = ServeConfig(str(policy_path), port=0, max_connections=3, grace_s=0)
    with PolicyServer(config).start() as server:
        host, port = server.address.rsplit(":", 1)
        connections = [socket.create_connection((host, int(port))) for _ in range(6)]
        try:
            closed = [closed_within(connection, 1.0) for connection in connections]
            assert sum(closed) >= 3 and not all(closed)
        finally:
            for connection in connections:
                connection.close()


def test_a_connection_that_never_begins_http2_is_closed_at_the_handshake_timeout(policy_path, monkeypatch):
    monkeypatch.setattr(connections_module, "HANDSHAKE_TIMEOUT_S", 1.0)
    with PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start() as server:
        host, port = server.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as silent:
            assert closed_within(silent, 10)


def test_an_idle_connection_is_closed_and_an_open_stream_is_not(policy_path, monkeypatch):
    monkeypatch.setattr(connections_module, "CONNECTION_IDLE_S", 1.0)
    server = PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0))
    with server.start(), grpc.insecure_channel(server.address) as channel:
        requests, replies = [], threading.Semaphore(0)

        def sent():
            while True:
                replies.acquire()
                if not requests:
                    return
                yield requests.pop()

        stream = pb_grpc.PolicyServiceStub(channel).StreamAct(sent(), timeout=30)
        for _ in range(3):  # a request, then 1.5 s with the stream open and nothing sent
            requests.append(pb.StreamActRequest(obs=encode(OBS)))
            replies.release()
            assert next(stream).action.shape == [2]
            time.sleep(1.5)
        replies.release()  # no more requests: the stream ends
        assert list(stream) == []
        idle = threading.Event()
        channel.subscribe(
            lambda state: idle.set() if state == grpc.ChannelConnectivity.IDLE else None, try_to_connect=False
        )
        assert idle.wait(10)  # the server closed the connection once no call was left
        # and the next call reconnects
        assert pb_grpc.PolicyServiceStub(channel).Act(pb.ActRequest(obs=encode(OBS)), timeout=5).action.shape == [2]


@pytest.mark.skipif(connections_module.resource is None, reason="no file-descriptor limit to read (not POSIX)")
def test_max_connections_beyond_the_file_descriptor_limit_is_warned_of(policy_path, monkeypatch, caplog):
    """The README said to keep --max-connections below `ulimit -n`, and nothing checked it: beyond,
    accepts fail for want of descriptors before the cap is reached."""
    limits = {"soft": 256}
    monkeypatch.setattr(connections_module.resource, "getrlimit", lambda which: (limits["soft"], 4096))
    config = ServeConfig(str(policy_path), port=0, max_connections=512, grace_s=0)
    with caplog.at_level("WARNING", logger="flowrl.serve"), PolicyServer(config).start():
        pass
    warned = [record.getMessage() for record in caplog.records if "--max-connections" in record.getMessage()]
    assert len(warned) == 1 and "ulimit -n" in warned[0] and "256" in warned[0], warned
    caplog.clear()
    limits["soft"] = 100_000
    config = ServeConfig(str(policy_path), port=0, max_connections=512, grace_s=0)
    with caplog.at_level("WARNING", logger="flowrl.serve"), PolicyServer(config).start():
        pass
    assert not [record for record in caplog.records if "--max-connections" in record.getMessage()]


def test_the_file_limit_warning_keeps_the_servers_own_files_out_of_ulimit_n(monkeypatch, caplog):
    """A cap of exactly `ulimit -n` connections leaves no descriptor for the listening sockets, the
    model file or a reload: the cap must fit below it by the server's own files."""
    monkeypatch.setattr(connections_module.resource, "getrlimit", lambda which: (1024, 4096))
    warned = []
    for most in (1024 - connections_module.OWN_FILES, 1024 - connections_module.OWN_FILES + 1, 1024):
        caplog.clear()
        with caplog.at_level("WARNING", logger="flowrl.serve"):
            connections_module.warn_of_file_limit(most)
        warned.append(bool([r for r in caplog.records if "--max-connections" in r.getMessage()]))
    assert warned == [False, True, True]


def test_a_silent_connection_is_closed_within_10_s():
    """gRPC's default handshake timeout (120 s) let silent TCP connections hold descriptors for minutes."""
    assert dict(connections_module.connection_options(512))["grpc.server_handshake_timeout_ms"] <= 10_000


def test_the_idle_close_comes_after_half_an_hour_not_five_minutes():
    """A PolicyClient making a call every few minutes reconnected (and its program's stderr got gRPC's
    'Got goaway … connection idle' line) every 5 idle minutes; its keepalive pings do not count as
    activity. The close is for silent peers' descriptors, which --max-connections bounds already."""
    options = dict(connections_module.connection_options(512))
    assert options["grpc.max_connection_idle_ms"] >= 30 * 60 * 1000
    assert options["grpc.max_allowed_incoming_connections"] == 512


def test_a_library_server_says_it_leaves_cpus_and_rt_priority_to_its_caller(policy_path, caplog):
    """ServeConfig(rt_priority=50) given to PolicyServer.start() ran at the normal priority without a word."""
    config = ServeConfig(str(policy_path), port=0, rt_priority=50, cpus=(0,), grace_s=0)
    with caplog.at_level("INFO", logger="flowrl.serve"), PolicyServer(config).start():
        pass
    told = [r.getMessage() for r in caplog.records if "rt_priority" in r.getMessage()]
    assert len(told) == 1 and "set_realtime" in told[0] and "pin_to_cpus" in told[0], told
    caplog.clear()
    with caplog.at_level("INFO", logger="flowrl.serve"), PolicyServer(ServeConfig(str(policy_path), port=0)).start():
        pass
    assert not [r for r in caplog.records if "rt_priority" in r.getMessage()]


@pytest.mark.parametrize("settings", [{"rt_priority": 50}, {"cpus": (0,)}], ids=["rt_priority", "cpus"])
def test_a_library_server_given_either_setting_alone_says_so(policy_path, caplog, settings):
    config = ServeConfig(str(policy_path), port=0, grace_s=0, **settings)
    with caplog.at_level("INFO", logger="flowrl.serve"), PolicyServer(config).start():
        pass
    assert len([r for r in caplog.records if "rt_priority" in r.getMessage()]) == 1


def test_serve_forever_which_applies_cpus_itself_does_not_say_so(policy_path, caplog, monkeypatch):
    import os
    import signal

    monkeypatch.setattr(run_module, "pin_to_cpus", lambda cpus: None)  # this test process stays unpinned
    config = ServeConfig(str(policy_path), port=0, cpus=(0,), grace_s=0)
    with caplog.at_level("INFO", logger="flowrl.serve"):
        run_module.serve_forever(config, on_ready=lambda _: os.kill(os.getpid(), signal.SIGTERM))
    assert not [r for r in caplog.records if "rt_priority" in r.getMessage()]


def _tcp_table(*rows: tuple[str, str, str]) -> str:
    """/proc/net/tcp's text: (local address:port, state, inode) per row, in its hex notation."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    body = "".join(
        f"   {i}: {local} 0100007F:D431 {state} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0\n"
        for i, (local, state, inode) in enumerate(rows)
    )
    return header + body


def test_open_connections_are_this_processs_sockets_on_the_port_but_its_listener(tmp_path):
    proc = tmp_path / "self"
    (proc / "fd").mkdir(parents=True)
    (proc / "net").mkdir()
    for fd, target in enumerate(["socket:[100]", "socket:[101]", "socket:[102]", "socket:[103]", "/dev/null"]):
        (proc / "fd" / str(fd)).symlink_to(target)
    port = "C351"  # 50001
    (proc / "net" / "tcp").write_text(
        _tcp_table(
            (f"0100007F:{port}", "0A", "100"),  # the listener
            (f"0100007F:{port}", "01", "101"),  # a client's connection
            (f"0100007F:{port}", "08", "102"),  # one its client closed, not yet closed here (CLOSE_WAIT)
            ("0100007F:D431", "01", "103"),  # this process's connection to another server
            (f"0100007F:{port}", "01", "999"),  # another process's (not among these fds)
            (f"0100007F:{port}", "06", "0"),  # TIME_WAIT: no socket left
        )
    )
    (proc / "net" / "tcp6").write_text(_tcp_table((f"00000000000000000000000001000000:{port}", "01", "103")))
    assert connections_module.open_connections(50001, str(proc)) == 3
    assert connections_module.open_connections(50002, str(proc)) == 0
    assert connections_module.open_connections(50001, str(tmp_path / "nowhere")) is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="connections are counted from /proc (Linux)")
def test_connections_open_and_max_connections_are_in_use_and_limit(policy_path):
    """--max-connections and the connections open were in no metric (the docs said: use ss)."""
    config = ServeConfig(str(policy_path), port=0, max_connections=5, grace_s=0)
    with PolicyServer(config).start() as server:
        metrics = server.servicer.metrics
        host, port = server.address.rsplit(":", 1)

        def in_use(expected: int) -> str:
            deadline = time.monotonic() + 5
            while True:
                text = metrics.exposition()
                if f'flowrl_in_use{{limit="connections"}} {expected}\n' in text or time.monotonic() > deadline:
                    return text
                time.sleep(0.05)

        assert 'flowrl_in_use{limit="connections"} 0\n' in in_use(0)
        connections = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            text = in_use(3)
            assert 'flowrl_in_use{limit="connections"} 3\n' in text
            assert 'flowrl_limit{limit="connections"} 5\n' in text
            assert 'flowrl_refused_total{limit="connections"}' not in text  # gRPC closes them unseen
            assert metrics.summary()["limits"]["connections"] == (3, 5, 0)
        finally:
            for connection in connections:
                connection.close()
        assert 'flowrl_in_use{limit="connections"} 0\n' in in_use(0)
