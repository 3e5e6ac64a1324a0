"""How many CPUs this process may really use, and what the edge's "auto" settings make of it.

The edge's helper processes (the MQTT bridge child, the HTTP decode worker) buy speed only by
running beside the SQLite writer on another core. On a one-core box (a Pi Zero, a container
given ``--cpus=1``) they would cost their memory (~25 and ~40 MB) and give nothing back, so
``auto`` leaves them out there. ``os.cpu_count()`` would see the host's cores through both
the affinity mask and a cgroup quota; this reads both.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

Auto = Literal["auto"]


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by a cgroup CPU quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), or
    None when there is no quota or it cannot be read."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """Whole CPUs this process can keep busy at once: the affinity mask, capped by the quota
    (rounded up: 1.5 CPUs of quota still lets two threads run side by side)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = max(1, affinity)
    if quota is not None and quota > 0:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def host_cpus() -> int:
    return usable_cpus(quota=cgroup_cpu_limit())


def bridge_in_child(setting: bool | Auto, cpus: int) -> bool:
    """``mqtt.bridge_process``: auto means a child process when there is a second core for it."""
    return cpus >= 2 if setting == "auto" else bool(setting)


def decode_worker_count(setting: int | Auto, cpus: int) -> int:
    """``http.decode_workers``: auto means one worker when there is a second core for it."""
    if setting == "auto":
        return 1 if cpus >= 2 else 0
    return int(setting)
