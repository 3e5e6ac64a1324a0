"""The edge's "auto" helper processes follow the CPUs this process may really use."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekite.config import load_edge_config
from edgekite.host import bridge_in_child, cgroup_cpu_limit, decode_worker_count, usable_cpus


def cgroup_tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup (``files``: path under it → content) and /proc/self/cgroup."""
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    return root, proc


def test_cgroup_v2_quota_in_a_container_is_read_in_cpus(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_a_systemd_cpu_quota_on_the_service_or_its_slice_is_found(tmp_path: Path) -> None:
    """``CPUQuota=100%`` sits on the service's cgroup, not on the root; the tightest one wins."""
    files = {
        "cpu.max": "max 100000\n",
        "edge.slice/cpu.max": "200000 100000\n",
        "edge.slice/edgekite.service/cpu.max": "100000 100000\n",
    }
    root, proc = cgroup_tree(tmp_path, "0::/edge.slice/edgekite.service\n", files)
    assert cgroup_cpu_limit(root, proc) == 1.0
    files["edge.slice/edgekite.service/cpu.max"] = "max 100000\n"
    root, proc = cgroup_tree(tmp_path / "b", "0::/edge.slice/edgekite.service\n", files)
    assert cgroup_cpu_limit(root, proc) == 2.0


def test_cgroup_v2_without_a_quota_means_no_limit(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_v1_quota_is_read_from_the_cpu_hierarchy(tmp_path: Path) -> None:
    proc_text = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n"
    files = {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    root, proc = cgroup_tree(tmp_path, proc_text, files)
    assert cgroup_cpu_limit(root, proc) == 0.5


def test_cgroup_v1_without_a_quota_means_no_limit(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = cgroup_tree(tmp_path, "1:cpu:/\n0::/\n", files)
    assert cgroup_cpu_limit(root, proc) is None


def test_unreadable_or_garbled_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, "garbage\n0::/\n", {"cpu.max": "garbage\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-proc") is None


@pytest.mark.parametrize(
    ("affinity", "quota", "cpus"),
    [(2, None, 2), (8, 1.0, 1), (8, 0.5, 1), (4, 1.5, 2), (1, 4.0, 1), (0, None, 1)],
)
def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(
    affinity: int, quota: float | None, cpus: int
) -> None:
    assert usable_cpus(affinity, quota) == cpus


def test_auto_puts_the_bridge_in_a_child_only_with_a_second_cpu() -> None:
    assert bridge_in_child("auto", 2) is True
    assert bridge_in_child("auto", 1) is False
    assert bridge_in_child(True, 1) is True  # an explicit setting wins
    assert bridge_in_child(False, 8) is False


def test_auto_gives_one_decode_worker_only_with_a_second_cpu() -> None:
    assert decode_worker_count("auto", 2) == 1
    assert decode_worker_count("auto", 1) == 0
    assert decode_worker_count(3, 1) == 3


def test_both_settings_default_to_auto_and_take_booleans_and_counts_from_the_environment() -> None:
    cfg = load_edge_config(environ={})
    assert cfg.mqtt.bridge_process == "auto"
    assert cfg.http.decode_workers == "auto"
    cfg = load_edge_config(
        environ={"EDGEKITE_MQTT__BRIDGE_PROCESS": "false", "EDGEKITE_HTTP__DECODE_WORKERS": "2"}
    )
    assert cfg.mqtt.bridge_process is False
    assert cfg.http.decode_workers == 2


@pytest.mark.parametrize(
    "environ",
    [
        {"EDGEKITE_MQTT__BRIDGE_PROCESS": "sometimes"},
        {"EDGEKITE_HTTP__DECODE_WORKERS": "17"},
        {"EDGEKITE_HTTP__DECODE_WORKERS": "-1"},
    ],
)
def test_other_values_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        load_edge_config(environ=environ)


def test_the_ingest_queue_is_shallower_when_the_bridge_shares_the_edge_process() -> None:
    store = load_edge_config(environ={}).store
    assert store.ingest_queue_bytes(bridge_in_edge_process=True) == 1024**2
    assert store.ingest_queue_bytes(bridge_in_edge_process=False) == 4 * 1024**2
    store = load_edge_config(environ={"EDGEKITE_STORE__QUEUE_MAX_BYTES": "2097152"}).store
    assert store.ingest_queue_bytes(True) == store.ingest_queue_bytes(False) == 2 * 1024**2
