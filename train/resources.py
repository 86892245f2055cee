"""What a training run needs of the machine, checked before it allocates: its memory
(:func:`memory_shortfall`) against this machine's RAM (:func:`physical_memory_bytes`) and GPU memory."""

from __future__ import annotations

import os

import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.algorithm import training_bytes
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.replay import ReplayBuffer


def memory_shortfall(spec: PolicySpec, cfg: TrainConfig, device: torch.device) -> str | None:
    """What a run of ``cfg`` needs beyond this machine ('about 9.1 GiB of memory for dmc:dog-run (…);
    this machine has 8.0 GiB'), or None when it fits: checked before allocating, since a typo such as
    --hidden 100000 would otherwise fail deep inside torch, or be killed for memory hours later."""
    replay, networks = ReplayBuffer.bytes_needed(spec.obs_dim, spec.act_dim, cfg.buffer_size), training_bytes(spec)
    ram = physical_memory_bytes()
    needs = [] if ram is None else [(replay + (networks if device.type == "cpu" else 0), ram, "memory")]
    if device.type == "cuda":
        needs.append((networks, torch.cuda.get_device_properties(device).total_memory, "GPU memory"))
    for needed, total, what in needs:
        if needed > total:
            return (
                f"about {needed / 2**30:.1f} GiB of {what} for {cfg.env} ({replay / 2**30:.1f} GiB replay, "
                f"{networks / 2**30:.1f} GiB networks); this machine has {total / 2**30:.1f} GiB"
            )
    return None


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
