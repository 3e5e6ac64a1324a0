"""Headless Chromium for the dashboard tests: Debian's ``chromium`` driven by Playwright.

Shared by the edge's and the hub's dashboard tests. Playwright downloads no browser here; CI
installs both (scripts/setup dev), so there a missing one is a failure, elsewhere a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):
    import playwright.sync_api as sync_api

    assert Path(shutil.which("chromium") or "/usr/bin/chromium").exists(), "CI needs Debian's chromium"
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
expect = sync_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian package chromium is not installed"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageErrors:
    """Uncaught exceptions and console errors (CSP violations land there too)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")


def screenshot(page: Any, tmp_path: Path, name: str, *, prefix: str, full_page: bool = False) -> Path:
    """A screenshot in tmp_path, copied to /tmp/<prefix>-<name>.png for a look after the run."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    with contextlib.suppress(OSError):
        shutil.copyfile(path, f"/tmp/{prefix}-{name}.png")
    return path
