"""What a client command is given is checked before it connects, and a mistake is one line naming
the flag (and file): --server, --obs/--obs-file, --seed, the TLS files; and a reload that outlives
--timeout says the server abandons it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from closed_port import closed_address
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli.query import read_observation
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.connection import checked_target
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
OBS = "[0.1, 0.2, 0.3]"


def _refused(*args: str) -> str:
    """The output of a client command that must fail before connecting (no server listens)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "UNAVAILABLE" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


class TestServerAddress:
    @pytest.mark.parametrize(
        ("target", "why"),
        [
            ("localhost:-5", "port -5 is not in 1-65535"),  # gRPC connected to 65531
            ("localhost:0", "port 0 is not in 1-65535"),
            ("localhost:65536", "port 65536 is not in 1-65535"),
            ("localhost:abc", "port abc is not in 1-65535"),
            ("localhost:\uff15", "port \uff15 is not in 1-65535"),  # a digit to str.isdigit(), not to gRPC
            ("localhost", "no port"),  # gRPC would take 443
            ("", "empty"),  # gRPC logged its parser's trace
            (":50051", "no host"),
            (" localhost:50051", "' localhost' is not a host name or an IP address"),
            ("::1:50051", "more than one ':' (an IPv6 address goes in brackets)"),
            ("[::1]", "no ':port' after the bracketed IPv6 address"),
            ("[::1:50051", "the '[' is not closed"),
            ("[nonsense]:50051", "'nonsense' in brackets is not an IPv6 address"),
            ("unix:", "no socket path after 'unix:'"),
        ],
    )
    def test_a_bad_address_is_refused_naming_server(self, target, why):
        with pytest.raises(FlowRLError) as info:
            PolicyClient(target, target_name="--server")  # as the commands do
        assert str(info.value).startswith(f"--server {target!r}: {why};")
        assert "give host:port such as localhost:50051" in str(info.value)
        with pytest.raises(FlowRLError, match=f"^target {re.escape(repr(target))}: "):
            PolicyClient(target)  # the Python API names no command-line flag

    @pytest.mark.parametrize(
        "target",
        ["localhost:50051", "10.0.0.7:1", "robot-brain.lan:65535", "[::1]:50051", "[fe80::1%eth0]:7", "unix:/run/s"],
    )
    def test_good_addresses_pass_unchanged(self, target):
        assert checked_target(target) == target

    @pytest.mark.parametrize("command", ["query", "stats", "reload", "wait"])
    def test_commands_name_server_in_one_line(self, command):
        args = ["--obs", OBS] if command == "query" else []
        output = _refused(command, "--server", "localhost:-5", *args)
        assert "--server 'localhost:-5': port -5 is not in 1-65535" in output


class TestObservation:
    @pytest.mark.parametrize(
        ("content", "dtype"),
        [([0.1, 0.2, 0.3], np.float32), ([1, 2, 3], np.int64), ([[1, 2, 3], [4, 5, 6]], np.float64)],
    )
    def test_real_numbers_are_read_from_npy_and_json(self, tmp_path, content, dtype):
        np.save(tmp_path / "obs.npy", np.asarray(content, dtype))
        (tmp_path / "obs.json").write_text(json.dumps(content))
        for path in (tmp_path / "obs.npy", tmp_path / "obs.json"):
            array = read_observation("", path)
            assert array.dtype == np.float32
            np.testing.assert_allclose(array, np.asarray(content, np.float32))

    @pytest.mark.parametrize(
        ("array", "what"),
        [
            (np.array([1 + 2j, 3, 4]), "dtype complex128 is not accepted; float32 has no imaginary part"),
            (np.array(["1", "2", "3"]), "dtype <U1 is not accepted (text)"),
            (np.zeros(3, dtype=[("a", "<f4")]), "dtype [('a', '<f4')] is not accepted (structured records)"),
            (np.array([True, False, True]), "dtype bool is not accepted; pass float or integer numbers"),
            (np.array(["2026-11-26"], dtype="datetime64[D]"), "dtype datetime64[D] is not accepted (dates)"),
        ],
    )
    def test_an_npy_of_other_than_real_numbers_is_refused(self, tmp_path, array, what):
        np.save(tmp_path / "obs.npy", array)
        output = _refused("query", "--server", closed_address(), "--obs-file", str(tmp_path / "obs.npy"))
        assert f"--obs-file {tmp_path / 'obs.npy'}: {what}" in output

    def test_an_npz_is_named_as_an_archive(self, tmp_path):
        np.savez(tmp_path / "obs.npz", obs=np.zeros(3))
        for name in ("obs.npz", "renamed.npy"):
            (tmp_path / name).write_bytes((tmp_path / "obs.npz").read_bytes())
            with pytest.raises(FlowRLError) as info:
                read_observation("", tmp_path / name)
            assert str(info.value).startswith(f"--obs-file {tmp_path / name} is a zip archive (an .npz?)")

    def test_json_named_npy_is_not_blamed_on_pickle(self, tmp_path):
        (tmp_path / "obs.npy").write_text("[0, 0, 0]")
        with pytest.raises(FlowRLError, match=r"is not a \.npy file \(no NumPy header\)") as info:
            read_observation("", tmp_path / "obs.npy")
        assert "pickle" not in str(info.value)

    def test_a_truncated_npy_is_named(self, tmp_path):
        np.save(tmp_path / "obs.npy", np.zeros(3))
        (tmp_path / "obs.npy").write_bytes((tmp_path / "obs.npy").read_bytes()[:60])
        with pytest.raises(FlowRLError) as info:
            read_observation("", tmp_path / "obs.npy")
        assert str(info.value).startswith(f"--obs-file {tmp_path / 'obs.npy'} is not a readable .npy array (EOF")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "cannot read the observation: --obs-file {path} is not JSON (Expecting value"),
            ("[1, true, 3]", "--obs-file {path} holds true, not a number"),
            ('["1", 2, 3]', '--obs-file {path} holds "1", not a number'),
            ("[1, null, 3]", "--obs-file {path} holds null, not a number"),
            ("[[1, 2, 3], [4]]", "--obs-file {path} has rows of different lengths"),
            (f"[{10**400}, 0, 0]", "--obs-file {path} holds NaN, infinite or beyond-float32 values"),
            ("[" * 100_000, "cannot read the observation: --obs-file {path} nests its lists too deeply"),
        ],
    )
    def test_json_mistakes_name_the_file(self, tmp_path, text, message):
        path = tmp_path / "obs.json"
        path.write_text(text)
        output = _refused("query", "--server", closed_address(), "--obs-file", str(path))
        assert message.format(path=path) in output

    @pytest.mark.parametrize("path", ["/dev/zero", "missing.json", "."])
    def test_what_is_not_a_regular_file_is_refused_rather_than_read(self, path):
        output = _refused("query", "--server", closed_address(), "--obs-file", path)
        assert f"--obs-file {path} " in output

    def test_a_pipe_is_read_and_an_endless_one_is_cut_off(self, tmp_path):
        """`echo '[…]' | flowrl query --obs-file /dev/stdin` reads a pipe; `yes |` would never end."""
        import os
        import threading

        outputs = []
        for content in (b"[0.1, 0.2, 0.3]", b"1" * (17 << 20)):
            fifo = tmp_path / f"obs{len(content)}"
            os.mkfifo(fifo)
            writer = threading.Thread(target=_write_ignoring_close, args=(fifo, content))
            writer.start()
            args = ["query", "--server", closed_address(), "--obs-file", str(fifo), "--timeout", "1"]
            outputs.append(runner.invoke(app, args).output)
            writer.join(10)
        assert "UNAVAILABLE" in outputs[0] and "--obs-file" not in outputs[0]  # read; then no server answered
        assert "holds more than 16 MiB" in outputs[1] and "Traceback" not in outputs[1]

    def test_a_negative_seed_names_the_flag(self):
        output = _refused("query", "--server", closed_address(), "--obs", OBS, "--seed", "-1")
        assert "--seed must lie in [0, 2**64), got -1" in output


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> dict[str, str]:
    """A certificate and its key, another key, and garbage under a certificate's PEM lines."""
    pytest.importorskip("cryptography.x509")
    from pki import issue, write_pem

    directory = tmp_path_factory.mktemp("pem")
    files = dict(zip(("cert", "key"), write_pem(directory, "client", *issue("robot")), strict=True))
    files["other_key"] = write_pem(directory, "other", *issue("other"))[1]
    (directory / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    files["garbage"] = str(directory / "garbage.pem")
    return files


class TestTlsFiles:
    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            ({"--tls-cert": "cert", "--tls-key": "other_key"}, "--tls-key {other_key} are not a certificate and its"),
            ({"--tls-cert": "key", "--tls-key": "cert"}, "private key: they are swapped"),
            ({"--tls-cert": "garbage", "--tls-key": "key"}, "key: --tls-cert holds no valid PEM certificate"),
            ({"--tls-ca": "garbage"}, "--tls-ca {garbage} holds no valid PEM certificate"),  # not a hint at --tls-cert
        ],
    )
    @pytest.mark.parametrize("command", ["query", "stats", "reload", "wait"])
    def test_a_bad_file_is_named_before_connecting(self, pem, flags, message, command):
        args = [arg for flag, name in flags.items() for arg in (flag, pem[name])]
        query = ["--obs", OBS] if command == "query" else []
        output = _refused(command, "--server", closed_address(), *query, *args)
        assert message.format(**pem) in output and "handshaker" not in output


def test_a_reload_that_outlives_the_timeout_is_abandoned(tmp_path):
    """The reload waits for one in progress (the lock held here) until its --timeout passes: a reload
    of the file served answers "unchanged" at once, which could beat even a 1 ms --timeout."""
    path = write_policy(tmp_path / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        server = running.address
        with running.servicer.slot.load_lock:  # a reload in progress
            result = runner.invoke(app, ["reload", "--server", server, "--timeout", "0.5"])
    assert result.exit_code == 1, result.output
    assert "DEADLINE_EXCEEDED" in result.output and "the server abandons the reload" in result.output
    assert f"`flowrl stats --server {server}` tells" in result.output and "longer --timeout" in result.output
    assert "Traceback" not in result.output


def _write_ignoring_close(path: Path, data: bytes) -> None:
    """Write ``data`` into the FIFO ``path``; the reader may stop early (a broken pipe)."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except BrokenPipeError:
        pass
