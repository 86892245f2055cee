"""PolicyClient's own arguments are checked where they are given, each mistake one FlowRLError
naming it: call deadlines, the server address (named as the caller calls it), the token and seeds. No server
is needed: every case is refused before a call goes out."""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
import warnings

import grpc
import numpy as np
import pytest
from doc_pages import python_block, section

from flowrl_deploy import client as client_module
from flowrl_deploy.client import (
    ClientClosedError,
    PolicyClient,
    PolicyInfo,
    checked_seed,
    checked_target,
    checked_timeout,
    checked_token,
)
from flowrl_deploy.contract import MAX_TIMEOUT_S
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.session import ControlSession

UNUSED = "127.0.0.1:1"  # nothing listens; a call that went out would fail UNAVAILABLE


@pytest.mark.parametrize(
    ("timeout_s", "shown"),
    [(0, "0"), (-1, "-1"), (math.nan, "nan"), (math.inf, "inf"), (1e10, "1e+10"), ("1", "'1'")],
)
def test_a_bad_timeout_is_refused_naming_it(timeout_s, shown):
    why = f"timeout_s must be a number of seconds in (0, 86400], got {shown}"
    with pytest.raises(FlowRLError, match=f"^{re.escape(why)}$"):
        PolicyClient(UNUSED, timeout_s=timeout_s)  # every call then failed with a bare DEADLINE_EXCEEDED
    with PolicyClient(UNUSED) as client, pytest.raises(FlowRLError, match="timeout_s must be a number of seconds"):
        client.act(np.zeros(3, np.float32), timeout_s=timeout_s)  # 0 silently meant the default 1 s
    with PolicyClient(UNUSED) as client, pytest.raises(FlowRLError, match="timeout_s must be a number of seconds"):
        client.wait_ready(timeout_s=timeout_s)


def test_no_timeout_means_no_deadline():
    with PolicyClient(UNUSED, timeout_s=None) as client:
        assert client.timeout_s is None


@pytest.mark.parametrize(("target", "why"), [(None, "not a string"), (5, "not a string"), ("localhost", "no port")])
def test_an_address_is_refused_under_the_name_it_was_given_as(target, why):
    with pytest.raises(FlowRLError, match=f"^target {target!r}: {why}; give host:port"):
        checked_target(target, "target")
    with pytest.raises(FlowRLError, match=f"^address {target!r}: {why};"):
        PolicyClient(target, target_name="address")
    with pytest.raises(FlowRLError, match=f"^target {target!r}: {why};"):  # no command-line flag by default
        PolicyClient(target)


@pytest.mark.parametrize(
    ("seed", "shown"), [(1.5, "1.5"), (1.0, r"1\.0"), ("1", "'1'"), (True, "True"), (np.float32(2), r"2\.0")]
)
def test_a_seed_that_is_not_an_integer_is_refused(seed, shown):
    with pytest.raises(FlowRLError, match=rf"^seed must be an integer in \[0, 2\*\*64\), got {shown}$"):
        checked_seed(seed)


def test_integer_seeds_in_range_pass():
    assert checked_seed(np.uint64(2**64 - 1)) == 2**64 - 1 and checked_seed(0) == 0 and checked_seed(None) is None
    with pytest.raises(FlowRLError, match=r"seed must lie in \[0, 2\*\*64\), got -1"):
        checked_seed(-1)


@pytest.mark.parametrize("obs", [["a", "b"], np.array([True, False]), np.array([1 + 2j])])
def test_an_observation_that_is_not_real_numbers_is_refused_as_obs(obs):
    with PolicyClient(UNUSED) as client, pytest.raises(FlowRLError, match=r"^obs: "):
        client.act(obs)  # named as the caller knows it, not as the codec's generic 'tensor'


UNSENDABLE_TOKENS = [
    ("tok123\r", "token ends with a newline (\\r or \\n): a token read from a file keeps it; strip it"),
    ("tok123\n", "token ends with a newline"),
    (" tok123", "token begins or ends with whitespace, which a header cannot carry; strip it"),
    ("tok123\t", "token begins or ends with whitespace"),
    ("tok\x00123", "token holds a control character at position 4: it travels in an HTTP/2 header"),
    ("pässwörd", "token holds a non-ASCII character at position 2: it travels in an HTTP/2 header"),
]


@pytest.mark.parametrize(("token", "why"), UNSENDABLE_TOKENS)
def test_a_token_no_header_can_carry_is_refused_without_echoing_it(token, why):
    """gRPC failed every call with INTERNAL: Invalid metadata (transient to a ControlSession) and logged its C core."""
    with pytest.raises(FlowRLError, match=f"^{re.escape(why)}") as info:
        PolicyClient(UNUSED, token=token)
    assert token.strip() not in str(info.value)
    as_flag = f"^--token {re.escape(why.removeprefix('token '))}"
    with pytest.raises(FlowRLError, match=as_flag):
        checked_token(token, "--token")  # as ServeConfig names it
    with pytest.raises(FlowRLError, match=as_flag):
        PolicyClient(UNUSED, token=token, target_name="--server")  # as the commands make it


def test_a_printable_ascii_token_is_sent_as_given():
    with PolicyClient(UNUSED, token="s3cr:et with/inner spaces~") as client:
        assert client.metadata == (("authorization", "Bearer s3cr:et with/inner spaces~"),)


@pytest.mark.parametrize("token", ["", None])
def test_no_token_sends_no_header(token):
    """None too: ``token=os.environ.get("FLOWRL_TOKEN")`` with the variable unset."""
    with PolicyClient(UNUSED, token=token) as client:
        assert client.metadata == ()


@pytest.mark.parametrize("token", [False, 0, b"s3cret"])
def test_a_token_that_is_no_string_is_refused(token):
    with pytest.raises(FlowRLError, match=f"^token must be a string, got {type(token).__name__}$"):
        PolicyClient(UNUSED, token=token)


def _robot_example() -> str:
    """The whole control loop, in docs/client.md."""
    return python_block("docs/client.md", "In the robot's control loop (Python, no torch needed)")


def _readme_loop() -> str:
    """The README's short control loop."""
    return python_block("README.md", "In the robot's control loop")


EXAMPLE_OBJECTS = {"client": PolicyClient, "session": ControlSession}
"""The examples' variables, by what they hold."""


def _callee(call: ast.Call):
    """What a call of the example runs, when it is the client's (else None)."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "PolicyClient":
        return PolicyClient
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in EXAMPLE_OBJECTS:
        return ControlSession if func.attr == "session" else getattr(EXAMPLE_OBJECTS[func.value.id], func.attr)
    return None


def _names_used(code: str, filename: str) -> tuple[ast.Module, set[str], set[str]]:
    """The example's syntax tree, the client's methods and fields it uses and the keywords it passes;
    fails on an import, method, argument or field that does not exist."""
    tree = ast.parse(compile(code, filename, "exec", ast.PyCF_ONLY_AST))
    used, keywords = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            assert all(hasattr(module, alias.name) for alias in node.names), node.module
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in EXAMPLE_OBJECTS:
            assert hasattr(EXAMPLE_OBJECTS[node.value.id], node.attr), f"{node.value.id}.{node.attr}"
            used.add(node.attr)
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "client.spec()":
            assert node.attr in PolicyInfo.__dataclass_fields__, f"client.spec().{node.attr}"
            used.add(node.attr)
        elif isinstance(node, ast.Call) and (callee := _callee(node)) is not None:
            given = {keyword.arg for keyword in node.keywords}
            assert given <= set(inspect.signature(callee).parameters), (ast.unparse(node.func), given)
            keywords |= given
    return tree, used, keywords


def test_the_control_loop_example_compiles_and_uses_only_names_the_client_has():
    """The example a robot engineer copies: every import, method, argument and field it uses exists,
    and it shows the whole loop: wait for the server, its period, a pinned contract, the watchdog."""
    code = _robot_example()
    tree, used, keywords = _names_used(code, "docs/client.md")
    assert {"wait_ready", "spec", "control_period_s", "session", "act"} <= used and "contract" in keywords
    handlers = [ast.unparse(n.type) for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)]
    assert "WatchdogError" in handlers and "gc.freeze()" in code


def test_the_readmes_short_control_loop_uses_only_names_the_client_has_and_points_to_the_whole_loop():
    _, used, _ = _names_used(_readme_loop(), "README.md")
    assert {"wait_ready", "spec", "control_period_s", "session", "act"} <= used
    assert "docs/client.md" in section("README.md", "In the robot's control loop").split("\n## ", 1)[0]


@pytest.mark.parametrize("name", sorted(client_module.MOVED_TO_SESSION))
def test_a_name_that_moved_to_the_session_module_still_imports_with_a_deprecation_warning(name):
    from flowrl_deploy import session

    with pytest.warns(DeprecationWarning, match=f"flowrl_deploy.client.{name} moved to flowrl_deploy.session"):
        moved = getattr(client_module, name)
    assert moved is getattr(session, name)


def test_a_timeout_of_exactly_the_maximum_is_taken():
    assert checked_timeout(MAX_TIMEOUT_S) == MAX_TIMEOUT_S


def test_a_non_printable_non_ascii_character_is_named_a_control_character():
    with pytest.raises(FlowRLError, match=r"^token holds a control character at position 4"):
        checked_token("tok\x85123")  # NEL, a C1 control character


def test_every_moved_name_is_listed():
    assert {"ControlSession", "WatchdogError", "CallTiming", "FALLBACKS", "TRANSIENT", "DEFAULT_MAX_TIMINGS",
            "DEFAULT_RESET_TIMEOUT_S"} == client_module.MOVED_TO_SESSION  # fmt: skip


def test_an_unknown_name_raises_without_a_deprecation_warning_and_names_the_client_module():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match=r"^module 'flowrl_deploy.client' has no attribute 'NoSuchName'$"):
            client_module.NoSuchName  # noqa: B018


def test_the_deprecation_warning_points_at_the_importing_line():
    with pytest.warns(DeprecationWarning) as record:
        client_module.WatchdogError  # noqa: B018
    assert record[0].filename == __file__


CLOSED = "the PolicyClient of 127.0.0.1:1 is closed (close() was called): make a new PolicyClient"

CALLS_ON_A_CLOSED_CLIENT = {
    "act": lambda client: client.act(np.zeros(3, np.float32)),
    "act_reply": lambda client: client.act_reply(np.zeros(3, np.float32)),
    "spec": lambda client: client.spec(),
    "reset": lambda client: client.reset("a", 1),
    "stats": lambda client: client.stats(),
    "reload": lambda client: client.reload(),
    "wait_ready": lambda client: client.wait_ready(timeout_s=1),  # made a health stub: a segmentation fault
    "session": lambda client: client.session(period_s=0.02),
}


@pytest.mark.parametrize("call", CALLS_ON_A_CLOSED_CLIENT.values(), ids=CALLS_ON_A_CLOSED_CLIENT)
def test_every_call_on_a_closed_client_is_refused_saying_so(call):
    """They raised gRPC's raw ValueError ('Cannot invoke RPC on closed channel!')."""
    client = PolicyClient(UNUSED)
    client.close()
    client.close()  # twice is fine
    assert client.closed
    with pytest.raises(ClientClosedError, match=f"^{re.escape(CLOSED)}$"):
        call(client)


KEEPALIVE = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.http2.ping_timeout_ms": 5_000,
}
"""A ping every 10 s, with calls in flight or none, and 5 s for its answer (flowrl serve takes pings every 5 s)."""


@pytest.mark.parametrize("tls", [False, True])
def test_the_channel_pings_the_server_so_a_vanished_server_is_noticed_without_a_call(monkeypatch, tls):
    """A server gone without a FIN (a cut cable, a power loss) was noticed only through call deadlines."""
    made, insecure_channel = [], grpc.insecure_channel

    def channel(target, *args):
        made.append(dict(args[-1]))
        return insecure_channel(target)

    monkeypatch.setattr(grpc, "secure_channel" if tls else "insecure_channel", channel)
    monkeypatch.setattr(client_module, "channel_credentials", lambda *args: None)
    with PolicyClient(UNUSED, tls_ca="ca.pem" if tls else ""):
        (options,) = made
    assert options.items() >= KEEPALIVE.items()


def _parameters(function, skip: int) -> list[tuple[str, object, object, object]]:
    return [
        (p.name, p.kind, p.default, p.annotation) for p in list(inspect.signature(function).parameters.values())[skip:]
    ]


def test_session_spells_out_the_control_sessions_parameters_for_an_ide():
    """``session(**kwargs)`` showed an IDE no parameter at all."""
    assert _parameters(PolicyClient.session, 1) == _parameters(ControlSession.__init__, 2)  # less self (and client)


def test_act_spells_out_the_parameters_of_act_reply():
    assert _parameters(PolicyClient.act, 1) == _parameters(PolicyClient.act_reply, 1)
    assert inspect.signature(PolicyClient.act).return_annotation == "npt.NDArray[np.float32]"
