"""docs/client.md "In the robot's control loop": the example, run as a service is (`systemctl stop` sends
SIGTERM), stops the robot on its way out. Python's default for SIGTERM ends the process at once,
running no ``finally``, so the example's stop_robot() was skipped."""

from __future__ import annotations

import signal
import subprocess
import sys

from doc_pages import python_block
from tiny_policy import write_policy

from flowrl_deploy.serve import PolicyServer, ServeConfig

ROBOT = """\
import time

ticks = 0


def running():
    return True


def read_sensors():
    global ticks
    ticks += 1
    if ticks == 5:
        print("ticking", flush=True)
    return [0.1, 0.2, 0.3]


def apply(action):
    pass


def sleep_until_next_tick():
    time.sleep(0.01)


def stop_robot():
    print("robot stopped", flush=True)
"""
"""The robot's functions the example calls: a loop that runs until stopped."""
SLOW_PERIOD_S = 0.5
"""The served policy's period, which the examples take: its deadline (0.25 s) a loaded machine meets, where
the tiny policy's 20 ms (a 10 ms deadline) could make 5 misses in a row, and the watchdog end the loop
before the test's signal or stop."""


def _example() -> str:
    return python_block("docs/client.md", "In the robot's control loop (Python, no torch needed)")


def test_sigterm_ends_the_readme_control_loop_through_stop_robot_with_exit_0(tmp_path):
    policy = str(write_policy(tmp_path / "policy.onnx", control_period_s=SLOW_PERIOD_S))
    with PolicyServer(ServeConfig(policy, port=0, grace_s=0)).start() as server:
        code = ROBOT + _example().replace("robot-brain:50051", server.address).replace("policy.onnx", policy)
        with subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as controller:
            try:
                assert controller.stdout.readline() == "ticking\n", controller.stderr.read()
                controller.send_signal(signal.SIGTERM)
                out, err = controller.communicate(timeout=30)
            finally:
                controller.kill()
    assert controller.returncode == 0, err
    assert out == "robot stopped\n", out + err


def _readme_loop() -> str:
    return python_block("README.md", "In the robot's control loop")


def test_the_readmes_short_loop_stops_the_robot_when_the_server_is_gone(tmp_path):
    """The snippet a newcomer copies set no watchdog: with the server stopped it held the last action
    for good (297 ticks in a row, one log line). Its watchdog raises after a few ticks, through stop_robot()."""
    policy = str(write_policy(tmp_path / "policy.onnx", control_period_s=SLOW_PERIOD_S))
    server = PolicyServer(ServeConfig(policy, port=0, grace_s=0)).start()
    try:
        code = ROBOT + _readme_loop().replace("localhost:50051", server.address)
        with subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as controller:
            try:
                assert controller.stdout.readline() == "ticking\n", controller.stderr.read()
                server.stop(grace=0)
                out, err = controller.communicate(timeout=30)
            finally:
                controller.kill()
    finally:
        server.stop(grace=0)
    assert out == "robot stopped\n", out + err
    assert controller.returncode == 1, err
    assert err.rstrip().splitlines()[-1] == (
        "flowrl_deploy.session.WatchdogError: 5 control ticks in a row without a fresh action"
    ), err
