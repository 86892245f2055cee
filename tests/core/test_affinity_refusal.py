"""--cpus on a core this process may not use (outside its container's cpuset): one line naming
the cores and the system's reason."""

import errno
import os

import pytest

from flowrl_deploy.affinity import pin_to_cpus
from flowrl_deploy.errors import FlowRLError


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_a_core_the_process_may_not_use_is_one_line(monkeypatch):
    def refuse(pid, cpus):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with pytest.raises(FlowRLError, match=r"^--cpus 0: this process may not run there \(Invalid argument\)$"):
        pin_to_cpus((0,))
