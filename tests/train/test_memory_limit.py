"""The memory check counts the cgroup's memory limit (a SLURM job's --mem, a container's), not only the
machine's RAM (longrun review, MEDIUM #2): past the limit the kernel kills the run without a word. The cgroup
files are stand-ins here, under tmp_path."""

import pytest
import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train import resources
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.replay import ReplayBuffer
from flowrl_deploy.train.resources import cgroup_memory_limit, memory_shortfall

GIB = 2**30
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 shows for no limit
SPEC = PolicySpec(obs_dim=3, act_dim=1, action_low=(-2.0,), action_high=(2.0,), hidden=16)


@pytest.fixture
def cgroups(tmp_path, monkeypatch):
    """Point the cgroup files at tmp_path; write(relative path, text) makes one."""
    monkeypatch.setattr(resources, "PROC_SELF_CGROUP", tmp_path / "proc_self_cgroup")
    monkeypatch.setattr(resources, "CGROUP_V2_ROOT", tmp_path / "v2")
    monkeypatch.setattr(resources, "CGROUP_V1_MEMORY_ROOT", tmp_path / "v1")

    def write(path: str, text: str | bytes) -> None:
        file = tmp_path / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(text if isinstance(text, bytes) else text.encode())

    return write


def test_a_v2_limit_is_read(cgroups):
    cgroups("v2/memory.max", f"{4 * GIB}\n")
    assert cgroup_memory_limit() == 4 * GIB


def test_a_v2_limit_above_the_process_binds_it_and_max_is_none(cgroups):
    """SLURM (cgroup v2, no namespace) sets the job's memory.max; the step's, where the process is, says max."""
    cgroups("proc_self_cgroup", "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n")
    cgroups("v2/memory.max", "max\n")
    cgroups("v2/system.slice/slurmstepd.scope/job_7/memory.max", f"{6 * GIB}\n")
    cgroups("v2/system.slice/slurmstepd.scope/job_7/step_0/memory.max", "max\n")
    cgroups("v2/system.slice/slurmstepd.scope/job_7/step_0/user/task_0/memory.max", "max\n")
    assert cgroup_memory_limit() == 6 * GIB


def test_v2_max_is_no_limit(cgroups):
    cgroups("v2/memory.max", "max\n")
    assert cgroup_memory_limit() is None


def test_v1_unlimited_is_no_limit_and_a_v1_number_is_one(cgroups):
    cgroups("proc_self_cgroup", "12:pids:/\n4:memory:/slurm/uid_1/job_7\n0::/\n")
    cgroups("v1/memory.limit_in_bytes", V1_UNLIMITED)
    assert cgroup_memory_limit() is None
    cgroups("v1/slurm/uid_1/job_7/memory.limit_in_bytes", f"{3 * GIB}\n")
    assert cgroup_memory_limit() == 3 * GIB


def test_no_cgroup_files_is_no_limit(cgroups):
    assert cgroup_memory_limit() is None


@pytest.mark.parametrize("garbage", ["", "lots\n", "-1\n", "0\n", "1.5e9\n", b"\xff\xfe\x00", "4 GiB"])
def test_a_garbled_limit_file_is_skipped(cgroups, garbage):
    cgroups("proc_self_cgroup", "0::/a\n")
    cgroups("v2/a/memory.max", garbage)
    cgroups("v1/memory.limit_in_bytes", garbage)
    assert cgroup_memory_limit() is None
    cgroups("v2/memory.max", f"{2 * GIB}\n")  # a readable one beside it still counts
    assert cgroup_memory_limit() == 2 * GIB


def test_an_unreadable_limit_or_cgroup_file_is_skipped(cgroups, tmp_path):
    (tmp_path / "proc_self_cgroup").mkdir()  # reading it fails (IsADirectoryError), as an unreadable one would
    (tmp_path / "v2" / "memory.max").mkdir(parents=True)
    assert cgroup_memory_limit() is None


def config_needing(gib: float) -> TrainConfig:
    """A config whose replay needs about ``gib`` GiB."""
    return TrainConfig(env="Pendulum-v1", hidden=16, buffer_size=int(gib * GIB / ReplayBuffer.bytes_needed(3, 1, 1)))


def test_the_memory_check_names_a_cgroup_limit_below_the_ram(cgroups, monkeypatch):
    """A run that fits the machine's 64 GiB of RAM but not its job's 2 GiB is refused before it starts, saying
    which limit: with the RAM alone it started and was killed for memory with no message."""
    monkeypatch.setattr(resources, "physical_memory_bytes", lambda: 64 * GIB)
    cgroups("v2/memory.max", f"{2 * GIB}\n")
    shortfall = memory_shortfall(SPEC, config_needing(3), torch.device("cpu"))
    assert shortfall is not None and shortfall.startswith("about 3.0 GiB of memory for Pendulum-v1 (3.0 GiB replay, ")
    assert shortfall.endswith(
        "; the cgroup's memory limit is 2.0 GiB (a SLURM job's --mem, a container's limit; "
        "this machine has 64.0 GiB of RAM)"
    )
    assert memory_shortfall(SPEC, config_needing(1), torch.device("cpu")) is None


def test_the_memory_check_names_the_ram_when_it_is_the_lower(cgroups, monkeypatch):
    monkeypatch.setattr(resources, "physical_memory_bytes", lambda: 2 * GIB)
    cgroups("v2/memory.max", f"{8 * GIB}\n")
    shortfall = memory_shortfall(SPEC, config_needing(3), torch.device("cpu"))
    assert shortfall is not None and shortfall.endswith("; this machine has 2.0 GiB of RAM")


def test_without_a_ram_figure_a_cgroup_limit_is_still_checked(cgroups, monkeypatch):
    monkeypatch.setattr(resources, "physical_memory_bytes", lambda: None)
    cgroups("v2/memory.max", f"{2 * GIB}\n")
    shortfall = memory_shortfall(SPEC, config_needing(3), torch.device("cpu"))
    assert shortfall is not None and shortfall.endswith(
        "; the cgroup's memory limit is 2.0 GiB (a SLURM job's --mem, a container's limit)"
    )
