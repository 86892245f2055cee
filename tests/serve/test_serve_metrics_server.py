"""The metrics of a running server: what identifies its model and build across a fleet."""

from __future__ import annotations

import platform
import re
import time
import urllib.request

from tiny_policy import write_policy

from flowrl_deploy.runtime import import_onnxruntime
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.versions import release


def _series(text: str, name: str) -> list[tuple[dict[str, str], str]]:
    """Each sample of ``name`` in an exposition: its labels and its value."""
    found = []
    for match in re.finditer(rf"^{name}(?:\{{(.*)\}})? (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[1] or ""))
        found.append((labels, match[2]))
    return found


def _scrape(server: PolicyServer) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=30) as reply:
        return reply.read().decode()


def test_build_info_names_the_release_onnxruntime_and_python():
    """The release was in GetStats only: a fleet's servers could not be told apart by build (obs M7)."""
    text = Metrics(lambda: 0, lambda: "v1-test").exposition()
    assert "# TYPE flowrl_build_info gauge" in text
    assert _series(text, "flowrl_build_info") == [
        (
            {
                "version": release(),
                "onnxruntime": import_onnxruntime().__version__,
                "python": platform.python_version(),
            },
            "1",
        )
    ]


def test_model_info_names_the_same_bytes_alike_on_every_server(tmp_path):
    """`version` is v<this server's generation>-<sha prefix>: the same bytes read v2-… on a server that
    reloaded once and v1-… on a fresh one, and a fleet skew alert fired for identical models. The
    sha256 prefix, contract hash, flow steps and providers are the same wherever the bytes are served
    (obs M7); `version` stays, for compatibility."""
    first, second = write_policy(tmp_path / "first.onnx"), write_policy(tmp_path / "second.onnx", scale=2.0)
    served = tmp_path / "policy.onnx"
    served.write_bytes(first.read_bytes())
    reloaded = PolicyServer(ServeConfig(str(served), port=0, metrics_port=0, grace_s=0))
    with reloaded.start():
        before = _series(_scrape(reloaded), "flowrl_model_info")
        (loaded_at,) = _series(_scrape(reloaded), "flowrl_model_loaded_timestamp_seconds")
        assert time.time() - 60 < float(loaded_at[1]) <= time.time()
        served.write_bytes(second.read_bytes())
        started = time.time()
        reloaded.servicer.load()
        reloaded_text = _scrape(reloaded)
    (reloaded_at,) = _series(reloaded_text, "flowrl_model_loaded_timestamp_seconds")
    assert started <= float(reloaded_at[1]) <= time.time()
    fresh = PolicyServer(ServeConfig(str(second), port=0, metrics_port=0, grace_s=0))
    with fresh.start():
        (fresh_info,) = _series(_scrape(fresh), "flowrl_model_info")
        model = fresh.servicer.model
    (info,) = _series(reloaded_text, "flowrl_model_info")
    assert info[0]["version"].startswith("v2-") and fresh_info[0]["version"].startswith("v1-")
    same = {key: value for key, value in info[0].items() if key != "version"}
    assert same == {key: value for key, value in fresh_info[0].items() if key != "version"}
    assert same == {
        "sha256": model.sha256[:12],
        "contract_hash": model.contract.hash(),
        "flow_steps": str(model.contract.flow_steps),
        "providers": ",".join(model.policy.session.get_providers()),
    }
    assert before[0][0]["sha256"] != same["sha256"]
