"""What a training run needs of the machine, checked before it allocates: its memory
(:func:`memory_shortfall`) against the memory it may use (this machine's RAM, :func:`physical_memory_bytes`,
or its cgroup's limit, :func:`cgroup_memory_limit`, whichever is less) and its GPU memory; and, after each
save, the disk its checkpoints go to (:func:`disk_space_note`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.algorithm import training_bytes
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.replay import ReplayBuffer

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
"""Which cgroup this process is in: ``0::/path`` (cgroup v2), ``N:memory:/path`` (v1)."""
CGROUP_V2_ROOT = Path("/sys/fs/cgroup")
"""Where cgroup v2 is mounted; a cgroup's limit is its folder's ``memory.max``."""
CGROUP_V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
"""Where cgroup v1's memory controller is mounted; a cgroup's limit is its folder's ``memory.limit_in_bytes``."""
NO_LIMIT = 2**60
"""A limit this large is none: v1 writes 'unlimited' as a huge number (9223372036854771712)."""


def memory_shortfall(spec: PolicySpec, cfg: TrainConfig, device: torch.device) -> str | None:
    """What a run of ``cfg`` needs beyond what it may use ('about 9.1 GiB of memory for dmc:dog-run (…);
    this machine has 8.0 GiB of RAM'), or None when it fits: checked before allocating, since a typo such as
    --hidden 100000 would otherwise fail deep inside torch, or be killed for memory hours later. The memory
    is the machine's RAM or, where less, its cgroup's limit (a SLURM job's --mem, a container's), past which
    the kernel kills the run without a word. A resume of a saved replay needs no more: it is read into the
    buffer a block of at most 32 MiB at a time."""
    replay, networks = ReplayBuffer.bytes_needed(spec.obs_dim, spec.act_dim, cfg.buffer_size), training_bytes(spec)
    needs = []
    if (limit := memory_limit()) is not None:
        needs.append((replay + (networks if device.type == "cpu" else 0), *limit, "memory"))
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        needs.append((networks, total, f"this machine has {total / 2**30:.1f} GiB", "GPU memory"))
    for needed, total, has, what in needs:
        if needed > total:
            return (
                f"about {needed / 2**30:.1f} GiB of {what} for {cfg.env} ({replay / 2**30:.1f} GiB replay, "
                f"{networks / 2**30:.1f} GiB networks); {has}"
            )
    return None


def disk_space_note(checkpoint: Path) -> str | None:
    """A warning where the disk of ``checkpoint``, just saved, has room for fewer than two more of its size, or
    None: the next save writes a whole checkpoint before it deletes anything, and a save that fails stops the run
    (at its last checkpoint), with nothing said before on a disk that filled over days."""
    try:
        size = sum(entry.stat().st_size for entry in os.scandir(checkpoint) if entry.is_file(follow_symlinks=False))
        free = shutil.disk_usage(checkpoint).free
    except OSError:
        return None
    if free >= 2 * size:
        return None
    return (
        f"{_size(free)} free on the disk of {checkpoint.parent}, and a checkpoint takes {_size(size)}: the next save "
        "may not fit, and a save that fails stops the run at its last checkpoint; free space there"
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def memory_limit() -> tuple[int, str] | None:
    """The memory this process may use, and what sets it ('this machine has 8.0 GiB of RAM'): the smaller of
    the machine's RAM and its cgroup's limit, or None where neither is known."""
    ram, cgroup = physical_memory_bytes(), cgroup_memory_limit()
    if cgroup is not None and (ram is None or cgroup < ram):
        has_ram = "" if ram is None else f"; this machine has {ram / 2**30:.1f} GiB of RAM"
        return cgroup, (
            f"the cgroup's memory limit is {cgroup / 2**30:.1f} GiB (a SLURM job's --mem, a container's limit{has_ram})"
        )
    return None if ram is None else (ram, f"this machine has {ram / 2**30:.1f} GiB of RAM")


def cgroup_memory_limit() -> int | None:
    """The memory limit of this process's cgroup (a SLURM job's --mem, a container's, systemd's MemoryMax), or
    None where it has none: the least ``memory.max`` (cgroup v2) or ``memory.limit_in_bytes`` (v1) of its
    cgroup and those above it, since a parent's limit binds its children (SLURM sets the job's, not the step's).
    'max' and v1's huge 'unlimited' are no limit; a file absent (no cgroups: macOS, Windows), unreadable or
    garbled is skipped, never an error."""
    limits = []
    for root, controller, name in (
        (CGROUP_V2_ROOT, "", "memory.max"),
        (CGROUP_V1_MEMORY_ROOT, "memory", "memory.limit_in_bytes"),
    ):
        for folder in _cgroup_folders(root, _own_cgroup(controller)):
            limit = _read_limit(folder / name)
            if limit is not None:
                limits.append(limit)
    return min(limits, default=None)


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the hierarchy of ``controller`` ('' for v2's), from ``/proc/self/cgroup``;
    '/' where it does not say (a container's namespace shows its own cgroup as '/')."""
    try:
        lines = PROC_SELF_CGROUP.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError):
        return "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == controller if not controller else controller in parts[1].split(",")):
            return parts[2] if parts[2].startswith("/") else "/"
    return "/"


def _cgroup_folders(root: Path, cgroup: str) -> list[Path]:
    """The folders of ``cgroup`` under ``root`` and of each cgroup above it, up to ``root`` itself."""
    parts = [p for p in PurePosixPath(cgroup).parts[1:] if p not in ("", ".", "..")]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read_limit(path: Path) -> int | None:
    """The limit in a cgroup memory file, or None: no limit ('max', a huge number), no such file, unreadable,
    or not a positive number."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not text.isdigit():  # 'max', or garbage
        return None
    limit = int(text)
    return limit if 0 < limit < NO_LIMIT else None


def physical_memory_bytes() -> int | None:
    """This machine's RAM: ``os.sysconf`` (Linux, macOS), ``GlobalMemoryStatusEx`` (Windows), or None
    where neither tells (the memory check is then skipped, not failed)."""
    try:
        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        ram = page * pages if page > 0 and pages > 0 else 0  # -1: not known (old macOS)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        ram = 0
    if ram <= 0 and os.name == "nt":
        ram = _windows_physical_memory()
    return ram if ram > 0 else None


def _windows_physical_memory() -> int:
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_uint32),  # DWORD: 32 bits (c_ulong is only on Windows)
            ("dwMemoryLoad", ctypes.c_uint32),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    try:
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.ullTotalPhys)
    except (AttributeError, OSError):
        pass
    return 0
