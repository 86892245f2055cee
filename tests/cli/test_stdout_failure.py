"""A standard output that cannot be written (a full disk, `> /dev/full`; a reader gone, `| head -1`,
`| true`) is one line on stderr and exit 1, or for a closed pipe a quiet exit 1 as Unix tools do: every
command ended in a 40-line traceback. `flowrl export` says its file was written (and still writes its
--json report), and `flowrl query` against a real server fails the same way."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_policy import write_policy

from flowrl_deploy.cli._common import user_errors

FULL_DISK = "error: cannot write to standard output: No space left on device"

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")


def _closed_pipe() -> int:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is printed
    return write


def flowrl(cwd: Path, stdout: int, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, "-m", "flowrl_deploy.cli", *args],
            cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, timeout=300,
        )  # fmt: skip
    finally:
        os.close(stdout)


def full_disk() -> int:
    return os.open("/dev/full", os.O_WRONLY)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return write_policy(tmp_path_factory.mktemp("p") / "p.onnx")


COMMANDS = {
    "help": lambda policy: ["--help"],
    "version": lambda policy: ["--version"],
    "inspect": lambda policy: ["inspect", str(policy)],
    "inspect-json": lambda policy: ["inspect", str(policy), "--json"],
}


@needs_dev_full
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_full_stdout_is_one_line_and_exit_1(tmp_path, policy, command):
    result = flowrl(tmp_path, full_disk(), *command(policy))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [FULL_DISK], result.stderr.decode()[-3000:]


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_closed_pipe_is_a_quiet_exit_1(tmp_path, policy, command):
    result = flowrl(tmp_path, _closed_pipe(), *command(policy))
    assert result.returncode == 1
    assert result.stderr == b"", result.stderr.decode()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(tmp_path_factory.mktemp("served") / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        yield running.address


@needs_dev_full
@pytest.mark.parametrize("command", ["query", "stats", "wait"])
def test_a_full_stdout_after_a_call_is_one_line(tmp_path, server, command):
    args = ["--obs", "[0.1, 0.2, 0.3]"] if command == "query" else []
    result = flowrl(tmp_path, full_disk(), command, "--server", server, *args)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [FULL_DISK], result.stderr.decode()[-3000:]


def test_a_watchdog_stop_after_stdout_failed_is_still_said_with_its_exit_status(tmp_path):
    """How the run ended is the line that matters (a robot stopped by its watchdog): a stdout that failed
    during the run (its reader gone after the first line) is a note on that line, not the only one."""
    pytest.importorskip("dm_control")
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    cartpole = {"obs_dim": 5, "act_dim": 1, "action_low": (-1.0,), "action_high": (1.0,), "action_names": ("slider",)}
    path = write_policy(tmp_path / "cartpole.onnx", obs_layout=(("position", 3), ("velocity", 2)), **cartpole,
                        env_id="dmc:cartpole-swingup")  # fmt: skip
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        args = ["--server", running.address, "--max-steps", "50", "--deadline-ms", "0.001", "--max-misses", "5"]
        stderr, returncode = _control_whose_reader_leaves(tmp_path, args)
    assert returncode == 1
    last = stderr.splitlines()[-1]
    assert last.startswith("error: the watchdog stopped the run: 5 control ticks in a row"), stderr[-3000:]
    assert last.endswith("(the summary was not printed: Broken pipe)"), last


def _control_whose_reader_leaves(cwd: Path, args: list[str]) -> tuple[str, int]:
    """`flowrl control ARGS` whose stdout's reader reads the first line, then goes."""
    child = subprocess.Popen(
        [sys.executable, "-m", "flowrl_deploy.cli", "control", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout.readline().startswith(b"control at ")
    child.stdout.close()  # the reader is gone: the summary meets a broken pipe
    _, stderr = child.communicate(timeout=300)
    return stderr.decode(), child.returncode


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from export_fixtures import saved_checkpoint  # torch: after the skips

    return saved_checkpoint(tmp_path_factory.mktemp("ck"))


@needs_dev_full
def test_export_on_a_full_stdout_says_its_file_was_written_and_writes_its_report(tmp_path, checkpoint):
    """A script that read exit 1 and a traceback took the export for failed, though its file was whole."""
    out, report = tmp_path / "p.onnx", tmp_path / "rep.json"
    result = flowrl(
        tmp_path, full_disk(), "export", str(checkpoint), "-o", str(out), "--no-verify", "--json", str(report)
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr.decode()[-3000:]
    assert lines[0] == (
        f"error: wrote {out} and the --json report {report}, but cannot write the summary to standard output: "
        "No space left on device"
    )
    assert out.is_file() and json.loads(report.read_text())[0]["path"] == str(out)


def test_export_on_a_closed_pipe_exits_quietly_with_its_files_written(tmp_path, checkpoint):
    out, report = tmp_path / "p.onnx", tmp_path / "rep.json"
    result = flowrl(
        tmp_path, _closed_pipe(), "export", str(checkpoint), "-o", str(out), "--no-verify", "--json", str(report)
    )
    assert result.returncode == 1 and result.stderr == b"", result.stderr.decode()[-3000:]
    assert out.is_file() and json.loads(report.read_text())[0]["path"] == str(out)


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied", "/etc/flowrl/out.json"),
        OSError(errno.ENOSPC, "No space left on device", "/data/run/model.onnx"),
    ],
    ids=["permission", "full-disk"],
)
def test_a_failure_to_write_a_file_is_not_called_a_stdout_failure(error):
    """Only an error from writing standard output becomes 'cannot write to standard output'; a file's
    keeps its own message (and traceback), which names the file."""

    @user_errors
    def command() -> None:
        raise error

    with pytest.raises(type(error)) as raised:
        command()
    assert raised.value is error


@needs_dev_full
def test_export_json_dash_on_a_full_stdout_names_the_report_it_could_not_print(tmp_path, checkpoint):
    out = tmp_path / "p.onnx"
    result = flowrl(tmp_path, full_disk(), "export", str(checkpoint), "-o", str(out), "--no-verify", "--json", "-")
    last = result.stderr.decode().splitlines()[-1]
    assert result.returncode == 1
    assert last == f"error: wrote {out}, but cannot write the --json report to standard output: No space left on device"


@needs_dev_full
@pytest.mark.parametrize("no_color", ["", "1"])
def test_no_color_holds_for_the_line_of_a_failed_stdout(tmp_path, policy, no_color):
    """The line is printed after the command's click context is gone, so NO_COLOR was not seen there."""
    import pty

    leader, terminal = pty.openpty()  # stderr on a terminal: colour unless NO_COLOR
    try:
        result = subprocess.run(
            [sys.executable, "-m", "flowrl_deploy.cli", "inspect", str(policy)],
            cwd=tmp_path, stdout=full_disk(), stderr=terminal, timeout=300,
            env={**os.environ, "NO_COLOR": no_color, "TERM": "xterm"},
        )  # fmt: skip
        os.close(terminal)
        written = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed and all is read
            while chunk := os.read(leader, 4096):
                written += chunk
    finally:
        os.close(leader)
    assert result.returncode == 1 and b"cannot write to standard output: No space left on device" in written
    assert (b"\x1b[" in written) == (not no_color)


def _pendulum(tmp_path: Path) -> Path:
    """A tiny policy of gymnasium's Pendulum (a task `flowrl eval` runs without dm_control)."""
    pytest.importorskip("gymnasium")
    return write_policy(
        tmp_path / "pendulum.onnx", obs_dim=3, act_dim=1, action_low=(-2.0,), action_high=(2.0,),
        obs_layout=(), action_names=(), env_id="gym:Pendulum-v1",
    )  # fmt: skip


@needs_dev_full
def test_eval_on_a_full_stdout_still_writes_its_json_report_and_says_so(tmp_path):
    policy = _pendulum(tmp_path)
    report = tmp_path / "eval.json"
    result = flowrl(tmp_path, full_disk(), "eval", str(policy), "--episodes", "1", "--json", str(report))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        f"error: evaluated 1 episode and wrote the --json report {report}, but cannot write the summary to "
        "standard output: No space left on device"
    )
    assert len(json.loads(report.read_text())["returns"]) == 1


@needs_dev_full
def test_eval_json_dash_on_a_full_stdout_names_the_report_it_could_not_print(tmp_path):
    """As export's and control's: a report that stdout could not take is said, after what was done."""
    policy = _pendulum(tmp_path)
    result = flowrl(tmp_path, full_disk(), "eval", str(policy), "--episodes", "1", "--json", "-")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        "error: evaluated 1 episode, but cannot write the --json report to standard output: No space left on device"
    )


CLOSING = {0: "<&-", 1: ">&-", 2: "2>&-"}


def _closed(fds: tuple[int, ...], *command: str) -> list[str]:
    """``command`` started by a shell with the descriptors ``fds`` closed (``>&-``, ``2>&-``, ``<&-``). Not a
    preexec_fn: it runs between fork and exec, where gRPC's fork handlers (gRPC is loaded by this module's
    server) broke the child's start."""
    return ["sh", "-c", f'exec "$@" {" ".join(CLOSING[fd] for fd in fds)}', "sh", *command]


def _with_closed(fds: tuple[int, ...], cwd: Path, *args: str, runner: str = "flowrl_deploy.cli"):
    """``flowrl ARGS`` started with the descriptors ``fds`` closed."""
    command = _closed(fds, sys.executable, "-m", runner, *args)
    return subprocess.run(command, cwd=cwd, capture_output=True, timeout=300)


@pytest.mark.parametrize("runner", ["flowrl_deploy.cli", "flowrl_deploy"])
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_closed_stdout_is_one_line_and_exit_1(tmp_path, policy, command, runner):
    """`flowrl inspect p.onnx >&-` printed nothing and exited 0: Python drops what it prints to a closed
    stdout, so a script took the missing output for a success. Now it fails as `echo hi >&-` does."""
    result = _with_closed((1,), tmp_path, *command(policy), runner=runner)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["error: cannot write to standard output: Bad file descriptor"]


def test_query_on_a_closed_stdout_fails_after_its_call(tmp_path, server):
    result = _with_closed((1,), tmp_path, "query", "--server", server, "--obs", "[0.1, 0.2, 0.3]")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["error: cannot write to standard output: Bad file descriptor"]


def test_a_closed_stderr_and_stdin_leave_the_output_whole(tmp_path, policy):
    closed = _with_closed((0, 2), tmp_path, "inspect", str(policy), "--json")
    whole = _with_closed((), tmp_path, "inspect", str(policy), "--json")
    assert closed.returncode == whole.returncode == 0
    assert closed.stdout == whole.stdout and json.loads(closed.stdout)["contract"]["obs_dim"] == 3


def test_a_closed_descriptor_is_held_by_the_null_device_not_by_the_next_file(tmp_path):
    """With 2 closed the next file opened is descriptor 2, where C libraries write their warnings."""
    script = (
        "import os, sys\n"
        "from flowrl_deploy._main import reserve_standard_streams\n"
        "reserve_standard_streams()\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
        "os.write(2, b'a warning')\n"
        "os.write(fd, b'the file')\n"
        "print(fd, file=sys.stdout, flush=True)\n"
    )
    target = tmp_path / "checkpoint.bin"
    result = subprocess.run(_closed((2,), sys.executable, "-c", script, str(target)), capture_output=True, timeout=60)
    assert result.returncode == 0 and int(result.stdout) > 2
    assert target.read_bytes() == b"the file"


def test_serve_on_a_closed_stdout_warns_and_serves(tmp_path, policy):
    """A server started with stdout closed serves: its 'serving …' line is the one thing lost, and said."""
    command = _closed((1,), sys.executable, "-m", "flowrl_deploy.cli", "serve", str(policy), "--port", "0")
    child = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        lines = []
        while not any("serving on" in line for line in lines):
            line = child.stderr.readline().decode()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        child.terminate()
        child.communicate(timeout=60)
    assert "cannot write the 'serving …' line to standard output (Bad file descriptor)" in lines[-1]
    assert child.returncode == 0
