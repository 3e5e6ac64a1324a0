"""Referrer → host, source, channel; UTM parameters from the page URL."""

from __future__ import annotations

import pytest

from hub_enrich.referrer import (
    CHANNELS,
    DIRECT,
    SourceList,
    classify,
    default_sources,
    normalise_host,
    referrer_host,
)

SITE = frozenset({"example.com"})


@pytest.mark.parametrize(
    ("url", "referrer", "channel", "host", "source"),
    [
        # search
        ("/", "https://www.google.com/", "search", "google.com", "Google"),
        ("/", "https://www.google.co.uk/search?q=edge", "search", "google.co.uk", "Google"),
        ("/", "https://www.google.de/", "search", "google.de", "Google"),
        ("/", "https://www.bing.com/search?q=x", "search", "bing.com", "Bing"),
        ("/", "https://duckduckgo.com/", "search", "duckduckgo.com", "DuckDuckGo"),
        ("/", "https://yandex.ru/search/?text=x", "search", "yandex.ru", "Yandex"),
        ("/", "https://search.brave.com/search?q=x", "search", "search.brave.com", "Brave"),
        (
            "/",
            "android-app://com.google.android.googlequicksearchbox/",
            "search",
            "android-app://com.google.android.googlequicksearchbox",
            "Google",
        ),
        # social
        ("/", "https://l.facebook.com/", "social", "facebook.com", "Facebook"),
        ("/", "https://lm.facebook.com/l.php?u=x", "social", "facebook.com", "Facebook"),
        ("/", "https://m.facebook.com/", "social", "facebook.com", "Facebook"),
        ("/", "https://t.co/abc", "social", "t.co", "X (Twitter)"),
        ("/", "https://twitter.com/", "social", "twitter.com", "X (Twitter)"),
        ("/", "https://www.linkedin.com/feed/", "social", "linkedin.com", "LinkedIn"),
        ("/", "https://out.reddit.com/t3_x", "social", "out.reddit.com", "Reddit"),
        ("/", "https://news.ycombinator.com/item?id=1", "social", "news.ycombinator.com", "Hacker News"),
        ("/", "https://github.com/", "social", "github.com", "GitHub"),
        # email: webmail referrers, mail apps, and tags
        ("/", "https://mail.google.com/", "email", "mail.google.com", "Gmail"),
        ("/", "https://outlook.live.com/mail/0/", "email", "outlook.live.com", "Outlook"),
        ("/", "android-app://com.google.android.gm", "email", "android-app://com.google.android.gm", "Gmail"),
        ("/?utm_source=newsletter&utm_medium=email&utm_campaign=spring", "", "email", "", "newsletter"),
        (
            "/?utm_source=newsletter&utm_medium=email",
            "https://mail.google.com/",
            "email",
            "mail.google.com",
            "newsletter",
        ),
        # campaign: paid mediums, click ids, cross-network, and other tagged traffic
        (
            "/?utm_source=google&utm_medium=cpc&utm_campaign=brand",
            "https://www.google.com/",
            "campaign",
            "google.com",
            "Google",
        ),
        (
            "/?utm_source=facebook&utm_medium=paid_social",
            "https://l.facebook.com/",
            "campaign",
            "facebook.com",
            "Facebook",
        ),
        ("/?gclid=abc123", "https://www.google.com/", "campaign", "google.com", "Google"),
        ("/?msclkid=x", "https://www.bing.com/", "campaign", "bing.com", "Bing"),
        ("/?utm_medium=banner&utm_source=partner", "", "campaign", "", "partner"),
        ("/?utm_campaign=spring-cross-network", "", "campaign", "", ""),
        ("/?utm_source=podcast&utm_campaign=ep12", "", "campaign", "", "podcast"),
        # tagged organic traffic keeps its channel
        ("/?utm_source=fb&utm_medium=social", "", "social", "", "Facebook"),
        ("/?utm_source=ig", "", "social", "", "Instagram"),
        ("/?utm_source=bing&utm_medium=organic", "", "search", "", "Bing"),
        # referral, internal, direct
        (
            "/",
            "https://blog.example.org/farm-tech-roundup",
            "referral",
            "blog.example.org",
            "blog.example.org",
        ),
        ("/", "https://www.producthunt.com/", "social", "producthunt.com", "Product Hunt"),
        ("/", "https://docs.google.com/document/d/1", "referral", "docs.google.com", "docs.google.com"),
        (
            "/",
            "https://google.evil.example.net/",
            "referral",
            "google.evil.example.net",
            "google.evil.example.net",
        ),
        ("/pricing", "https://example.com/", "internal", "example.com", ""),
        ("/pricing", "https://www.example.com/docs", "internal", "example.com", ""),
        ("/pricing", "https://shop.example.com/cart", "internal", "shop.example.com", ""),
        ("/pricing?utm_source=newsletter", "https://example.com/", "internal", "example.com", ""),
        ("https://other.example.net/x", "https://other.example.net/", "internal", "other.example.net", ""),
        ("/", "", "direct", "", ""),
        ("/", "about:blank", "direct", "", ""),
        ("/", "file:///home/me/bookmarks.html", "direct", "", ""),
        ("", "", "direct", "", ""),
    ],
)
def test_channels(url: str, referrer: str, channel: str, host: str, source: str) -> None:
    info = classify(url, referrer, SITE)
    assert (info.channel, info.referrer_host, info.referrer_source) == (channel, host, source)


def test_every_channel_is_reachable() -> None:
    seen = {
        classify(u, r, SITE).channel
        for u, r in [
            ("/", ""),
            ("/", "https://example.com/"),
            ("/", "https://google.com/"),
            ("/", "https://t.co/"),
            ("/", "https://mail.google.com/"),
            ("/?utm_medium=cpc", ""),
            ("/", "https://a.example.org/"),
        ]
    }
    assert seen == set(CHANNELS)


def test_utm_values() -> None:
    info = classify(
        "/pricing?utm_source=Newsletter&utm_medium=Email&utm_campaign=Spring%20Sale&utm_term=edge+box"
        "&utm_content=hero&UTM_SOURCE=ignored-second",
        "",
    )
    assert info[3:] == ("Newsletter", "Email", "Spring Sale", "edge box", "hero")
    assert info.channel == "email"
    # values sent beside the URL fill only what the URL lacks
    info = classify("/?utm_source=a", "", utm={"utm_source": "b", "utm_medium": "cpc"})
    assert (info.utm_source, info.utm_medium, info.channel) == ("a", "cpc", "campaign")
    long = classify("/?utm_campaign=" + "x" * 5000, "")
    assert len(long.utm_campaign) == 256


def test_direct_constant() -> None:
    assert classify("/", "") == DIRECT


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("WWW.Example.COM", "example.com"),
        ("www.example.com:8443", "example.com"),
        ("example.com.", "example.com"),
        ("m.example.com", "example.com"),
        ("www.m.example.com", "example.com"),
        ("l.facebook.com", "facebook.com"),
        ("lm.facebook.com", "facebook.com"),
        ("m.com", "m.com"),  # never strip down to a bare TLD
        ("t.co", "t.co"),
        ("[2001:db8::1]", "2001:db8::1"),
    ],
)
def test_normalise_host(raw: str, host: str) -> None:
    assert normalise_host(raw) == host


@pytest.mark.parametrize(
    ("referrer", "host"),
    [
        ("https://www.google.com/search?q=1", "google.com"),
        ("http://user:pw@Example.org:8080/x", "example.org"),
        ("google.com/search", "google.com"),  # a producer that forgot the scheme
        ("/relative/path", ""),
        ("nonsense", ""),
        ("javascript:alert(1)", ""),
        ("https://[::1", ""),  # malformed
        ("android-app://com.linkedin.android/", "android-app://com.linkedin.android"),
    ],
)
def test_referrer_host(referrer: str, host: str) -> None:
    assert referrer_host(referrer) == host


def test_custom_source_list() -> None:
    sources = SourceList.from_json(
        b'{"search": {"FarmSearch": ["farmsearch.example", "agri.*"]}, "aliases": {"fs": "FarmSearch"}}'
    )
    assert classify("/", "https://farmsearch.example/?q=x", sources=sources).channel == "search"
    assert classify("/", "https://agri.de/", sources=sources).referrer_source == "FarmSearch"
    assert classify("/?utm_source=fs", "", sources=sources).channel == "search"
    assert classify("/", "https://www.google.com/", sources=sources).channel == "referral"
    assert sources.fingerprint != default_sources().fingerprint
