"""A Reload that reaches the server while it still loads its own model at start-up is refused
(UNAVAILABLE): it was run as the first load, with no contract check, and the server's own load then
replaced it (same contract: the caller was told its file serves) or failed start-up (another contract)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import grpc
import pytest
from tiny_policy import write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import server as server_module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("other", [{"scale": 2.0}, {"control_period_s": 0.05}], ids=["same-contract", "other-contract"])
def test_a_reload_before_the_servers_own_model_is_refused(tmp_path, monkeypatch, other):
    served = write_policy(tmp_path / "served.onnx")
    new = write_policy(tmp_path / "new.onnx", **other)
    in_window, release = threading.Event(), threading.Event()
    check_task_limits = server_module.check_task_limits

    def held(config):  # runs once gRPC accepts calls, before start() loads the server's own model
        in_window.set()
        release.wait(30)
        return check_task_limits(config)

    monkeypatch.setattr(server_module, "check_task_limits", held)
    server = PolicyServer(ServeConfig(str(served), port=0, grace_s=0))
    failures: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            failures.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert in_window.wait(30)
        with PolicyClient(server.address, timeout_s=10) as client:
            with pytest.raises(ServiceError) as refused:
                client.reload(str(new))
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert "still loading" in refused.value.details and "retry when health reports SERVING" in (
                refused.value.details
            )
            release.set()
            starter.join(30)
            assert not failures
            assert server.servicer.model.sha256 == _sha256(served)
            assert client.stats().reloads == 0
            new_version, previous = client.reload(str(new)) if "scale" in other else (None, None)
            if new_version is not None:  # once serving, the same Reload is a reload
                assert previous != new_version and server.servicer.model.sha256 == _sha256(new)
    finally:
        release.set()
        starter.join(30)
        server.stop(grace=0)
