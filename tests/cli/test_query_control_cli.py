"""`flowrl query` and `flowrl control` against real in-process servers: mutual TLS, the control rate
taken from the served contract, honest figures when no fresh action arrived, the watchdog, hints."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from closed_port import closed_address
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
OBS = "[0.1, 0.2, 0.3, 0.4, 0.5]"
SHORT_RUN = ["--max-steps", "5", "--deadline-ms", "20"]  # at most the period of every rate below
NO_REPLY_IN_TIME = ["--deadline-ms", "0.001"]  # 1 µs: shorter than any round trip


def _cartpole_policy(path: Path, control_period_s: float) -> Path:
    return write_policy(
        path, obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), obs_layout=(), action_names=(),
        env_id="dmc:cartpole-swingup", control_period_s=control_period_s,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate it issued."""
    pytest.importorskip("cryptography.x509")
    from pki import issue, write_pem

    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = issue("flowrl test CA", ca=True)
    files = {"ca": write_pem(directory, "ca", ca_key, ca_cert)[0]}
    files["server"] = write_pem(directory, "server", *issue("localhost", ca_key, ca_cert.subject))
    files["client"] = write_pem(directory, "client", *issue("robot", ca_key, ca_cert.subject))
    return files


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    """A server with --client-ca: it serves only clients holding a certificate from the CA. On 127.0.0.1
    (its certificate names it), not `localhost`: in one CI run under load, 127.0.0.1 refused the
    connection at the port `localhost` had bound (on [::1] only, seemingly), and the refusal hid the TLS
    failure these tests look for."""
    path = _cartpole_policy(tmp_path_factory.mktemp("mtls") / "policy.onnx", 0.05)
    cert, key = pki["server"]
    config = ServeConfig(
        str(path), host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, client_ca=pki["ca"], grace_s=0
    )
    with PolicyServer(config).start() as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def server_20hz(tmp_path_factory):
    """A plain server whose policy's contract says a control period of 0.05 s."""
    path = _cartpole_policy(tmp_path_factory.mktemp("hz20") / "policy.onnx", 0.05)
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        yield running.address


def _mtls_args(pki, *, cert: bool = True, key: bool = True) -> list[str]:
    args = ["--tls-ca", pki["ca"]]
    if cert:
        args += ["--tls-cert", pki["client"][0]]
    if key:
        args += ["--tls-key", pki["client"][1]]
    return args


class TestMutualTLS:
    def test_query_presents_a_client_certificate(self, mtls_server, pki):
        result = runner.invoke(app, ["query", "--server", mtls_server, "--obs", OBS, *_mtls_args(pki)])
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)["action"]) == 1

    def test_control_presents_a_client_certificate(self, mtls_server, pki):
        pytest.importorskip("dm_control")
        result = runner.invoke(app, ["control", "--server", mtls_server, *SHORT_RUN, *_mtls_args(pki)])
        assert result.exit_code == 0, result.output
        assert "(5 steps; episode length 5 steps, 0 of 1 ended by termination)" in result.output
        assert "ticks without a fresh action 0 (" in result.output

    @pytest.mark.parametrize("command", ["query", "control"])
    def test_without_a_client_certificate_the_hint_names_it(self, mtls_server, pki, command):
        args = ["--obs", OBS, "--timeout", "2"] if command == "query" else ["--connect-timeout", "1"]
        result = runner.invoke(app, [command, "--server", mtls_server, *args, "--tls-ca", pki["ca"]])
        assert result.exit_code == 1
        assert "pass --tls-cert and --tls-key" in result.output and "Traceback" not in result.output

    @pytest.mark.parametrize("command", ["query", "control"])
    @pytest.mark.parametrize("given", ["cert", "key"])
    def test_a_certificate_without_its_key_is_refused_before_connecting(self, pki, command, given):
        args = ["--obs", OBS] if command == "query" else []
        tls = _mtls_args(pki, cert=given == "cert", key=given == "key")
        result = runner.invoke(app, [command, "--server", closed_address(), *args, *tls])
        assert result.exit_code == 1, result.output
        assert "--tls-cert and --tls-key go together" in result.output
        assert "Traceback" not in result.output and "not SERVING" not in result.output
        assert len(result.output.strip().splitlines()) == 1

    @pytest.mark.parametrize("command", ["query", "control"])
    def test_a_refused_connection_hints_at_the_server_not_at_tls(self, command):
        """'Connection refused' (nothing listens there) used to suggest --tls-ca."""
        args = ["--obs", OBS, "--timeout", "2"] if command == "query" else ["--connect-timeout", "1"]
        result = runner.invoke(app, [command, "--server", closed_address(), *args])
        assert result.exit_code == 1
        assert "Connection refused" in result.output and "--tls-ca" not in result.output
        assert "nothing listens at that port on this machine: is `flowrl serve` running" in result.output
        assert result.output.count("is `flowrl serve` running") == 1  # the hint replaces wait_ready's question

    def test_a_refused_connection_to_another_machine_names_the_servers_host(self):
        """From another machine, the usual cause is a server on its default --host 127.0.0.1."""
        from flowrl_deploy.connection import connection_hint

        error = "UNAVAILABLE: ... ipv4:192.0.2.2:50051: Failed to connect to remote host: Connection refused"
        remote = ("192.0.2.2:50051", "robot-brain:50051", "[2001:db8::1]:50051", "dns:///robot-brain:50051")
        for target in (*remote, "ipv4:127.0.0.1:50051,192.0.2.2:50051", "ipv6:[2001:db8::1]:50051"):
            hint = connection_hint(error, target, "", "")
            assert "needs --host 0.0.0.0 (its default, 127.0.0.1, takes local connections only)" in hint, target
        local = ("localhost:50051", "[::1]:50051", "unix:/tmp/flowrl.sock", "0.0.0.0:50051", "[::]:50051")
        schemes = ("dns:///localhost:50051", "dns:localhost:50051", "dns://8.8.8.8:53/localhost:50051")
        for target in (*local, *schemes, "ipv4:127.0.0.1:50051,127.0.0.2:50051", "ipv6:[::1]:50051"):
            assert "on this machine" in connection_hint(error, target, "", ""), target
        assert "on this machine" in connection_hint(error, "unix-abstract:flowrl", "", "")
        closed = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:192.0.2.2:50051: Socket closed"
        assert connection_hint(closed, "192.0.2.2:50051", "", "").startswith("if the server uses TLS, pass --tls-ca")

    @pytest.mark.parametrize("command", ["query", "control"])
    def test_plaintext_to_a_tls_server_hints_at_tls(self, mtls_server, command):
        args = ["--obs", OBS, "--timeout", "2"] if command == "query" else ["--connect-timeout", "1"]
        result = runner.invoke(app, [command, "--server", mtls_server, *args])
        assert result.exit_code == 1
        assert "UNAVAILABLE" in result.output and "if the server uses TLS, pass --tls-ca" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


class TestControlRate:
    def test_the_default_rate_is_the_served_policys(self, server_20hz, tmp_path):
        pytest.importorskip("dm_control")
        out = tmp_path / "report.json"
        result = runner.invoke(app, ["control", "--server", server_20hz, *SHORT_RUN, "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert "control at 20 Hz (the served policy's control period 0.05 s)" in result.output
        assert "warning" not in result.output
        report = json.loads(out.read_text())
        assert report["hz"] == 20 and report["contract_hz"] == 20

    def test_without_a_contract_rate_the_default_is_50_hz(self, tmp_path):
        pytest.importorskip("dm_control")
        path = _cartpole_policy(tmp_path / "policy.onnx", 0.0)
        with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server:
            result = runner.invoke(app, ["control", "--server", server.address, *SHORT_RUN])
        assert result.exit_code == 0, result.output
        assert "control at 50 Hz (the served policy's contract has no control period)" in result.output

    def test_an_explicit_rate_that_differs_from_the_contract_is_warned_about(self, server_20hz):
        """Once, naming the flag: the session's own period warning is not repeated."""
        pytest.importorskip("dm_control")
        result = runner.invoke(app, ["control", "--server", server_20hz, *SHORT_RUN, "--hz", "50"])
        assert "period_s" not in result.output
        assert result.exit_code == 0, result.output
        assert "control at 50 Hz (--hz)" in result.output
        warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
        assert warnings == ["warning: --hz 50 differs from the served policy's rate, 20 Hz (control period 0.05 s)"]

    def test_an_explicit_rate_equal_to_the_contract_is_not_warned_about(self, server_20hz):
        pytest.importorskip("dm_control")
        result = runner.invoke(app, ["control", "--server", server_20hz, *SHORT_RUN, "--hz", "20"])
        assert result.exit_code == 0, result.output
        assert "control at 20 Hz (--hz)" in result.output
        # only the rate warning: a busy machine may miss one of the 5 ticks and warn of the misses
        assert "differs from the served policy's rate" not in result.output


class TestNoFreshAction:
    def test_a_run_without_any_fresh_action_fails_and_shows_no_latency(self, server_20hz, tmp_path):
        pytest.importorskip("dm_control")
        out = tmp_path / "report.json"
        args = ["control", "--server", server_20hz, "--max-steps", "20", *NO_REPLY_IN_TIME, "--json", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert " 0 µs" not in result.output
        assert "round trip: no fresh replies" in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert errors == [
            "error: no tick got a fresh action: all 20 fell back (deadline 0.001 ms); "
            "raise --deadline-ms or check the server"
        ]
        report = json.loads(out.read_text())
        assert report["fresh_replies"] == 0 and report["deadline_misses"] == 20
        assert report["round_trip_p50_us"] is None and report["round_trip_us"] == []

    def test_the_note_on_fallback_ticks_goes_to_stderr_before_the_error(self, server_20hz):
        """The `note: … not the seeded episode's` line came on stdout after the summary (upgrade review
        F8): a script taking stdout's last line for the summary's read the note. Notes go to stderr."""
        pytest.importorskip("dm_control")
        result = runner.invoke(app, ["control", "--server", server_20hz, "--max-steps", "5", *NO_REPLY_IN_TIME])
        assert result.exit_code == 1, result.output
        assert "note:" not in result.stdout
        assert result.stdout.splitlines()[-1].startswith("warning: 100.0% of the ticks acted on the fallback")
        lines = result.stderr.splitlines()
        assert lines[-2].startswith("note: 5 ticks acted on the hold fallback, so the return is not the seeded")
        assert lines[-1].startswith("error: no tick got a fresh action")

    def test_max_misses_stops_the_run_through_the_watchdog(self, server_20hz):
        pytest.importorskip("dm_control")
        args = ["control", "--server", server_20hz, "--max-steps", "50", *NO_REPLY_IN_TIME, "--max-misses", "3"]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "no episode completed (3 steps)" in result.output and "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert errors == [
            "error: the watchdog stopped the run: 3 control ticks in a row without a fresh action (--max-misses 3)"
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hz", "1e-9"], "--hz 1e-09 is out of range: a control rate lies in [0.1, 10000] Hz"),
        (["--hz", "1e5"], "--hz 100000 is out of range"),
        (["--hz", "0"], "--hz 0 is out of range: a control rate lies in [0.1, 10000] Hz"),  # as any other rate
        (["--hz", "-50"], "--hz -50 is out of range: a control rate lies in [0.1, 10000] Hz"),
        (["--connect-timeout", "1e12"], "--connect-timeout must be a number of seconds in (0, 86400], got 1e+12"),
        (["--local-model", "policy.onnx"], "--local-model is used only with --fallback local (--fallback is 'hold')"),
        (["--cpus", "0-999999999"], "--cpus '0-999999999': no core"),
    ],
)
def test_control_settings_that_would_hang_or_be_ignored_are_refused_before_connecting(args, message):
    """--hz 1e-9 slept 1e9 s a tick, --connect-timeout 1e12 waited for ever, --local-model without
    --fallback local was silently ignored, and --cpus 0-999999999 built a billion-int set."""
    start = time.monotonic()
    result = runner.invoke(app, ["control", "--server", closed_address(), "--max-steps", "20", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "not SERVING" not in result.output and time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--deadline-ms", "1e9"], "--deadline-ms 1e+09 is longer than the control period, 50 ms at 20 Hz"),
        (
            ["--hz", "500", "--deadline-ms", "2.5"],
            "--deadline-ms 2.5 is longer than the control period, 2 ms at 500 Hz",
        ),
    ],
)
def test_a_deadline_longer_than_the_period_is_refused_naming_both(server_20hz, args, message):
    pytest.importorskip("dm_control")
    result = runner.invoke(app, ["control", "--server", server_20hz, "--max-steps", "5", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--obs", "5"], "--obs must be a list [..] or a batch [[..], ..], got a number"),
        (["--obs", '"5"'], "--obs must be a list [..] or a batch [[..], ..], got a string"),
        (["--obs", '{"obs": [1]}'], "--obs must be a list [..] or a batch [[..], ..], got an object {..}"),
        (["--obs", "null"], "--obs must be a list [..] or a batch [[..], ..], got null"),
        (["--obs-file", "{tmp}/obs.npy"], "--obs-file {tmp}/obs.npy must be a list [..] or a batch [[..], ..], "
         "got a number (an array of shape ())"),
    ],
)  # fmt: skip
def test_an_observation_that_is_not_a_list_is_refused_before_connecting(tmp_path, args, message):
    """`--obs 5` reached the server, which answered only "INVALID_ARGUMENT: obs: missing shape"."""
    import numpy as np

    np.save(tmp_path / "obs.npy", np.float32(5))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["query", "--server", closed_address(), *args])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"error: {message.replace('{tmp}', str(tmp_path))}"]
