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


def _v2_quota(cgroup_dir: Path) -> float | None:
    try:
        quota, period = (cgroup_dir / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(cgroup_dir: Path) -> float | None:
    try:
        quota_us = int((cgroup_dir / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_dir / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _dirs_up(base: Path, rel: str) -> list[Path]:
    """``base/rel`` and each of its parents up to ``base``: a quota set on a parent (a systemd
    slice, a container) limits every cgroup below it."""
    parts = [p for p in rel.split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_cpu_limit(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs granted by the tightest CPU quota on this process's cgroup or its parents (v2
    ``cpu.max``; v1 ``cpu.cfs_quota_us``), or None when there is none or it cannot be read.

    The process's own cgroup comes from ``/proc/self/cgroup``: a systemd ``CPUQuota=`` sits on
    the service's cgroup, not on the root; in a container the root is the container's."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = ["0::/"]
    limits: list[float] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if controllers == "":  # cgroup v2: one hierarchy, at the root (or unified/ when hybrid)
            bases, read = [cgroup_root, cgroup_root / "unified"], _v2_quota
        elif "cpu" in controllers.split(","):
            bases, read = [cgroup_root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")], _v1_quota
        else:
            continue
        for base in bases:
            for d in _dirs_up(base, rel):
                quota = read(d)
                if quota is not None:
                    limits.append(quota)
    return min(limits) if limits else None


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
