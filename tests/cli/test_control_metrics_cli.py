"""`flowrl control --metrics-textfile`: the loop's figures in a node_exporter *.prom file, there from
the session's start, rewritten while the loop runs and once at its end; a file that could not be
written is refused before connecting, in one line naming it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from closed_port import closed_address
from exposition_text import parse, value
from tiny_policy import ACT_DIM, OBS_DIM, write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()


class FileReadingEnv:
    """Episodes of ``length`` steps of zeros; each step reads ``path`` (what node_exporter would see)."""

    def __init__(self, length: int, path) -> None:
        from flowrl_deploy.train.envs import EnvInfo

        self.info = EnvInfo("fake:reader", OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM))
        self.length, self.path = length, path
        self.steps = 0
        self.seen: list[str] = []

    def reset(self, seed: int | None = None) -> np.ndarray:
        # The writer thread's first write is not waited for by the loop (a slow file system must never delay
        # a tick), so on a loaded machine it can come ticks late; this fake waits for it, so every tick reads.
        deadline = time.monotonic() + 10
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.steps = 0
        return np.zeros(OBS_DIM, np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        self.seen.append(self.path.read_text() if self.path.exists() else "")
        self.steps += 1
        return np.zeros(OBS_DIM, np.float32), 1.0, False, self.steps >= self.length

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("control") / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        yield running.address


def test_the_loops_figures_are_in_the_textfile_while_it_runs_and_at_its_end(server, tmp_path, monkeypatch):
    from flowrl_deploy.train import control

    path = tmp_path / "textfile" / "robot.prom"
    path.parent.mkdir()
    env = FileReadingEnv(length=60, path=path)
    monkeypatch.setattr(control, "make_env", lambda env_id, seed=0: env)
    args = ["control", "--server", server, "--env", "fake:reader", "--hz", "200", "--deadline-ms", "5"]
    result = runner.invoke(app, [*args, "--metrics-textfile", str(path), "--metrics-interval", "0.1"])
    assert result.exit_code == 0, result.output
    # the file is there from the session's start (the fake env waited for it), and every read while the
    # loop runs is a whole, valid file of the running loop
    seen = env.seen
    assert len(seen) == 60 and all(seen)
    running = [parse(text) for text in seen]
    assert all(value(families, "flowrl_control_running") == 1 for families in running)
    assert any(value(families, "flowrl_control_ticks_total") > 0 for families in running)  # rewritten during the run
    final = parse(path.read_text())
    assert value(final, "flowrl_control_running") == 0
    assert value(final, "flowrl_control_ticks_total") == 60
    fallbacks = sum(v for (name, _), v in final["flowrl_control_fallback_ticks_total"]["samples"].items())
    assert value(final, "flowrl_control_round_trip_seconds_count") + fallbacks == 60
    assert value(final, "flowrl_control_period_seconds") == 0.005
    assert sorted(p.name for p in path.parent.iterdir()) == ["robot.prom"]  # no temporary file left


def test_a_write_failure_mid_run_is_one_warning_and_the_run_goes_on(server, tmp_path, monkeypatch):
    import errno
    import os

    from flowrl_deploy import control_metrics
    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.train import control

    path = tmp_path / "robot.prom"
    env = FileReadingEnv(length=30, path=path)
    monkeypatch.setattr(control, "make_env", lambda env_id, seed=0: env)
    real = control_metrics.write_text_atomic
    calls = []

    def full_disk_after_the_first(target, text):
        calls.append(1)
        if len(calls) == 1:
            return real(target, text)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise FlowRLError(f"cannot write {target}: {exc.strerror}") from None

    monkeypatch.setattr(control_metrics, "write_text_atomic", full_disk_after_the_first)
    args = ["control", "--server", server, "--env", "fake:reader", "--hz", "200", "--deadline-ms", "5"]
    result = runner.invoke(app, [*args, "--metrics-textfile", str(path), "--metrics-interval", "0.1"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "control metrics file was not written" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "ENOSPC" in warnings[0], result.output
    assert len(calls) >= 2
    assert value(parse(path.read_text()), "flowrl_control_running") == 1  # the first write, kept whole


@pytest.mark.parametrize(
    ("given", "args", "message"),
    [
        ("robot.txt", [], "--metrics-textfile {tmp}/robot.txt must end in .prom: node_exporter's textfile"),
        ("afile/robot.prom", [], "cannot write --metrics-textfile {tmp}/afile/robot.prom: part of its folder"),
        ("dir.prom", [], "--metrics-textfile {tmp}/dir.prom is a directory"),
        ("fifo.prom", [], "--metrics-textfile {tmp}/fifo.prom exists and is not a regular file"),
        ("robot.prom", ["--metrics-interval", "0"], "--metrics-interval must lie in [0.1, 3600] s, got 0"),
        ("robot.prom", ["--metrics-interval", "3601"], "--metrics-interval must lie in [0.1, 3600] s, got 3601"),
        ("robot.prom", ["--json", "{tmp}/robot.prom"], "--metrics-textfile {tmp}/robot.prom is also the --json file"),
        ("robot.prom", ["--json", "{tmp}/sub/../robot.prom"], "--metrics-textfile {tmp}/robot.prom is also the --json"),
        ("", ["--metrics-interval", "5"], "--metrics-interval is used only with --metrics-textfile"),
        ("node.prom", [], "--metrics-textfile {tmp}/node.prom exists and is not a flowrl control metrics file"),
    ],
)
def test_a_textfile_that_cannot_be_written_is_refused_before_connecting(tmp_path, given, args, message):
    import os

    (tmp_path / "afile").write_text("keep")
    (tmp_path / "node.prom").write_text("# HELP node_raid_ok another collector's file\nnode_raid_ok 1\n")
    (tmp_path / "dir.prom").mkdir()
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo.prom")
    option = ["--metrics-textfile", str(tmp_path / given)] if given else []
    extra = [arg.format(tmp=tmp_path) for arg in args]
    result = runner.invoke(app, ["control", "--server", closed_address(), *option, *extra])
    assert result.exit_code == 1, result.output
    assert message.format(tmp=tmp_path) in result.output and "Traceback" not in result.output
    assert "not SERVING" not in result.output  # refused before connecting
    assert (tmp_path / "afile").read_text() == "keep"
    assert (tmp_path / "node.prom").read_text().startswith("# HELP node_raid_ok")


def test_an_existing_textfile_that_cannot_be_read_is_refused_and_kept(tmp_path, monkeypatch):
    """Nothing tells that an unreadable file is a control loop's: it may be another collector's."""
    from pathlib import Path

    path = tmp_path / "other.prom"
    path.write_text("# HELP node_raid_ok another collector's file\nnode_raid_ok 1\n")
    opened = Path.open

    def open_unreadable(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_unreadable)  # tests run as root, whom chmod 000 does not stop
    result = runner.invoke(app, ["control", "--server", closed_address(), "--metrics-textfile", str(path)])
    assert result.exit_code == 1, result.output
    assert f"--metrics-textfile {path} exists and is not a flowrl control metrics file" in result.output
    assert "not SERVING" not in result.output  # refused before connecting
    monkeypatch.undo()
    assert path.read_text().startswith("# HELP node_raid_ok")


def test_an_empty_existing_textfile_is_taken_and_filled(server, tmp_path, monkeypatch):
    """An empty *.prom (made by `touch`, or by a writer stopped before its first write) is free to use."""
    from flowrl_deploy.train import control

    path = tmp_path / "robot.prom"
    path.touch()
    env = FileReadingEnv(length=3, path=path)
    monkeypatch.setattr(control, "make_env", lambda env_id, seed=0: env)
    args = ["control", "--server", server, "--env", "fake:reader", "--hz", "50", "--metrics-textfile", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    final = parse(path.read_text())
    assert value(final, "flowrl_control_running") == 0
    assert value(final, "flowrl_control_ticks_total") == 3
