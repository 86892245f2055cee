"""Reload on a case-insensitive file system (macOS APFS, Windows NTFS): a path to the served folder
spelt in another case names the same folder and is admitted, as the folder's own spelling, while
anything outside stays refused: another folder (on a case-sensitive system, 'Models' beside
'models'), a link inside leading out, '..'. Linux has no case-insensitive folder to test in, so
one is simulated below the test's directory: os.stat/os.lstat/os.readlink fold the case there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
import pytest

from flowrl_deploy.serve import reload as watch
from flowrl_deploy.serve.errors import ServeError


def _tree(root: Path) -> tuple[Path, Path]:
    """root/models/policy.onnx (served), root/models/sub/v2.onnx, root/outside/secret.onnx."""
    models, outside = root / "models", root / "outside"
    (models / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in (models / "policy.onnx", models / "sub" / "v2.onnx", outside / "secret.onnx"):
        path.write_bytes(b"onnx")
    return models / "policy.onnx", outside / "secret.onnx"


@pytest.fixture
def case_insensitive(tmp_path, monkeypatch):
    """Below tmp_path/fs, names are matched whatever their case, as on APFS (the tree is made in lower case)."""
    if sys.version_info < (3, 11):
        pytest.skip("pathlib binds os.stat when imported before Python 3.11: the simulation cannot fold its calls")
    root = tmp_path / "fs"
    root.mkdir()
    prefix = str(root) + os.sep

    def fold(path):
        if isinstance(path, (str, os.PathLike)):
            text = os.fsdecode(path)
            if text.startswith(prefix):
                return prefix + text[len(prefix) :].lower()
        return path

    for name in ("stat", "lstat", "readlink"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path, *args, _real=real, **kwargs: _real(fold(path), *args, **kwargs))
    return root


def _refused(model: Path, path: Path | str) -> ServeError:
    with pytest.raises(ServeError) as info:
        watch.reload_target(str(model), str(path))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    return info.value


def test_the_served_folder_in_another_case_is_the_served_folder(case_insensitive):
    served, _ = _tree(case_insensitive)
    models = served.parent
    for path in (case_insensitive / "MODELS" / "sub" / "V2.onnx", case_insensitive / "Models" / "policy.onnx"):
        target = watch.reload_target(str(served), str(path))
        assert target.parent.is_relative_to(models.resolve())  # the folder's own spelling, not the caller's
        assert os.path.samefile(target, path)


@pytest.mark.parametrize(
    "path",
    [
        "OUTSIDE/secret.onnx",  # another folder, in another case
        "Models/../outside/secret.onnx",
        "MODELS/escape.onnx",  # a link inside, leading out
        "models/escape.onnx",
    ],
)
def test_a_path_outside_stays_refused_whatever_its_case(case_insensitive, path):
    served, secret = _tree(case_insensitive)
    (served.parent / "escape.onnx").symlink_to(secret)
    error = _refused(served, case_insensitive / path)
    assert " is outside " in str(error)
    assert "secret" in path or "secret" not in str(error)  # where a link leads is for the log alone


def test_another_folder_differing_only_in_case_is_outside_on_a_case_sensitive_system(tmp_path):
    served, _ = _tree(tmp_path)
    (tmp_path / "Models").mkdir()
    (tmp_path / "Models" / "policy.onnx").write_bytes(b"onnx")
    _refused(served, tmp_path / "Models" / "policy.onnx")
    (tmp_path / "MODELS").symlink_to(tmp_path / "outside")  # a link spelt like the folder, leading out
    _refused(served, tmp_path / "MODELS" / "secret.onnx")
