"""ControlSession against a real tiny server, where a robot's loop was let down (sdkreview, session 26):
a reset that hid a watchdog's misses, ticks queued behind a stalled server long after it recovered, a
rate clamp ramping from an initial action outside the bounds, a session id refused only at the first
tick, a broken model's actions applied as fresh, a late refusal of the pin read as slowness, and a reset
that returned as if done while another thread closed the session."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import pytest
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.client import ContractMismatchError, PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.session import BACKLOG, SessionClosedError, WatchdogError
from flowrl_deploy.session_stream import BACKLOG_TICKS, INVALID_ACTION

OBS = np.zeros(OBS_DIM, np.float32)


@pytest.fixture
def client(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server, PolicyClient(server.address) as c:
        yield c


def test_a_reset_does_not_clear_the_misses_the_watchdog_counts(tmp_path):
    """Reset goes by its own path: it succeeded while every tick was refused, so a loop resetting every two
    ticks ran on its fallback for good under max_consecutive_misses=3."""
    path = write_policy(tmp_path / "policy.onnx")
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0, workers=1)).start() as server,
        PolicyClient(server.address) as client,
        client.session(period_s=0.02) as holder,
    ):
        holder.act(OBS)  # holds the server's one StreamAct worker: the next session's stream is refused
        with client.session(period_s=0.02, seed=0, max_consecutive_misses=3) as control:
            with pytest.raises(WatchdogError, match="3 control ticks in a row without a fresh action"):
                for episode in range(10):
                    control.act(OBS)
                    control.act(OBS)
                    control.reset(episode)
            assert control.health.ticks == 3 and control.health.misses == 3


def test_a_stalled_server_is_not_sent_a_tick_a_tick_and_answers_at_once_when_it_recovers(tmp_path):
    """Every tick was sent while the server stalled, and it then worked through them all, each already late:
    0.3 s of misses at 200 Hz after a 2 s stall, none fresh for seconds at 1 kHz."""
    path = write_policy(tmp_path / "policy.onnx")
    stalled, runs = threading.Event(), []
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as client,
        client.session(period_s=0.005) as control,
    ):
        model = server.servicer.slot.current()
        run = model._session_run

        def stalling(obs, noise):
            runs.append(len(obs))
            stalled.wait(timeout=30)
            return run(obs, noise)

        control.deadline_s = 10.0  # the stream's first tick, on a loaded machine
        control.act(OBS)
        assert control.timings[-1].source == "server"
        model._session_run = stalling
        control.deadline_s = None  # half the period: 2.5 ms
        reasons, next_tick = [], time.perf_counter()
        for _ in range(40):  # 0.2 s at 200 Hz
            control.act(OBS)
            reasons.append(control.timings[-1].reason)
            next_tick = max(next_tick + control.period_s, time.perf_counter())  # no catching up in a burst
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        late = reasons.index(BACKLOG)  # sent until the first unanswered tick was BACKLOG_TICKS ticks old
        assert 1 <= late <= BACKLOG_TICKS + 1 and set(reasons[:late]) == {"deadline"}, reasons
        assert set(reasons[late:]) == {BACKLOG}, reasons
        assert len(runs) == 1  # the server is still in the first; the few sent after it wait on the stream
        stalled.set()
        time.sleep(0.05)  # the server answers the two queued ticks (late, dropped)
        control.deadline_s = 10.0
        control.act(OBS)
        assert control.timings[-1].source == "server"  # the first tick after: fresh, no backlog to wait behind
        assert control.health.fallbacks[BACKLOG] == 40 - late


@pytest.mark.parametrize("where", ["session", "reset"])
def test_an_initial_action_outside_the_bounds_is_refused(client, where):
    """The clamp ramped from [5, -7] (bounds ±1, ±2) through 'served' actions outside the bounds."""
    message = r"initial_action\[0\] = 5.0 lies outside the action bounds \[-1.0, 1.0\] \(2 of 2 do\)"
    if where == "session":
        with pytest.raises(FlowRLError, match=message):
            client.session(period_s=0.02, max_rate=1.0, initial_action=[5.0, -7.0])
        return
    at_the_bounds = [1.0, -2.0]  # taken
    with (
        client.session(period_s=0.02, max_rate=1.0, initial_action=at_the_bounds) as control,
        pytest.raises(FlowRLError, match=message),
    ):
        control.reset(1, initial_action=[5.0, -7.0])


@pytest.mark.parametrize(
    ("session_id", "message"),
    [
        ("x" * 300, "session_id of 300 characters: the server takes at most 256"),
        (12345, "session_id must be a string, got int 12345"),  # a ROS parameter read as an int
        ("robot-\udc80", "is not UTF-8 text: surrogates not allowed"),  # os.fsdecode of a stray byte
    ],
)
def test_a_session_id_the_server_would_refuse_is_refused_when_the_session_is_made(client, session_id, message):
    with pytest.raises(FlowRLError, match=message):
        client.session(period_s=0.02, session_id=session_id)


def test_actions_outside_the_bounds_or_not_finite_fall_back_and_count_as_misses(tmp_path):
    """A broken model (its tanh replaced by a log) gave NaN, raised as a bad *observation*'s TensorError,
    or actions beyond the bounds, applied as fresh and then held."""
    path = write_policy(tmp_path / "broken.onnx")
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "Tanh":
            node.op_type = "Log"  # NaN below 0, beyond ±1 above e
    onnx.save(model, str(path))
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as client,
        client.session(period_s=1.0, fallback="zeros", max_consecutive_misses=3) as control,
    ):
        for obs in ([1.0, 1.0, 1.0], [5.0, 5.0, 5.0]):
            action = control.act(np.array(obs, np.float32))
            assert control.timings[-1].reason == INVALID_ACTION
            np.testing.assert_array_equal(action, [0.0, 0.0])
        with pytest.raises(WatchdogError):
            control.act(np.ones(OBS_DIM, np.float32))


def test_a_late_refusal_of_the_pin_is_raised_not_taken_for_a_slow_server(tmp_path):
    """A server restarted with another contract refused every tick, each reply after its deadline: 'deadline'
    fallbacks for good, the refusal never seen."""
    first = write_policy(tmp_path / "first.onnx")
    with PolicyServer(ServeConfig(str(first), port=0, grace_s=0)).start() as server:
        address = server.address
        client = PolicyClient(address)
        control = client.session(period_s=0.02, deadline_s=0.02, backoff_s=(0.01, 0.05))
        control.act(OBS)
    other = write_policy(tmp_path / "other.onnx", action_low=(-3.0, -2.0))
    port = int(address.rsplit(":", 1)[1])
    try:
        with PolicyServer(ServeConfig(str(other), port=port, grace_s=0)).start():
            control.deadline_s = 1e-6  # every reply comes after its tick's deadline
            with pytest.raises(ContractMismatchError, match="the served policy contract changed"):
                for _ in range(300):
                    control.act(OBS)
                    time.sleep(0.005)
    finally:
        control.close()
        client.close()


def test_a_reset_while_another_thread_closes_the_session_says_it_was_closed(client):
    control = client.session(period_s=0.02, seed=0)
    control.act(OBS)
    reset = client.reset

    def slow_reset(*args, **kwargs):  # a slow link: the Reset takes 0.2 s
        time.sleep(0.2)
        return reset(*args, **kwargs)

    client.reset = slow_reset  # type: ignore[method-assign]
    closing = threading.Timer(0.05, control.close)
    closing.start()
    try:
        with pytest.raises(SessionClosedError, match=r"ControlSession\.reset after close"):
            control.reset(1)
        assert control.seed == 0  # left as it was
    finally:
        closing.join()
        control.close()


def test_no_session_id_makes_one_up(client):
    with client.session(period_s=0.02, session_id=None) as control:  # as v0.1.0 took it
        assert control.session_id.startswith("control-")


def test_an_initial_action_a_float32_rounding_past_a_bound_is_taken_clipped(tmp_path):
    """A saturated served action lands a few ulps past a bound (-0.30000004 for -0.3): passed on as the next
    session's initial_action it was refused as outside the bounds, though a tick takes it as fresh."""
    path = write_policy(tmp_path / "policy.onnx", scale=50.0, action_low=(-0.3, -2.0), action_high=(0.9, 2.0))
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as client,
    ):
        with client.session(period_s=1.0, fallback="zeros") as control:
            action = control.act(np.array([-1.0, -1.0, -1.0], np.float32))
            assert control.timings[-1].source == "server"
        past = action.copy()
        past[0] = np.nextafter(np.float32(-0.3), np.float32(-1))  # one ulp past, wherever the graph put it
        with client.session(period_s=1.0, max_rate=1.0, initial_action=past) as control:
            assert control.initial_action[0] == np.float32(-0.3)


def test_a_ctrl_c_just_after_a_reply_was_read_holds_back_no_later_tick(client, monkeypatch):
    """An interrupt between reading a reply and noting it left the tick noted as unanswered: after any pause of
    two ticks every later tick was 'backlog', for good (diff26 M1)."""
    from flowrl_deploy import session_stream

    with client.session(period_s=0.02, seed=0) as control:
        control.deadline_s = 5.0
        control.act(OBS)
        read = session_stream._next_reply

        def interrupted(stream, until):
            read(stream, until)  # the reply, taken off the stream
            monkeypatch.setattr(session_stream, "_next_reply", read)
            raise KeyboardInterrupt  # lands right after the reply was taken

        monkeypatch.setattr(session_stream, "_next_reply", interrupted)
        with pytest.raises(KeyboardInterrupt):
            control.act(OBS)
        time.sleep(0.1)  # a pause of five ticks
        control.act(OBS)
        assert control.timings[-1].source == "server"


def test_the_local_fallbacks_noise_stays_the_servers_after_ticks_not_sent(tmp_path, monkeypatch):
    """A late refusal of the opening request restarted the local noise one block per tick since it, sent or
    not: after 'backlog' ticks (never sent, never drawn for) every local-fallback action used another tick's
    noise (diff26 M2)."""
    import grpc

    from flowrl_deploy.serve.errors import ServeError

    path = str(write_policy(tmp_path / "policy.onnx"))
    server = PolicyServer(ServeConfig(path, port=0, grace_s=0)).start()
    servicer = server.servicer
    server_noise: dict[int, np.ndarray] = {}
    local_noise: dict[int, np.ndarray] = {}
    step_seq = threading.local()
    opened, step, call = servicer._open_for_stream, servicer._stream_step, servicer.batcher.call

    def refused_late(request, *args, **kwargs):  # stuck 40 ms, then refuses the opening before any draw
        if not server_noise and not hasattr(refused_late, "done"):
            refused_late.done = True
            time.sleep(0.04)
            raise ServeError("model loading", grpc.StatusCode.UNAVAILABLE)
        return opened(request, *args, **kwargs)

    def recording_step(request, *args):
        step_seq.seq = request.seq
        return step(request, *args)

    def recording_call(obs, noise, deadline):
        server_noise[step_seq.seq] = np.array(noise)
        return call(obs, noise, deadline)

    monkeypatch.setattr(servicer, "_open_for_stream", refused_late)
    monkeypatch.setattr(servicer, "_stream_step", recording_step)
    monkeypatch.setattr(servicer.batcher, "call", recording_call)
    with (
        server,
        PolicyClient(server.address) as client,
        client.session(period_s=0.005, seed=3, fallback="local", local_model=path) as control,
    ):
        draw = control._fallback_policy.draw

        def recording_draw():
            block = draw()
            local_noise[control._seq] = block
            return block

        control._fallback_policy.draw = recording_draw
        reasons, next_tick = [], time.perf_counter()
        for _ in range(30):
            control.act(OBS)
            reasons.append(control.timings[-1].reason)
            next_tick = max(next_tick + control.period_s, time.perf_counter())
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        time.sleep(0.1)
    assert BACKLOG in reasons, reasons
    after = len(reasons) - reasons[::-1].index(BACKLOG)  # the ticks after the last one not sent
    drawn = [s for s in sorted(server_noise) if s > after and s in local_noise]
    assert drawn, (reasons, sorted(server_noise))
    assert all(np.array_equal(local_noise[s], server_noise[s]) for s in drawn)
