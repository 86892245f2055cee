"""run_control's loop against a real tiny server and a recording stand-in simulator: which seeds
its episodes reset with, and which ticks count as overruns (on a fake clock)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_policy import ACT_DIM, OBS_DIM, write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.train import control
from flowrl_deploy.train.envs import EnvInfo, episode_seed
from flowrl_deploy.train.evaluate import EVAL_STREAM


class RecordingEnv:
    """Episodes of ``length`` steps; records each reset's seed, and runs ``on_step(step)`` in every step."""

    def __init__(self, length: int, on_step=lambda step: None, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> None:
        self.info = EnvInfo("fake:recorder", obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim))
        self.length, self.on_step = length, on_step
        self.seeds: list[int | None] = []
        self.steps = 0
        self.closed = False

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.seeds.append(seed)
        self.steps = 0
        return np.zeros(OBS_DIM, np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        self.on_step(self.steps)
        self.steps += 1
        return np.zeros(OBS_DIM, np.float32), 1.0, False, self.steps >= self.length

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("control") / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        yield running


def _run(server, env: RecordingEnv, monkeypatch, **kwargs) -> control.ControlReport:
    monkeypatch.setattr(control, "make_env", lambda env_id, seed=0: env)
    return control.run_control(server.address, env_id="fake:recorder", **kwargs)


def test_control_episodes_reset_with_the_seeds_of_flowrl_eval(server, monkeypatch):
    """So that `flowrl control --seed S` replays the episodes `flowrl eval --seed S` scores."""
    env = RecordingEnv(length=2)
    report = _run(server, env, monkeypatch, hz=1000, episodes=3, seed=5)
    assert env.seeds == [episode_seed(5, i, stream=EVAL_STREAM) for i in range(3)]
    assert report.returns == [2.0, 2.0, 2.0] and report.steps == 6


class FallingEnv(RecordingEnv):
    """Falls (terminates) at the second step of its first episode; later episodes run to ``length``."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        obs, reward, _, truncated = super().step(action)
        fell = len(self.seeds) == 1 and self.steps == 2
        return obs, reward, fell, truncated and not fell


def test_the_report_gives_each_episodes_length_and_whether_the_task_ended_it(server, monkeypatch):
    report = _run(server, FallingEnv(length=4), monkeypatch, hz=1000, episodes=2)
    assert (report.returns, report.lengths, report.terminated) == ([2.0, 4.0], [2, 4], [True, False])
    assert report.to_dict()["lengths"] == [2, 4] and report.to_dict()["terminated"] == [True, False]


def test_a_run_refused_by_a_server_at_its_session_limit_reports_why_it_fell_back(tmp_path, monkeypatch):
    """A second robot on `flowrl serve --max-sessions 1` ran on zeros every tick; the report said only
    'deadline misses'."""
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, max_sessions=1)
    with (
        PolicyServer(config).start() as full,
        PolicyClient(full.address) as client,
        client.session(period_s=0.02) as first,
    ):
        first.deadline_s = 10.0  # the tick that opens the stream: the session is open however loaded the machine
        first.act(np.zeros(OBS_DIM, np.float32))  # the server's one session
        assert first.timings[-1].source == "server"
        # at 0.5 Hz each tick's deadline (1 s) holds the refusal however loaded the machine (50 ms at 10 Hz
        # missed it), on a fake clock that does not wait out the periods
        clock = [0.0]

        def sleep(seconds: float) -> None:
            clock[0] += seconds

        monkeypatch.setattr(control, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=sleep))
        report = _run(full, RecordingEnv(length=5), monkeypatch, hz=0.5, episodes=1, fallback="zeros")
    assert (report.steps, report.fresh_replies, report.fallbacks) == (5, 0, {"RESOURCE_EXHAUSTED": 5})
    assert "ticks without a fresh action 5 (100.000%: RESOURCE_EXHAUSTED 5), overruns" in report.summary()
    assert report.fallback == report.to_dict()["fallback"] == "zeros"  # the run's own, not the default hold
    assert report.seeded_note().startswith("note: 5 ticks acted on the zeros fallback")


def test_a_tick_that_starts_more_than_one_period_late_is_an_overrun(server, monkeypatch):
    """At 10 Hz (ticks due at 0, 100, 200 ms) a first step that takes 250 ms starts tick 1 150 ms
    late (an overrun) and tick 2 50 ms late (not one)."""
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(control, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=sleep))
    env = RecordingEnv(length=3, on_step=lambda step: sleep(0.25 if step == 0 else 0.0))
    report = _run(server, env, monkeypatch, hz=10, episodes=1)
    assert report.steps == 3
    assert report.overruns == 1
    assert report.jitter_us == pytest.approx(float(np.std([0.0, 0.15, 0.05]) * 1e6))


def test_each_episode_starts_its_first_tick_at_once_and_then_keeps_the_period(server, monkeypatch):
    """On a fake clock where acting and stepping take no time, at 10 Hz: no wait before the first tick
    of either episode (the reset is the start of its schedule), one period before each later tick."""
    clock, sleeps = [0.0], []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(control, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=sleep))
    report = _run(server, RecordingEnv(length=3), monkeypatch, hz=10, episodes=2)
    assert report.steps == 6 and report.overruns == 0 and report.jitter_us == pytest.approx(0.0, abs=1e-3)
    assert sleeps == pytest.approx([0.1, 0.1] * 2)


MISFIT = "fake:recorder has obs/act dims {}/{}, the policy " + f"{OBS_DIM}/{ACT_DIM}"


@pytest.mark.parametrize(
    ("dims", "settings", "why"),
    [
        ((OBS_DIM + 1, ACT_DIM), {}, MISFIT.format(OBS_DIM + 1, ACT_DIM)),
        ((OBS_DIM, ACT_DIM + 1), {}, MISFIT.format(OBS_DIM, ACT_DIM + 1)),
        (
            (OBS_DIM, ACT_DIM),
            {"fallback": "local", "local_model": "missing.onnx"},
            "ONNX model not found: missing.onnx",
        ),
    ],
)
def test_a_run_refused_after_the_simulator_opened_closes_it(server, monkeypatch, dims, settings, why):
    """An environment that differs from the policy in either dim is refused (the policy would read or
    act on the wrong numbers); that refusal and a refused session left the simulator (a MuJoCo model) open."""
    env = RecordingEnv(length=2, obs_dim=dims[0], act_dim=dims[1])
    with pytest.raises(FlowRLError, match=re.escape(why)):
        _run(server, env, monkeypatch, hz=1000, **settings)
    assert env.closed and env.seeds == []


def test_a_finished_run_closes_the_simulator(server, monkeypatch):
    env = RecordingEnv(length=2)
    _run(server, env, monkeypatch, hz=1000)
    assert env.closed


def test_ctrl_c_propagates_unless_the_caller_stops_on_it(server, monkeypatch):
    """flowrl demo runs without stop_on_interrupt: Ctrl-C must reach it (it stops its server and says
    the run was interrupted), not end the run as if it had finished and have a partial run written up
    as its result; the simulator is closed either way."""
    from flowrl_deploy.session import ControlSession

    act, calls = ControlSession.act, []

    def ctrl_c_at_the_third_tick(self, obs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return act(self, obs)

    monkeypatch.setattr(ControlSession, "act", ctrl_c_at_the_third_tick)
    env = RecordingEnv(length=10)
    with pytest.raises(KeyboardInterrupt):
        _run(server, env, monkeypatch, hz=1000, stop_on_interrupt=False)
    assert env.closed and env.steps == 2
    calls.clear()
    report = _run(server, RecordingEnv(length=10), monkeypatch, hz=1000, stop_on_interrupt=True)
    assert report.interrupted and report.steps == 2 and report.returns == []


@pytest.mark.parametrize("hz", [0.0, -5.0, float("nan"), 0.05, 20_000.0])
def test_run_control_refuses_a_rate_out_of_range_in_one_set_of_words_before_connecting(hz):
    """``run_control(hz=0)`` said '--hz must be > 0' while ``flowrl control --hz 0`` named the range."""
    with pytest.raises(FlowRLError, match=r"^--hz \S+ is out of range: a control rate lies in \[0\.1, 10000\] Hz$"):
        control.run_control("127.0.0.1:1", "dmc:cartpole-swingup", hz=hz)
