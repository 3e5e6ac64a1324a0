"""Shared, session-scoped enrichment objects: loading the rule sets is the slow part (~0.2 s)."""

from __future__ import annotations

import pytest

from hub_enrich.bots import BotDetector
from hub_enrich.ua import UaParser


@pytest.fixture(scope="session")
def ua_parser() -> UaParser:
    return UaParser()


@pytest.fixture(scope="session")
def bot_detector() -> BotDetector:
    return BotDetector()
