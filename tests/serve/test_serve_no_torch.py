"""A robot computer without torch: the client and the server import and serve; the client's local
fallback runs without the server package."""

import subprocess
import sys
import textwrap
from pathlib import Path

from fake_checkpoints import save_step

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    from flowrl_deploy.client import PolicyClient
    from flowrl_deploy.serve import PolicyServer, ServeConfig
    import flowrl_deploy.cli.serve, flowrl_deploy.cli.query

    with PolicyServer(ServeConfig(sys.argv[1], port=0, grace_s=0)).start() as server:
        with PolicyClient(server.address) as client:
            print(client.act(np.zeros(3, np.float32), seed=0).shape)
    assert "torch" not in sys.modules
    """
)


def test_client_and_server_work_without_torch(policy_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(policy_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(2,)")


LOCAL_FALLBACK = textwrap.dedent(
    """
    import sys
    import numpy as np
    from flowrl_deploy.client import PolicyClient

    with PolicyClient(sys.argv[1]) as client, client.session(
        period_s=0.5, deadline_s=1e-7, seed=5, fallback="local", local_model=sys.argv[2]
    ) as control:
        control.act(np.zeros(3, np.float32))
        print(control.timings[-1].source)
    print(sorted(m for m in sys.modules if m == "flowrl_deploy.serve" or m.startswith("flowrl_deploy.serve.")))
    """
)


def test_the_local_fallback_does_not_load_the_server_package(server, policy_path: Path):
    """A robot running the served policy locally when a reply is late needs onnxruntime and the
    noise draw, not the server (grpc_health, reflection, http.server, the batcher)."""
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_FALLBACK, server.address, str(policy_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["local", "[]"]


CHECKPOINT_WITHOUT_EXPORTER = textwrap.dedent(
    """
    import sys
    import flowrl_deploy.serve.model, flowrl_deploy.serve.server, flowrl_deploy.serve.servicer
    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    try:
        PolicyServer(ServeConfig(sys.argv[1], port=0, grace_s=0)).start()
    except FlowRLError as exc:
        print(exc)
    print(sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith("flowrl_deploy.export")))
    """
)


def test_serve_never_imports_the_exporter_a_checkpoint_needs_one_given(tmp_path):
    """Serve imported flowrl_deploy.export (and torch) to export a served checkpoint; now whoever
    builds the server passes the exporter (`flowrl serve` does), and without one it is refused."""
    save_step(tmp_path / "run", 1)
    result = subprocess.run(
        [sys.executable, "-c", CHECKPOINT_WITHOUT_EXPORTER, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    refusal, imported = result.stdout.strip().splitlines()
    assert "this server was built without an exporter" in refusal
    assert refusal.endswith("serve the .onnx file that `flowrl export` writes")
    assert imported == "[]"
