"""Bot detection: crawlerdetect's list, empty/absurd user agents, and the local patterns file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hub_enrich.bots import BotDetector, BotVerdict, parse_patterns
from tests.hub_enrich.user_agents import BOT_UAS, HUMAN_UAS

HUMANS = [ua for ua, *_ in HUMAN_UAS]


def test_tables_are_big_enough() -> None:
    assert len(BOT_UAS) >= 20 and len(HUMANS) >= 20


@pytest.mark.parametrize(("ua", "name"), BOT_UAS, ids=[n for _, n in BOT_UAS])
def test_bots(bot_detector: BotDetector, ua: str, name: str) -> None:
    verdict = bot_detector(ua)
    assert verdict.is_bot, ua
    assert verdict.rule == "crawlerdetect"
    assert name in verdict.name.lower()


@pytest.mark.parametrize("ua", HUMANS, ids=range(len(HUMANS)))
def test_humans(bot_detector: BotDetector, ua: str) -> None:
    assert bot_detector(ua) == BotVerdict(False, "", "")


@pytest.mark.parametrize(
    ("ua", "rule"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-", "absurd"),
        ("0", "absurd"),
        ("Mozilla/5.0 " + "x" * 2000, "absurd"),
    ],
)
def test_empty_and_absurd_user_agents_are_bots(bot_detector: BotDetector, ua: str, rule: str) -> None:
    verdict = bot_detector(ua)
    assert verdict.is_bot and verdict.rule == rule and verdict.name.startswith("(")


PATTERNS = """\
# local additions, no release needed
ExampleCrawler/\\d
acme-monitor (v1.     this line is not a valid regex: used literally

!Mozilla/5\\.0 \\(X11; CrOS
"""


def test_patterns_file_parsing() -> None:
    deny, allow = parse_patterns(PATTERNS)
    assert deny == [
        "ExampleCrawler/\\d",
        "acme\\-monitor\\ \\(v1\\.\\ \\ \\ \\ \\ this\\ line\\ is\\ not\\ a\\ valid\\ "
        "regex:\\ used\\ literally",
    ]
    assert allow == ["Mozilla/5\\.0 \\(X11; CrOS"]


def test_extra_patterns_file_changes_verdicts(tmp_path: Path, bot_detector: BotDetector) -> None:
    custom_bot = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36 FarmWatch/2.0"
    )
    chromebook = HUMANS[3]
    assert "CrOS" in chromebook
    assert not bot_detector(custom_bot).is_bot  # unknown to the maintained list
    path = tmp_path / "bots.txt"
    path.write_text("# ours\nFarmWatch/\\d\n!\\bCrOS\\b\n", encoding="utf-8")
    local = BotDetector.from_file(path)
    assert local(custom_bot) == BotVerdict(True, "FarmWatch/2", "extra")
    # An allow pattern wins over everything, even the maintained list.
    assert local(chromebook) == BotVerdict(False, "", "allow")
    assert local("Mozilla/5.0 (X11; CrOS x86_64) curl/8.0").rule == "allow"
    assert local(BOT_UAS[0][0]).is_bot  # the maintained list still applies
    assert local.fingerprint != bot_detector.fingerprint


def test_literal_substring_patterns(tmp_path: Path) -> None:
    path = tmp_path / "bots.txt"
    path.write_text("weird (token\n", encoding="utf-8")
    detector = BotDetector.from_file(path, use_builtin=False)
    assert detector("Mozilla/5.0 weird (token)").is_bot
    assert not detector("Mozilla/5.0 weird token").is_bot
    assert not detector("curl/8.0").is_bot  # builtin list off


def test_crawler_user_agents_json_format(tmp_path: Path) -> None:
    path = tmp_path / "crawler-user-agents.json"
    path.write_bytes(orjson.dumps([{"pattern": "FarmBot\\/", "url": "https://farm.example"}, "SiloSpider"]))
    detector = BotDetector.from_file(path, use_builtin=False)
    assert detector("FarmBot/1.0").name == "FarmBot/"
    assert detector("x SiloSpider y").is_bot
    assert not detector(HUMANS[0]).is_bot


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BotDetector.from_file(tmp_path / "nope.txt")


def test_fingerprint_is_stable_for_the_same_lists() -> None:
    assert BotDetector(["a"], ["b"]).fingerprint == BotDetector(["a"], ["b"]).fingerprint
    assert BotDetector(["a"]).fingerprint != BotDetector(["a"], ["b"]).fingerprint
