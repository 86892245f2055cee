"""ServerProcess's child runs the flowrl-deploy this process imported, not a copy in the working
directory: `python -m` puts the current directory first on sys.path, so `flowrl demo` started inside
another checkout (an old clone, a worktree of another branch) served that checkout's code."""

from __future__ import annotations

import subprocess

from flowrl_deploy import versions
from flowrl_deploy.serve import process


def test_the_child_server_does_not_import_flowrl_deploy_from_the_working_directory(tmp_path):
    shadow = tmp_path / "flowrl_deploy"
    (shadow / "cli").mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('the shadow copy in the working directory')\n")
    (shadow / "cli" / "__init__.py").write_text("")
    (shadow / "cli" / "__main__.py").write_text("")
    done = subprocess.run(
        [*process.FLOWRL, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert "shadow" not in done.stderr
    assert done.returncode == 0 and versions.release() in done.stdout
