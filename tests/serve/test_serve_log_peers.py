"""The log names who asked: a call refused for its token (the caller's address and the method, at
most once a minute with the count held back), a Reload swapped in or refused (the caller's address)
or a --watch one; a refused --watch reload names the version still served, and the summary of the
Reloads refused in a minute the latest reason held back. The peer is never a metrics label."""

from __future__ import annotations

import logging
import re
import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from deploying import deploy, wait_for
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import metrics as metrics_module
from flowrl_deploy.serve import reload as watch
from flowrl_deploy.serve.errors import ServeError
from flowrl_deploy.serve.servicer import PolicyServicer

OBS = np.zeros(OBS_DIM, np.float32)
PEER = r"ipv4:127\.0\.0\.1:\d+"


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flowrl.serve"]


def test_calls_refused_for_their_token_are_logged_with_caller_and_method_at_most_once_a_minute(
    policy_path, caplog, monkeypatch
):
    """A robot still sending the old token after a rotation was counted, never named."""
    config = ServeConfig(str(policy_path), port=0, token="s3cret", grace_s=0)
    with PolicyServer(config).start() as server, caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        with PolicyClient(server.address, token="old-t0ken") as client:
            for _ in range(3):
                with pytest.raises(ServiceError):
                    client.act(OBS)
        with PolicyClient(server.address, token="") as client, pytest.raises(ServiceError):
            client.spec()
        (first,) = _messages(caplog)
        assert re.fullmatch(
            rf"refused 1 call for its token \(UNAUTHENTICATED\): Act from {PEER} sent a wrong one", first
        )

        caplog.clear()
        monkeypatch.setattr(metrics_module, "LIMIT_WARNING_S", 0.0)  # a minute later: the next one is due
        with PolicyClient(server.address, token="") as client, pytest.raises(ServiceError):
            client.spec()
        refused = sum(n for (_, code), n in server.servicer.metrics.requests.items() if code == "UNAUTHENTICATED")
        exposition = server.servicer.metrics.exposition()
    (later,) = _messages(caplog)
    pattern = (
        rf"refused {refused - 1} calls for their token \(UNAUTHENTICATED\) in the last \d+ s: "
        rf"the latest, GetSpec from {PEER} sent none"
    )
    assert re.fullmatch(pattern, later), later
    assert "old-t0ken" not in first + later and "s3cret" not in first + later
    assert "127.0.0.1" not in exposition  # never a label: one series per caller's port


def test_token_refusals_are_warned_of_by_the_servers_own_limiter(policy_path):
    """TokenInterceptor built a whole Metrics of its own for its warnings' limiter."""
    config = ServeConfig(str(policy_path), port=0, token="s3cret", grace_s=0)
    with PolicyServer(config).start() as server:
        with PolicyClient(server.address, token="old-t0ken") as client, pytest.raises(ServiceError):
            client.act(OBS)
        assert server.servicer.metrics.warning_due("UNAUTHENTICATED") is None  # warned of just now


def test_a_reload_names_who_asked_for_it_a_reload_call_or_watch(served, caplog):
    _, client, tmp = served
    new = write_policy(tmp / "v2.onnx", scale=2.0)
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        client.reload(str(new))
        for _ in range(3):  # the same bytes: nothing to swap, said once a minute at most
            client.reload(str(new))
        with pytest.raises(ServiceError):
            client.reload("/etc/passwd")
        deploy(write_policy(tmp / "staged.onnx", scale=3.0), tmp / "policy.onnx")
        assert wait_for(lambda: any("by --watch" in m for m in _messages(caplog)))
    asked, same, refused, watched = _messages(caplog)
    assert re.fullmatch(rf"reloaded {re.escape(str(new))} by Reload from {PEER}: v1-\w+ -> v2-\w+ \(.+\)", asked)
    assert re.fullmatch(rf".+ holds the model served now \(v2-\w+\): nothing to reload \(by Reload from {PEER}\)", same)
    assert re.match(rf"Reload of '/etc/passwd' from {PEER} refused \(PERMISSION_DENIED\): reload refused: ", refused)
    assert re.fullmatch(rf"reloaded {re.escape(str(tmp / 'policy.onnx'))} by --watch: v2-\w+ -> v3-\w+ \(.+\)", watched)


def test_a_server_s_refused_watch_reload_names_the_version_it_still_serves(served, caplog):
    server, _, tmp = served
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        deploy(write_policy(tmp / "staged.onnx", control_period_s=0.01), tmp / "policy.onnx")
        assert wait_for(lambda: any("(--watch) refused" in m for m in _messages(caplog)))
    refusal = next(m for m in _messages(caplog) if "(--watch) refused" in m)
    assert f"refused, still serving {server.servicer.model.version}: " in refusal


def test_the_summary_of_reloads_refused_in_a_minute_names_the_latest_held_back(served, caplog, monkeypatch):
    """'(and 4 more Reloads refused …, not logged)' said how many, never why."""
    _, client, _ = served
    now = [1000.0]
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        for path, at in (("missing.onnx", 1000), ("/etc/passwd", 1020), ("gone.onnx", 1040), ("other.onnx", 1061)):
            now[0] = at
            with pytest.raises(ServiceError):
                client.reload(path)
    first, _, summary = _messages(caplog)  # gone.onnx held back: 40 s after missing.onnx, of the same status
    assert first.startswith("Reload of 'missing.onnx' from ") and "(and" not in first
    assert summary.startswith("Reload of 'other.onnx' from ")
    assert re.search(
        rf"\(and 1 more Reloads refused FAILED_PRECONDITION in the last 61 s, not logged; the latest, of "
        rf"'gone\.onnx' from {PEER}: reload refused, still serving v1-\w+: model not found: 'gone\.onnx' \(.+\)\)$",
        summary,
    ), summary


def test_a_refusal_held_back_as_another_ones_warning_falls_due_is_named_in_that_warning(
    policy_path, caplog, monkeypatch
):
    """Two handler threads: a refusal held back (not due) was stored after the warning that fell due
    meanwhile had taken the held ones: that warning ended 'the latest, ' with nothing after it, and the
    stale refusal was named a minute later, in the next one."""
    servicer = PolicyServicer(ServeConfig(str(policy_path), port=0))
    now = [1000.0]
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    storing, stored = threading.Event(), threading.Event()

    class HeldUntilReleased(dict):  # the held-back refusal's store, held between its check and its write
        def __setitem__(self, key, value):
            storing.set()
            assert stored.wait(30)
            super().__setitem__(key, value)

    refused = ServeError("reload refused", grpc.StatusCode.FAILED_PRECONDITION)
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        servicer._reload_refused("first.onnx", "peer-1", refused)  # logged: the first of its status
        servicer._refusals_held = HeldUntilReleased()
        now[0] = 1030.0  # held back: 30 s after the first
        held = threading.Thread(target=servicer._reload_refused, args=("held.onnx", "peer-2", refused))
        held.start()
        assert storing.wait(30)
        now[0] = 1061.0  # due: 61 s after the first
        due = threading.Thread(target=servicer._reload_refused, args=("due.onnx", "peer-3", refused))
        due.start()
        due.join(0.5)  # it finishes here unless it waits for the held-back refusal's store
        stored.set()
        held.join(30)
        due.join(30)
    servicer.close()
    first, summary = _messages(caplog)
    assert first.startswith("Reload of 'first.onnx' from peer-1") and "(and" not in first
    assert summary.startswith("Reload of 'due.onnx' from peer-3") and summary.endswith(
        "(and 1 more Reloads refused FAILED_PRECONDITION in the last 61 s, not logged; the latest, of "
        "'held.onnx' from peer-2: reload refused)"
    ), summary
    assert dict(servicer._refusals_held) == {}


def test_a_refused_watch_reload_names_the_version_still_served(tmp_path, caplog):
    path = tmp_path / "policy.onnx"
    path.write_bytes(b"first")

    def refuse() -> None:
        raise FlowRLError("not a policy")

    watcher = watch.FileWatcher(path, refuse, interval_s=0.01, serving=lambda: "v3-0123456789").start()
    try:
        with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
            path.write_bytes(b"second")
            assert wait_for(lambda: caplog.records)
    finally:
        watcher.stop(5)
    # once, or twice where the write was seen half done
    assert {r.getMessage() for r in caplog.records} == {
        f"reload of {path} (--watch) refused, still serving v3-0123456789: not a policy"
    }
