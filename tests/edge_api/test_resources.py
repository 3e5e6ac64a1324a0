"""Which helper process of the edge a command line belongs to (``/api/resources``)."""

from __future__ import annotations

import pytest

from edge_api.app import helper_kind


@pytest.mark.parametrize(
    ("cmdline", "kind"),
    [
        (["/venv/bin/python", "-m", "edge_bridge.bridge_process"], "mqtt_bridge"),
        (
            [
                "/venv/bin/python",
                "-B",
                "-c",
                "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=21)",
            ],
            "decode_worker",
        ),
        (
            ["/venv/bin/python", "-B", "-c", "from multiprocessing.resource_tracker import main;main(20)"],
            "resource_tracker",
        ),
        (["/bin/sh", "-c", "true"], "other"),
    ],
)
def test_helper_kind(cmdline: list[str], kind: str) -> None:
    assert helper_kind(cmdline) == kind
