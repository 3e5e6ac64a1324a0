"""The edge's "auto" helper processes follow the CPUs this process may really use."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekite.config import load_edge_config
from edgekite.host import bridge_in_child, cgroup_cpu_limit, decode_worker_count, usable_cpus


def test_cgroup_v2_quota_is_read_in_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5


def test_cgroup_v2_without_a_quota_means_no_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_is_read_when_there_is_no_v2_file(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_limit(tmp_path) is None


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
