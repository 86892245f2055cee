"""A `--tls-key` or `--token-file` that every user of the machine may read is warned of at start,
naming the file and its mode (not refused: a Kubernetes secret volume is 0644 unless its
defaultMode says otherwise). Only st_mode is read, so this holds when the tests run as root too."""

from __future__ import annotations

import logging
import os

import pytest

pytest.importorskip("cryptography.x509")
from pki import issue, write_pem
from tiny_policy import write_policy

from flowrl_deploy.tls import ServerTLSFiles

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o604, True), (0o640, False), (0o600, False)])
def test_a_tls_key_every_user_may_read_is_warned_of(tmp_path, caplog, mode, warned):
    cert, key = write_pem(tmp_path, "server", *issue("localhost"))
    os.chmod(key, mode)
    os.chmod(cert, 0o644)  # a certificate is public
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        ServerTLSFiles(cert, key)
    if warned:
        (warning,) = _warnings(caplog)
        assert f"--tls-key {key}" in warning and f"mode {mode:04o}" in warning and "chmod 600" in warning
    else:
        assert not _warnings(caplog)


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o600, False)])
def test_flowrl_serve_warns_of_a_token_file_every_user_may_read(tmp_path, monkeypatch, caplog, mode, warned):
    from typer.testing import CliRunner

    import flowrl_deploy.serve
    from flowrl_deploy.cli import app

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-xyz\n")
    os.chmod(token_file, mode)
    called = {}
    monkeypatch.setattr(flowrl_deploy.serve, "serve_forever", lambda config, **_: called.update(config=config))
    path = write_policy(tmp_path / "policy.onnx")
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        result = CliRunner().invoke(app, ["serve", str(path), "--token-file", str(token_file)], env={})
    assert result.exit_code == 0, result.output
    assert called["config"].token == "s3cret-token-xyz"
    warnings = _warnings(caplog)
    if warned:
        (warning,) = warnings
        assert f"--token-file {token_file}" in warning and "mode 0644" in warning and "s3cret" not in warning
    else:
        assert not warnings
