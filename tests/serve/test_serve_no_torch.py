"""A robot computer without torch: the client and the server import and serve."""

import subprocess
import sys
import textwrap
from pathlib import Path

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
    import flowrl_deploy.control, flowrl_deploy.cli.serve, flowrl_deploy.cli.query

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
