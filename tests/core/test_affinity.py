"""--cpus: parsing core lists and pinning a process (Linux)."""

import os
import subprocess
import sys

import pytest

from flowrl_deploy.affinity import parse_cpus, pin_to_cpus
from flowrl_deploy.errors import FlowRLError


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)


@pytest.mark.parametrize(
    ("text", "cpus"), [("1", (1,)), ("3,2", (2, 3)), ("0-2,5", (0, 1, 2, 5)), (" 4 ", (4,)), ("", ())]
)
def test_core_lists_parse(eight_cores, text, cpus):
    assert parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "1,,2", "1.5"])
def test_malformed_core_lists_are_clear_errors(text):
    with pytest.raises(FlowRLError, match="--cpus"):
        parse_cpus(text)


@pytest.mark.parametrize(
    ("text", "missing"), [("8", "no core 8 "), ("0-999999999", "no core 8-999999999 "), ("9-12", "no core 9-12 ")]
)
def test_a_core_list_beyond_the_machine_is_refused_before_it_is_expanded(eight_cores, text, missing):
    """'0-999999999' built a set of a billion ints (MemoryError, or all the RAM) before the cores were checked."""
    with pytest.raises(FlowRLError, match="--cpus") as info:
        parse_cpus(text)
    assert missing in str(info.value) and "(its cores are 0-7)" in str(info.value)


needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")


@needs_affinity
def test_a_core_the_machine_lacks_is_refused_with_the_ones_it_has():
    missing = os.cpu_count() + 1000
    with pytest.raises(FlowRLError, match=f"no core {missing} on this machine") as info:
        pin_to_cpus((0, missing))
    assert f"0-{os.cpu_count() - 1}" in str(info.value)
    assert os.sched_getaffinity(0) != {0} or os.cpu_count() == 1  # nothing was pinned


@needs_affinity
def test_a_pinned_process_can_still_pin_a_child_elsewhere():
    """A child inherits its parent's mask; pinning it to another core of the machine must work."""
    if os.cpu_count() < 2:
        pytest.skip("needs two cores")
    script = (  # the child starts on core 0 alone (set in the child: a preexec_fn runs between fork and exec)
        "import os; os.sched_setaffinity(0, {0}); from flowrl_deploy.affinity import pin_to_cpus; "
        "pin_to_cpus((1,)); print(os.sched_getaffinity(0))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{1}"


def test_pinning_covers_the_threads_running_before_and_started_after():
    core = min(os.sched_getaffinity(0))
    script = (
        "import os, threading\n"
        "from flowrl_deploy.affinity import pin_to_cpus\n"
        "seen, go = [], threading.Event()\n"
        "early = threading.Thread(target=lambda: (go.wait(), seen.append(os.sched_getaffinity(0)))); early.start()\n"
        f"pin_to_cpus(({core},))\n"
        "go.set(); early.join()\n"
        "late = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0))); late.start(); late.join()\n"
        "print(sorted(os.sched_getaffinity(0)), [sorted(s) for s in seen])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"[{core}] [[{core}], [{core}]]"
