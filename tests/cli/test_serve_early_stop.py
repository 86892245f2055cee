"""A stop signal in `flowrl serve`'s first seconds, while the command loads its libraries (grpc, onnxruntime,
the exporter) before the server's own stop handling: SIGTERM killed it silently with status 143 and Ctrl-C
said 'flowrl serve stopped before it finished' with 130, where the README and docs/serve.md promise a
graceful stop, exit status 0, also during start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tiny_policy import write_policy

# `flowrl serve MODEL --port 0` with the signal sent as the command sets up its logging, once its libraries
# are loaded and before it reads any file, as a user's Ctrl-C or a service manager's stop in its first
# seconds lands (one during the imports themselves is noted by the same handler, which raises nothing then).
PROGRAM = textwrap.dedent(
    """
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C: see SIGINT_AS_A_TERMINALS
    from flowrl_deploy.cli import app

    serve_command = sys.modules["flowrl_deploy.cli.serve"]  # the package's `serve` is the command function

    model, name = sys.argv[1], sys.argv[2]
    configure = serve_command.configure_logging

    def configure_then_stop(*args):
        os.kill(os.getpid(), getattr(signal, name))
        configure(*args)

    serve_command.configure_logging = configure_then_stop
    sys.argv = ["flowrl", "serve", model, "--port", "0", "--grace-s", "0"]
    app()
    """
)


SIGINT_AS_A_TERMINALS = "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
"""A background job's SIGINT starts ignored (and stays so): the child takes a terminal's Ctrl-C itself. Not in a
preexec_fn, which runs between fork and exec, where gRPC's fork handlers (gRPC is loaded by earlier tests) restart
its poller on the epoll descriptor that close_fds closed: the child then aborted (-6, 'epoll_wait error: Bad file
descriptor') before its exec, now and then (grpc/grpc#43055)."""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_while_serve_loads_its_libraries_is_a_graceful_stop(tmp_path, name):
    model = write_policy(tmp_path / "policy.onnx")
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(model), name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"stopping on {name} during start-up: the model was not served" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "interrupted" not in done.stderr, done.stderr
    assert done.stdout == ""  # no 'serving …' line


def test_serve_puts_back_the_signal_handlers_it_found(tmp_path):
    """Its early stop handling is the command's own: a program running it (a test's CliRunner) keeps its Ctrl-C."""
    from typer.testing import CliRunner

    from flowrl_deploy.cli import app

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing.onnx"), "--port", "0"])
    assert result.exit_code == 1, result.output
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_while_serve_waits_on_its_token_file_is_a_graceful_stop(tmp_path, name):
    """The early handling only noted the signal: a --token-file that blocks (a pipe no one writes to, a
    terminal) then swallowed SIGTERM and Ctrl-C, and only SIGKILL ended the server."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    program = SIGINT_AS_A_TERMINALS + "runpy.run_module('flowrl_deploy.cli', run_name='__main__')"
    process = subprocess.Popen(
        [sys.executable, "-c", program, "serve", str(tmp_path / "policy.onnx"), "--token-file", str(fifo)],
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None and time.monotonic() < deadline:  # until serve has the pipe open to read
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # kept open, unwritten: its read waits
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.05)
        if writer is None:
            process.kill()
            _, stderr = process.communicate(timeout=30)
            pytest.fail(f"flowrl serve never opened its --token-file (exit {process.returncode}): {stderr[-3000:]}")
        time.sleep(0.2)  # into its read
        process.send_signal(getattr(signal, name))
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        if writer is not None:
            os.close(writer)
    assert process.returncode == 0, stderr
    assert f"stopping on {name} during start-up: the model was not served" in stderr, stderr
    assert "Traceback" not in stderr, stderr
