"""Provenance: which libraries' versions a checkpoint or an export records."""

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from flowrl_deploy import versions


def test_the_env_libraries_are_recorded_when_installed_and_left_out_when_not(monkeypatch):
    """A HumanoidBench run recorded neither gymnasium's nor HumanoidBench's version."""

    def version(name: str) -> str:
        if name == "onnxruntime-gpu":
            raise metadata.PackageNotFoundError(name)
        return f"{name}-1.0"

    monkeypatch.setattr(versions.metadata, "version", version)
    found = versions.library_versions()
    assert found["gymnasium"] == "gymnasium-1.0" and found["humanoid_bench"] == "humanoid_bench-1.0"
    assert "onnxruntime-gpu" not in found


def test_the_versions_recorded_are_the_installed_ones():
    found = versions.library_versions()
    for name in ("gymnasium", "humanoid_bench", "mujoco"):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            assert name not in found
        else:
            assert found[name] == installed


def test_the_release_is_the_package_version_with_the_commit_of_a_git_checkout(monkeypatch, tmp_path):
    from flowrl_deploy import __version__

    monkeypatch.setattr(versions, "_source_checkout", lambda: None)  # an installed wheel
    assert versions.release.__wrapped__() == __version__
    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)  # not a repository: no suffix
    assert versions.release.__wrapped__() == __version__


def test_the_release_of_this_checkout_names_its_commit():
    """release() of the checkout these tests run from names the commit checked out (an installed wheel's
    release is its built version: tests/core/test_packaging.py checks a built wheel's)."""
    from packaging.version import Version

    checkout = versions._source_checkout()
    if checkout is None or shutil.which("git") is None:
        pytest.skip("not run from a git checkout")
    before = _git(checkout, "rev-parse", "--short=9", "HEAD")
    found = Version(versions.release.__wrapped__())
    after = _git(checkout, "rev-parse", "--short=9", "HEAD")  # a commit made meanwhile (a shared tree)
    assert found.local.removesuffix(".dirty") in {f"g{before}", f"g{after}"}, found
    assert found >= Version("0.1.0")


def test_checkpoints_and_exports_record_the_release_with_its_commit():
    """They recorded the bare package version, 0.1.0 for every commit: a checkpoint did not say which
    code wrote it, even from a checkout whose release() knew the commit."""
    assert versions.library_versions()["flowrl-deploy"] == versions.release()


def test_the_version_report_names_the_release_python_and_the_serving_libraries():
    report = versions.version_report()
    assert report.splitlines()[0] == f"flowrl-deploy {versions.release()}"
    names = {line.split()[0] for line in report.splitlines()[1:]}
    assert {"python", "numpy", "grpcio", "protobuf"} <= names
    for line in report.splitlines()[1:]:
        name, version = line.split()
        if name != "python":
            assert metadata.version(name) == version


@pytest.fixture
def checkout(tmp_path):
    """``tmp_path`` as a git checkout with one commit (of a pyproject.toml)."""
    if shutil.which("git") is None:
        pytest.skip("no git")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    git("add", "pyproject.toml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return tmp_path


def _git(path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, cwd=path, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.usefixtures("checkout")
@pytest.mark.parametrize("tagged", [True, False], ids=["tagged", "without tags"])
def test_a_checkout_counts_its_commits_as_a_build_does(monkeypatch, tmp_path, tagged):
    """An editable install's version file says what it was at install time: the commits made since must
    show in release(), as a built wheel says. N commits after the tag vX.Y.Z is X.Y.(Z+1).devN; without
    tags (this repository has none) N counts every commit from the first, on the installed version's base:
    release() kept the install's dev number there (dev1227 in a checkout whose commit builds dev1281), two
    versions for one commit, and exports recorded the wrong one."""
    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)
    monkeypatch.setattr(versions, "__version__", "0.1.1.dev18+g80f0d66c8.d20260101")
    if tagged:
        _git(tmp_path, "tag", "-a", "v0.1.0", "-m", "0.1.0")

    def expected(commits: int) -> str:  # with ``commits`` on the checkout, the first one tagged if any
        if not tagged:
            return f"0.1.1.dev{commits}"
        return "0.1.0" if commits == 1 else f"0.1.1.dev{commits - 1}"

    for commits in (1, 2, 3):
        if commits > 1:
            _git(tmp_path, "commit", "-q", "--allow-empty", "-m", f"commit {commits}")
        commit = _git(tmp_path, "rev-parse", "--short=9", "HEAD")
        assert versions.release.__wrapped__() == f"{expected(commits)}+g{commit}"
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'changed'\n")
    assert versions.release.__wrapped__() == f"{expected(3)}+g{commit}.dirty"


@pytest.mark.usefixtures("checkout")
def test_a_lightweight_tag_is_read_as_setuptools_scm_reads_it(monkeypatch, tmp_path):
    """setuptools-scm's describe takes lightweight tags (--tags): release() must too."""
    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)
    _git(tmp_path, "tag", "v0.3.0")  # lightweight
    assert versions.release.__wrapped__() == f"0.3.0+g{_git(tmp_path, 'rev-parse', '--short=9', 'HEAD')}"


@pytest.mark.usefixtures("checkout")
def test_a_checkout_without_tags_installed_from_a_release_keeps_its_base(monkeypatch, tmp_path):
    """An install whose version has no dev number (built from a tagged commit) has no count to replace:
    release() names the commit on that version, as before."""
    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)
    monkeypatch.setattr(versions, "__version__", "0.2.0")
    commit = _git(tmp_path, "rev-parse", "--short=9", "HEAD")
    assert versions.release.__wrapped__() == f"0.2.0+g{commit}"


def test_a_checkout_without_tags_reports_the_version_a_build_of_its_commit_gets(monkeypatch, tmp_path):
    """release() of a tagless checkout installed at an earlier commit equals what setuptools-scm, with this
    repository's pyproject.toml, builds for the commit checked out now (its public part and commit)."""
    pytest.importorskip("setuptools_scm", reason="setuptools-scm (a dev dependency) is not installed")
    if shutil.which("git") is None:
        pytest.skip("no git")
    from packaging.version import Version

    for name in ("SETUPTOOLS_SCM_PRETEND_VERSION", "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_FLOWRL_DEPLOY"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "pyproject.toml", root)
    _git(root, "init", "-q")
    _git(root, "add", "pyproject.toml")
    _git(root, "commit", "-q", "-m", "first")

    def built() -> Version:
        command = [sys.executable, "-m", "setuptools_scm", "--root", str(root), "-c", str(root / "pyproject.toml")]
        run = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)
        return Version(run.stdout.strip().splitlines()[-1])

    monkeypatch.setattr(versions, "_source_checkout", lambda: root)
    monkeypatch.setattr(versions, "__version__", str(built()))  # installed at the first commit
    for n in (2, 3):
        _git(root, "commit", "-q", "--allow-empty", "-m", f"commit {n}")
        assert Version(versions.release.__wrapped__()) == built()


@pytest.mark.usefixtures("checkout")
def test_the_release_leaves_the_checkouts_git_index_alone(monkeypatch, tmp_path):
    """`git status` refreshed .git/index (taking .git/index.lock) in the user's checkout at each
    server start and `flowrl --version`: a `git commit` at that moment failed, and under sudo the
    index was rewritten as root."""
    import os

    os.utime(tmp_path / "pyproject.toml", ns=(1, 1))  # stale stat data: a refreshing status rewrites the index
    index = tmp_path / ".git" / "index"
    before = index.stat().st_mtime_ns, index.stat().st_ino
    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)
    assert "+g" in versions.release.__wrapped__()
    assert (index.stat().st_mtime_ns, index.stat().st_ino) == before


@pytest.mark.usefixtures("checkout")
def test_the_release_is_dirty_for_a_modified_tracked_file_not_for_an_untracked_one(monkeypatch, tmp_path):
    """A build scratch file or a run folder in the checkout is no change to the code that runs."""
    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "metrics.jsonl").write_text("{}\n")
    assert not versions.release.__wrapped__().endswith(".dirty")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'changed'\n")
    assert versions.release.__wrapped__().endswith(".dirty")


@pytest.mark.parametrize("failure", [FileNotFoundError("git"), "timeout"], ids=["no git", "git hangs"])
def test_without_a_working_git_the_release_has_no_suffix(monkeypatch, tmp_path, failure):
    import subprocess

    from flowrl_deploy import __version__

    def run(command, **kwargs):
        assert kwargs["timeout"] <= 5  # a hung git (a network file system, a lock) never holds a server's start
        raise subprocess.TimeoutExpired(command, kwargs["timeout"]) if failure == "timeout" else failure

    monkeypatch.setattr(versions, "_source_checkout", lambda: tmp_path)
    monkeypatch.setattr(versions.subprocess, "run", run)
    assert versions.release.__wrapped__() == __version__


def test_the_built_version_grows_with_each_commit_and_never_goes_below_0_1_0(monkeypatch, tmp_path):
    """Every build of every commit was 0.1.0, and pip kept an installed 0.1.0 when given a newer 0.1.0
    wheel. setuptools-scm makes the version from git with pyproject.toml's settings: a tree without git
    metadata or a clone without tags must not read below the 0.1.0 that every earlier build reported."""
    pytest.importorskip("setuptools_scm", reason="setuptools-scm (a dev dependency) is not installed")
    from packaging.version import Version

    for name in ("SETUPTOOLS_SCM_PRETEND_VERSION", "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_FLOWRL_DEPLOY"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "pyproject.toml", root)

    def version() -> Version:
        command = [sys.executable, "-m", "setuptools_scm", "--root", str(root), "-c", str(root / "pyproject.toml")]
        run = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)
        return Version(run.stdout.strip().splitlines()[-1])

    assert version() >= Version("0.1.0")  # no git metadata: fallback_version
    _git(root, "init", "-q")
    _git(root, "add", "pyproject.toml")
    _git(root, "commit", "-q", "-m", "first")
    assert version() >= Version("0.1.0")  # no tags
    _git(root, "tag", "-a", "v0.1.0", "-m", "0.1.0")
    found = [version()]
    assert found[0] == Version("0.1.0")
    for n in (1, 2):
        _git(root, "commit", "-q", "--allow-empty", "-m", f"commit {n}")
        found.append(version())
        commit = _git(root, "rev-parse", "--short=9", "HEAD")
        assert (found[-1].public, found[-1].local) == (f"0.1.1.dev{n}", f"g{commit}")
    assert found == sorted(found) and len(set(found)) == 3
