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


def _accepted(listener: socket.socket, family: int, count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """``count`` connections from this process to ``listener``: the clients' ends and the accepted ends."""
    host, port = listener.getsockname()[:2]
    clients = [socket.create_connection((host, port)) for _ in range(count)]
    return clients, [listener.accept()[0] for _ in clients]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="connections are counted from /proc (Linux)")
def test_open_connections_are_this_processs_sockets_on_the_port_but_its_listener(tmp_path):
    opened = []
    try:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        other = socket.create_server(("127.0.0.1", 0))  # another server in this process
        datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not TCP, on the same port
        datagram.bind(("127.0.0.1", port))
        datagram.connect(("127.0.0.1", 9))  # with a peer, as a connection has
        opened += [listener, other, datagram]
        clients, accepted = _accepted(listener, socket.AF_INET, 3)
        opened += clients + accepted
        clients[0].close()  # its client closed it, this end not yet (CLOSE_WAIT): still counted
        out, into = _accepted(other, socket.AF_INET, 1)  # this process's connection to another server
        opened += out + into
        assert connections_module.open_connections(port) == 3
        assert connections_module.open_connections(other.getsockname()[1]) == 1
        if socket.has_ipv6:
            try:
                listener6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
            except OSError:  # no IPv6 loopback here
                listener6 = None
            if listener6 is not None:
                opened.append(listener6)
                clients6, accepted6 = _accepted(listener6, socket.AF_INET6, 2)
                opened += clients6 + accepted6
                assert connections_module.open_connections(listener6.getsockname()[1]) == 2
        accepted[1].close()  # closed here: gone
        assert connections_module.open_connections(port) == 2
        assert connections_module.open_connections(1) == 0
        assert connections_module.open_connections(port, str(tmp_path / "nowhere")) is None
        assert all(s.fileno() >= 0 for s in [listener, other, datagram, accepted[0], accepted[2]])
        listener.settimeout(0.01)
        with pytest.raises(TimeoutError):  # the listener is untouched: it still accepts (nothing comes)
            listener.accept()
    finally:
        for opened_socket in opened:
            opened_socket.close()


def test_connections_are_unknown_without_the_c_library(monkeypatch):
    monkeypatch.setattr(connections_module, "_libc", lambda: None)
    assert connections_module.open_connections(1) is None  # unknown, not 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="connections are counted from /proc (Linux)")
def test_counting_connections_leaves_every_socket_as_it_was():
    """The count reads each socket's addresses in place: no socket object made for it (a Python
    socket made over a descriptor, or over a dup of it, turns the socket non-blocking when
    socket.setdefaulttimeout is set, and a dup keeps gRPC's epoll registration alive after gRPC closes it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        clients, accepted = _accepted(listener, socket.AF_INET, 1)
        try:
            socket.setdefaulttimeout(2.0)
            try:
                assert connections_module.open_connections(listener.getsockname()[1]) == 1
            finally:
                socket.setdefaulttimeout(None)
            assert os.get_blocking(accepted[0].fileno()) and os.get_blocking(listener.fileno())
        finally:
            for connection in clients + accepted:
                connection.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="connections are counted from /proc (Linux)")
def test_connections_open_and_max_connections_are_in_use_and_limit(policy_path):
    """--max-connections and the connections open were in no metric (the docs said: use ss)."""
    config = ServeConfig(str(policy_path), port=0, max_connections=5, grace_s=0)
    with PolicyServer(config).start() as server:
        metrics = server.servicer.metrics
        host, port = server.address.rsplit(":", 1)

        def in_use(expected: int) -> str:
            deadline = time.monotonic() + 30
            while True:
                text = metrics.exposition()
                if f'flowrl_in_use{{limit="connections"}} {expected}\n' in text or time.monotonic() > deadline:
                    return text
                time.sleep(0.05)

        assert 'flowrl_in_use{limit="connections"} 0\n' in in_use(0)
        connections = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            with grpc.insecure_channel(server.address) as channel:  # and a gRPC client's
                pb_grpc.PolicyServiceStub(channel).Act(pb.ActRequest(obs=encode(OBS)), timeout=5)
                text = in_use(4)
                assert 'flowrl_in_use{limit="connections"} 4\n' in text
                assert 'flowrl_limit{limit="connections"} 5\n' in text
                assert 'flowrl_refused_total{limit="connections"}' not in text  # gRPC closes them unseen
                assert metrics.summary()["limits"]["connections"] == (4, 5, 0)
            assert 'flowrl_in_use{limit="connections"} 3\n' in in_use(3)
        finally:
            for connection in connections:
                connection.close()
        assert 'flowrl_in_use{limit="connections"} 0\n' in in_use(0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="connections are counted from /proc (Linux)")
def test_a_scrape_does_not_read_the_kernels_tcp_tables(policy_path, monkeypatch):
    """Each scrape and GetStats read /proc/net/tcp and tcp6, whose kernel walks every bucket of the
    host's TCP hash table (about 10 ms of CPU each on a VM with 262,144, whatever this server's connections)."""
    import builtins

    opened, real_open = [], builtins.open

    def watched(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    with PolicyServer(ServeConfig(str(policy_path), port=0, max_connections=5, grace_s=0)).start() as server:
        host, port = server.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))):
            monkeypatch.setattr(builtins, "open", watched)
            deadline = time.monotonic() + 30
            while server.servicer.metrics.summary()["limits"]["connections"][0] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert 'flowrl_in_use{limit="connections"} 1\n' in server.servicer.metrics.exposition()
            monkeypatch.undo()
    assert not [path for path in opened if "/net/tcp" in path], opened
