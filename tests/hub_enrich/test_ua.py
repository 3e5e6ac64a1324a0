"""User-agent parsing on real user agents: browser, OS and device type as a person would name them."""

from __future__ import annotations

import pytest

from hub_enrich.ua import DEVICE_TYPES, EMPTY_UA, UaInfo, UaParser, device_type_of
from tests.hub_enrich.user_agents import BOT_UAS, HUMAN_UAS


def test_the_table_is_big_enough() -> None:
    assert len(HUMAN_UAS) >= 50
    assert {dev for *_, dev in HUMAN_UAS} == {"desktop", "mobile", "tablet", "other"}


@pytest.mark.parametrize(("ua", "browser", "os", "device"), HUMAN_UAS, ids=range(len(HUMAN_UAS)))
def test_real_user_agents(
    ua_parser: UaParser, ua: str, browser: str | None, os: str | None, device: str
) -> None:
    info = ua_parser(ua)
    if browser is not None:
        assert info.browser == browser
    if os is not None:
        assert info.os == os
    assert info.device_type == device


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        (HUMAN_UAS[0][0], UaInfo("Chrome", "124.0", "Windows", "10", "desktop")),
        (HUMAN_UAS[10][0], UaInfo("Safari", "17.4", "iOS", "17.4", "mobile")),
        (HUMAN_UAS[12][0], UaInfo("Safari", "17.4", "iPadOS", "17.4", "tablet")),
        (HUMAN_UAS[14][0], UaInfo("Safari", "17.4", "macOS", "10.15", "desktop")),
        (HUMAN_UAS[17][0], UaInfo("Firefox", "115.0", "Windows", "8.1", "desktop")),
        (HUMAN_UAS[19][0], UaInfo("Firefox", "125.0", "Linux", "", "desktop")),
        (HUMAN_UAS[37][0], UaInfo("IE", "11.0", "Windows", "7", "desktop")),
    ],
)
def test_versions(ua_parser: UaParser, ua: str, expected: UaInfo) -> None:
    assert ua_parser(ua) == expected


def test_crawlers_known_to_uap_core_are_bots(ua_parser: UaParser) -> None:
    spiders = [ua for ua, _ in BOT_UAS if ua_parser(ua).device_type == "bot"]
    # uap-core knows the big crawlers; the rest is the bot detector's job.
    assert len(spiders) >= 10
    assert ua_parser(BOT_UAS[0][0]).browser == "Googlebot"


def test_empty_and_garbage(ua_parser: UaParser) -> None:
    assert ua_parser("") == EMPTY_UA
    garbage = ua_parser("\x00\x01 not a browser ;;;")
    assert garbage.device_type == "other" and garbage.os == ""
    huge = ua_parser("Mozilla/5.0 (Windows NT 10.0; Win64; x64) " + "A" * 100_000)
    assert huge.device_type in DEVICE_TYPES


def test_results_are_cached(ua_parser: UaParser) -> None:
    parser = UaParser(cache_size=4)
    ua = HUMAN_UAS[3][0]
    first = parser(ua)
    assert parser(ua) is first
    info = parser.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, 4)
    for other, *_ in HUMAN_UAS[:10]:
        parser(other)
    assert parser.cache_info().currsize == 4  # bounded


def test_device_rules_in_order() -> None:
    # A spider beats everything; TV tokens beat the Android tablet rule; Windows is never a tablet.
    assert device_type_of("Android TV", "Android", "Spider", "Spider") == "bot"
    assert device_type_of("Linux; Android 11; SmartTV", "Android", "", "") == "other"
    assert device_type_of("Linux; Android 11; Nexus 9", "Android", "", "") == "tablet"
    assert device_type_of("Windows NT 6.2; Tablet PC 2.0", "Windows", "", "") == "desktop"
    assert device_type_of("Linux; Android 11; Mobile", "Android", "", "") == "mobile"
    assert device_type_of("whatever", "", "", "") == "other"
