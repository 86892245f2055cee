"""examples/cpp, the C++ control-loop client, built with CMake from the repository's .proto and run
against a real server: the same actions as the Python session with the same seed, the contract pin, the
token, TLS, a server that goes away and comes back, and its input errors.

Skipped, saying what is missing, where the C++ toolchain is not installed (cmake, a C++ compiler,
gRPC's C++ library and protoc: ``apt install cmake g++ libgrpc++-dev protobuf-compiler-grpc``)."""

from __future__ import annotations

import collections
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from closed_port import closed_address
from tiny_policy import OBS_DIM

from flowrl_deploy.serve import PolicyServer, ServeConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "examples" / "cpp"
MISSING_PACKAGE = ("Could not find a package configuration file", "Could NOT find Protobuf", "No CMAKE_CXX_COMPILER")
APT = "apt install cmake g++ libgrpc++-dev protobuf-compiler-grpc"


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Path:
    """The built ``flowrl_cpp_control``."""
    missing = [tool for tool in ("cmake", "protoc", "grpc_cpp_plugin") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed ({APT})")
    build = tmp_path_factory.mktemp("cpp")
    configured = subprocess.run(["cmake", "-S", SOURCE, "-B", build], capture_output=True, text=True)
    if configured.returncode != 0 and any(text in configured.stderr for text in MISSING_PACKAGE):
        pytest.skip(f"the C++ toolchain or gRPC's C++ library is missing ({APT}): {configured.stderr[-300:]}")
    assert configured.returncode == 0, configured.stderr
    built = subprocess.run(["cmake", "--build", build, "-j2"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return build / "flowrl_cpp_control"


def run(control: Path, *args: str, lines: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [control, *args], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=timeout
    )


def observations(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, OBS_DIM)).astype(np.float32)


def ticks(stdout: str) -> list[tuple[str, np.ndarray]]:
    """(``fresh`` or the fallback's reason, action) per line the program printed."""
    parsed = []
    for line in stdout.splitlines():
        *reason, a, b = line.split()
        parsed.append((" ".join(reason), np.array([float(a), float(b)], dtype=np.float32)))
    return parsed


def test_the_cpp_session_acts_as_the_python_session_with_the_same_seed(control, server, client):
    """Tick by tick, where both got a fresh action in time (all or nearly all ticks: a 50 ms deadline;
    a late tick still draws its noise on the server, so the later ticks still match)."""
    obs = observations(30)
    done = run(control, "--server", server.address, "--seed", "7", "--hz", "20", "--deadline-ms", "50",
               lines=[" ".join(f"{v:.9g}" for v in row) for row in obs])  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = ticks(done.stdout)
    assert len(got) == len(obs) and "30 ticks at 20.0 Hz: " in done.stderr
    with client.session(period_s=0.05, deadline_s=0.05, seed=7) as session:
        expected = [(session.act(row), session.timings[-1].source == "server") for row in obs]
    fresh_in_both = zip((reason == "fresh" for reason, _ in got), (fresh for _, fresh in expected), strict=True)
    both = [i for i, (cpp, python) in enumerate(fresh_in_both) if cpp and python]
    assert len(both) >= 25, (got, expected)
    np.testing.assert_array_equal(np.stack([got[i][1] for i in both]), np.stack([expected[i][0] for i in both]))


def test_a_pinned_contract_is_checked_by_the_server(control, server, client):
    line = ["0.1, 0.2, 0.3"]
    pinned = run(control, "--server", server.address, "--pin", client.spec().contract_hash.upper(), lines=line)
    assert pinned.returncode == 0 and pinned.stdout.startswith("fresh "), pinned.stderr
    other = run(control, "--server", server.address, "--pin", "0123456789abcdef", lines=line)
    assert other.returncode == 1 and other.stdout == ""
    assert "error: the server refused the session: FAILED_PRECONDITION" in other.stderr


def test_a_token_is_sent_and_a_missing_one_refused(control, policy_path, tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    config = ServeConfig(str(policy_path), port=0, token="s3cret-token", grace_s=0, providers=("CPUExecutionProvider",))
    with PolicyServer(config).start() as server:
        sent = run(control, "--server", server.address, "--token-file", str(tmp_path / "token"), lines=["1 2 3"])
        assert sent.returncode == 0 and sent.stdout.startswith("fresh "), sent.stderr
        missing = run(control, "--server", server.address, lines=["1 2 3"])
    assert missing.returncode == 1 and "refused GetSpec: UNAUTHENTICATED" in missing.stderr


def test_tls_with_the_servers_ca(control, policy_path, tmp_path):
    pki = pytest.importorskip("pki", reason="cryptography (a dev extra) makes the test certificates")
    ca_key, ca_cert = pki.issue("flowrl test CA", ca=True)
    cert, key = pki.write_pem(tmp_path, "server", *pki.issue("server", ca_key, ca_cert.subject))
    ca = pki.write_pem(tmp_path, "ca", ca_key, ca_cert)[0]
    config = ServeConfig(str(policy_path), port=0, tls_cert=cert, tls_key=key, grace_s=0,
                         providers=("CPUExecutionProvider",))  # fmt: skip
    with PolicyServer(config).start() as server:
        port = server.address.rsplit(":", 1)[1]
        secure = run(control, "--server", f"localhost:{port}", "--ca", ca, lines=["1 2 3"])
        assert secure.returncode == 0 and secure.stdout.startswith("fresh "), secure.stderr
        plaintext = run(control, "--server", f"localhost:{port}", "--wait-s", "1", lines=["1 2 3"])
    assert plaintext.returncode == 1 and "one with TLS needs --ca" in plaintext.stderr


def test_a_server_that_goes_away_and_comes_back(control, policy_path):
    """The loop holds its last action while the server is down ('disconnected'), and never waits on a
    reconnection: not on a port that takes connections and never answers (a hung host; opening a stream
    there waited out a 2 s connection attempt per tick that tried), and acts on fresh actions again soon
    once a server listens on the address again; the watchdog is off."""
    config = ServeConfig(str(policy_path), port=0, grace_s=0, providers=("CPUExecutionProvider",))
    first = PolicyServer(config).start()
    address = first.address
    port = int(address.rsplit(":", 1)[1])
    loop = subprocess.Popen([control, "--server", address, "--hz", "100"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def tick() -> tuple[str, np.ndarray]:
        loop.stdin.write("0.5 -0.5 0.25\n")
        loop.stdin.flush()
        return ticks(loop.stdout.readline())[0]

    try:
        reason, served = tick()
        assert reason == "fresh"
        first.stop(grace=0)
        down = [tick() for _ in range(20)]
        assert "disconnected" in {reason for reason, _ in down}
        assert all(np.array_equal(action, served) for reason, action in down if reason != "fresh")
        with socket.socket() as hung:  # listens, never accepts: the kernel completes connections, nobody answers
            hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hung.bind(("127.0.0.1", port))
            hung.listen(64)
            slowest = 0.0
            for _ in range(300):  # 3 s at 100 Hz: a connection attempt there takes 2 s
                start = time.monotonic()
                reason, action = tick()
                slowest = max(slowest, time.monotonic() - start)
                assert reason == "disconnected" and np.array_equal(action, served)
        assert slowest < 0.5, f"a tick took {slowest:.2f} s"
        again = ServeConfig(str(policy_path), port=port, grace_s=0, providers=("CPUExecutionProvider",))
        with PolicyServer(again).start():
            back = [tick()[0] for _ in range(400)]  # the backoff waits at most 1 s, then a 2 s attempt may end
            assert "fresh" in back, collections.Counter(back)
            loop.stdin.close()
            assert loop.wait(timeout=30) == 0
    finally:
        loop.kill()
        first.stop(grace=0)
    assert "disconnected" in loop.stderr.read()


def test_the_watchdog_stops_a_loop_without_fresh_actions(control, server):
    """A server that answers no tick in time (a deadline far below its round trip) trips the watchdog."""
    done = run(control, "--server", server.address, "--deadline-ms", "0.001", "--max-misses", "3", lines=["1 2 3"] * 10)
    assert done.returncode == 3, done.stderr
    # late by its own clock, or by the server's (whose DEADLINE_EXCEEDED reply came first on a loaded machine)
    late = {"deadline", "DEADLINE_EXCEEDED"}
    assert len(ticks(done.stdout)) == 2 and {reason for reason, _ in ticks(done.stdout)} <= late
    assert re.search(r"watchdog: 3 ticks in a row without a fresh action \(the last: (deadline|DEADLINE_EXCEEDED)\): "
                     "stop the robot", done.stderr), done.stderr  # fmt: skip
    held = [action for _, action in ticks(done.stdout)]
    np.testing.assert_array_equal(held, np.zeros((2, 2), np.float32))  # the middle of [-1, 1] × [-2, 2]


@pytest.mark.parametrize(
    ("args", "lines", "error"),
    [
        ((), ["1 2"], "error: line 1 has 2 numbers; the policy takes 3"),
        ((), ["1 2 x"], "error: line 1: 'x' is not a number"),
        ((), ["1 2 nan"], "error: observation entry 2 is not finite"),
        (("--hz", "fast"), [], "error: --hz takes a number, not 'fast'"),
        (("--deadline-ms", "-5"), [], "error: --deadline-ms must be from 0.001 (1 µs) to 100000"),
        (("--deadline-ms", "1e300"), [], "error: --deadline-ms must be from 0.001 (1 µs) to 100000"),
        (("--hz", "1e9"), [], "error: --hz must be from 0.01 to 10000"),
        (("--hz", "50", "--deadline-ms", "30"), ["1 2 3"], "error: the deadline is longer than the control period"),
        (("--seed", "-1"), [], "error: --seed takes a whole number from 0 to 2^64 - 1, not '-1'"),
        (("--speed", "1"), [], "error: unknown option --speed"),
    ],
)
def test_bad_input_is_named(control, server, args, lines, error):
    done = run(control, "--server", server.address, *args, lines=lines)
    assert done.returncode == 2 and error in done.stderr, done.stderr


def test_a_closed_port_is_waited_for_then_named(control):
    """GetSpec waits --wait-s (30 s by default) for a server to listen, as a robot started before its
    server needs, then says what it waited for."""
    start = time.monotonic()
    done = run(control, "--server", closed_address(), "--wait-s", "1", lines=["1 2 3"])
    assert done.returncode == 1 and time.monotonic() - start >= 1
    assert "no answer from the server within 1 s (is flowrl serve running there?" in done.stderr, done.stderr


def test_a_server_that_starts_later_is_waited_for(control, policy_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loop = subprocess.Popen([control, "--server", f"127.0.0.1:{port}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1.0)  # the program waits for GetSpec meanwhile
        config = ServeConfig(str(policy_path), port=port, grace_s=0, providers=("CPUExecutionProvider",))
        with PolicyServer(config).start():
            out, err = loop.communicate("1 2 3\n", timeout=30)
    finally:
        loop.kill()
    assert loop.returncode == 0 and out.startswith("fresh "), err
