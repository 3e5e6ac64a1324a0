"""Shared by the hub API tests: an empty hub store on real chDB in a fresh directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HubStore]:
    s = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(tmp_path / "hub")}}))
    s.open()
    yield s
    s.close()
