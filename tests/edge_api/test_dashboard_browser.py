"""The LAN dashboard and the page-view tracker in a real headless Chromium, against a real edge.

No mocks: ``edgekite edge`` runs as a child process with its embedded broker, the simulator
publishes over MQTT, and Debian's ``chromium`` (driven by Playwright, which downloads no browser
here) loads the dashboard from the edge exactly as a LAN user would. An event whose payload holds
HTML and script is fed in as well: it has to show up as text and never run.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import PageErrors, expect, needs_chromium, screenshot
from tests.browser import browser as browser  # the module-scoped fixture, used by name
from tests.conftest import EdgeProcess, free_port, wait_for

SIM_COUNT = 300
HOSTILE_COUNT = 3
XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_SCRIPT = "<script>window.__xss=2</script>"

pytestmark = needs_chromium


@dataclass
class Edge:
    base: str
    mqtt_port: int
    process: EdgeProcess


def http_json(url: str, body: Any = None, key: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    # Only ever http://127.0.0.1 URLs of the edge under test.
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def start_edge(data_dir: Path, env: dict[str, str] | None = None) -> Edge:
    mqtt_port = free_port()
    proc = EdgeProcess(
        data_dir, "--mqtt-port", str(mqtt_port), "--http-port", str(free_port()), env=env
    ).start()
    assert proc.http_url, proc.ready_line
    return Edge(proc.http_url.rstrip("/"), mqtt_port, proc)


def stop_edge(edge: Edge) -> None:
    assert edge.process.proc is not None
    if edge.process.proc.poll() is None:
        try:
            edge.process.terminate(timeout=20)
        except subprocess.TimeoutExpired:
            edge.process.kill9()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """An edge fed with 300 simulated events and three hostile ones (enough to top the errors list)."""
    running = start_edge(tmp_path_factory.mktemp("dashboard") / "data")
    try:
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgekite.cli",
                "simulate",
                "--mqtt-url",
                f"mqtt://127.0.0.1:{running.mqtt_port}",
                "--rate",
                "0",
                "--count",
                str(SIM_COUNT),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        hostile = {
            "source": {"type": "server", "id": "xss-test"},
            "event": {
                "category": "app",
                "type": "xss_probe",
                "severity": "error",
                "data": {"html": XSS_IMG, "script": XSS_SCRIPT, "message": XSS_SCRIPT},
            },
            "attachments": [
                {"kind": "thumbnail", "uri": "https://example.com/thumbs/1.jpg"},
                {"kind": "clip", "uri": 's3://bucket/"><img src=x onerror="window.__xss=3">.mp4'},
            ],
        }
        answer = http_json(f"{running.base}/api/events/batch", [hostile] * HOSTILE_COUNT)
        assert answer["accepted"] == HOSTILE_COUNT, answer
        wait_for(lambda: http_json(f"{running.base}/api/stats")["events_stored"] >= SIM_COUNT + HOSTILE_COUNT)
        yield running
    finally:
        stop_edge(running)


def shot(page: Any, tmp_path: Path, name: str, full_page: bool = False) -> Path:
    return screenshot(page, tmp_path, name, prefix="edgekite-dashboard", full_page=full_page)


def test_dashboard_end_to_end(edge: Edge, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = PageErrors(page)

    # -- Overview: counters, the operational-view banner, chart, uniques, top lists
    page.goto(f"{edge.base}/")
    expect(page.locator("#op-banner")).to_contain_text("operational")
    expect(page.locator("#op-banner")).to_contain_text("hub")
    nonzero = re.compile(r"^[1-9][\d,.\s]*$")
    expect(page.locator("[data-counter=events_24h] .counter-value")).to_have_text(nonzero)
    expect(page.locator("[data-counter=events_7d] .counter-value")).to_have_text(nonzero)
    expect(page.locator("#ov-chart rect[class^=cat-]").first).to_be_attached()
    expect(page.get_by_text("estimate (HyperLogLog)")).to_be_visible()
    expect(page.locator("[data-top=type] .toplist li").first).to_be_visible()
    # The hostile message is an error key in the top errors list: shown as text, not parsed.
    expect(page.locator("[data-top=error] .toplist")).to_contain_text(XSS_SCRIPT)
    expect(page.locator("#nav-toggle")).to_be_hidden()  # the full nav on a desktop
    shot(page, tmp_path, "overview", full_page=True)

    # -- Timeline: the simulator's events, newest first
    page.get_by_role("link", name="Timeline", exact=True).click()
    rows = page.locator("#timeline-list .ev")
    expect(rows.first).to_be_visible()
    all_types = set(page.locator("#timeline-list .ev-type").all_inner_texts())
    assert len(all_types) > 1, all_types

    # Filter by type: every row has it and the hash holds the filter.
    page.fill("#f-type", "sensor_reading")
    page.press("#f-type", "Enter")
    page.wait_for_url(re.compile(r"#/timeline\?.*type=sensor_reading"))
    expect(page.locator("#timeline-list .ev-type").first).to_have_text("sensor_reading")
    expect(page.locator("#timeline-status")).to_contain_text("shown")
    types = page.locator("#timeline-list .ev-type").all_inner_texts()
    assert types and set(types) == {"sensor_reading"}, types

    # Back: the filter is gone again.
    page.go_back()
    page.wait_for_url(re.compile(r"#/timeline$"))
    expect(page.locator("#f-type")).to_have_value("")
    wait_for(lambda: len(set(page.locator("#timeline-list .ev-type").all_inner_texts())) > 1, timeout=10)

    # Live: a new event arrives over /api/stream and is prepended; paused, it is only counted.
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    probe = {
        "source": {"type": "server", "id": "live-test"},
        "event": {"category": "ops", "type": "live_probe"},
    }
    http_json(f"{edge.base}/api/events", {**probe, "event": {**probe["event"], "data": {"n": 1}}})
    expect(page.locator("#timeline-list .ev-summary").first).to_have_text("n=1")
    page.click("#live-toggle")
    expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "false")
    http_json(f"{edge.base}/api/events", {**probe, "event": {**probe["event"], "data": {"n": 2}}})
    expect(page.locator("#live-note")).to_contain_text("1 new matching event")
    expect(page.locator("#timeline-list .ev-summary").first).to_have_text("n=1")
    page.click("#live-toggle")
    expect(page.locator("#timeline-list .ev-summary").first).to_have_text("n=2")

    # Detail drawer of an ordinary event: its id and its payload.
    first = rows.first
    event_id = first.get_attribute("data-event-id")
    first.click()
    drawer = page.locator("#drawer")
    expect(drawer).to_be_visible()
    expect(drawer).to_contain_text(event_id or "missing id")
    stored = http_json(f"{edge.base}/api/events/{event_id}")
    some_key = next(iter(stored["event"]["data"]))
    expect(drawer.locator(".payload")).to_contain_text(f'"{some_key}"')
    shot(page, tmp_path, "timeline-drawer")
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()

    # The hostile event: its payload is visible literally and nothing ran.
    page.fill("#f-source", "xss-test")
    page.press("#f-source", "Enter")
    page.wait_for_url(re.compile(r"source=xss-test"))
    expect(page.locator("#timeline-list .ev-type")).to_have_text(["xss_probe"] * HOSTILE_COUNT)
    page.locator("#timeline-list .ev").first.click()
    payload = drawer.locator(".payload")
    expect(payload).to_contain_text(XSS_SCRIPT)
    expect(payload).to_contain_text("<img src=x onerror=")
    # Only http/https/file attachments become links; the s3 one stays text.
    expect(drawer.locator(".attachments a")).to_have_count(1)
    expect(drawer.locator(".attachments a")).to_have_attribute("href", "https://example.com/thumbs/1.jpg")
    expect(drawer.locator(".attachments")).to_contain_text('s3://bucket/"><img src=x')
    assert page.locator("#drawer img, #main img, script:not([src])").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    page.keyboard.press("Escape")

    # -- Alerts: the badge counts unseen error/critical events; "mark all seen" clears it
    badge = page.locator("#alerts-badge")
    expect(badge).to_be_visible()
    assert int(badge.inner_text().rstrip("+")) > 0
    page.get_by_role("link", name=re.compile(r"^Alerts")).click()
    expect(page.locator("#alerts-list .ev").first).to_be_visible()
    expect(page.locator("#alerts-list")).to_contain_text("xss_probe")
    page.click("#mark-seen")
    expect(badge).to_be_hidden()
    expect(page.locator("#alerts-summary")).to_contain_text("No unseen alerts")
    assert http_json(f"{edge.base}/api/alerts?limit=1")["unseen"] == 0

    # -- Incidents and Health
    page.get_by_role("link", name="Incidents", exact=True).click()
    expect(page.locator("#incidents-table tbody tr").first).to_be_visible()
    page.locator("#incidents-table").get_by_role("button", name="Top detection").first.click()
    expect(drawer.locator("#drawer-title")).to_contain_text("_detected")
    expect(drawer.locator(".attachments a").first).to_have_attribute("href", re.compile(r"^file:///"))
    page.keyboard.press("Escape")
    page.get_by_role("link", name="Health", exact=True).click()
    sources = page.locator("#sources-table tbody tr")
    expect(sources.first).to_be_visible()
    assert sources.count() >= 5
    expect(page.locator("#sources-table")).to_contain_text("xss-test")
    shot(page, tmp_path, "health", full_page=True)

    assert page.evaluate("typeof window.__xss") == "undefined"
    assert errors.errors == []
    context.close()


def test_dashboard_on_a_phone(edge: Edge, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = PageErrors(page)
    page.goto(f"{edge.base}/#/timeline")
    expect(page.locator("#timeline-list .ev").first).to_be_visible()
    # The nav collapses behind a menu button; nothing is wider than the screen.
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, tmp_path, "phone")
    # The filters fold away behind one line.
    expect(page.locator("#f-type")).to_be_hidden()
    page.get_by_text("Filters", exact=True).click()
    expect(page.locator("#f-type")).to_be_visible()
    page.click("#nav-toggle")
    expect(page.get_by_role("link", name="Health", exact=True)).to_be_visible()
    shot(page, tmp_path, "phone-menu")
    page.get_by_role("link", name="Health", exact=True).click()
    expect(page.locator("#sources-table tbody tr").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert errors.errors == []
    context.close()


def test_dashboard_asks_for_the_api_key(tmp_path: Path, browser: Any) -> None:
    key = "lan-secret-123"
    secured = start_edge(tmp_path / "data", env={"EDGEKITE_HTTP__API_KEY": key})
    try:
        http_json(
            f"{secured.base}/api/events",
            {
                "source": {"type": "server", "id": "keyed-source"},
                "event": {"category": "ops", "type": "key_check", "data": {"n": 1}},
            },
        )  # ingest is open to browsers by default (http.ingest_auth = "open")
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(f"{secured.base}/#/timeline")
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        expect(dialog).to_be_hidden()
        expect(page.locator("#timeline-list .ev-type")).to_have_text(["key_check"])
        assert page.evaluate("localStorage.getItem('edgekite.apiKey')") == key
        # EventSource sends the key as ?key=: the live stream connects.
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        context.close()
    finally:
        stop_edge(secured)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_site(root: Path) -> Iterator[str]:
    """A page on another origin than the edge, as a real site embedding the tracker."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def site_events(edge: Edge, site: str) -> list[dict[str, Any]]:
    qs = urllib.parse.urlencode({"source": site, "limit": 50})
    return list(reversed(http_json(f"{edge.base}/api/timeline?{qs}")["events"]))


def test_tracker_sends_page_views(edge: Edge, browser: Any, tmp_path: Path) -> None:
    shop = tmp_path / "site" / "shop"
    shop.mkdir(parents=True)
    head = '<!doctype html><link rel="icon" href="data:,"><title>{title}</title>'
    tag = '<script defer src="{base}/t.js" data-site="{site}" {extra}></script>'
    (shop / "page.html").write_text(
        head.format(title="Tracker test") + tag.format(base=edge.base, site="tracker-site", extra="")
    )
    (shop / "dnt.html").write_text(
        head.format(title="DNT")
        + tag.format(base=edge.base, site="tracker-dnt", extra='data-respect-dnt="true"')
    )
    with serve_site(tmp_path / "site") as origin:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors = PageErrors(page)
        page.goto(f"{origin}/shop/page.html?utm_source=newsletter&utm_campaign=spring&x=1")
        views = wait_for(lambda: site_events(edge, "tracker-site"))
        first = views[0]
        assert first["source"]["type"] == "browser"
        # The tracker mints time-ordered UUIDv7 ids, stamped with the page's clock.
        event_id = uuid.UUID(first["event_id"])
        assert event_id.version == 7
        assert abs(int.from_bytes(event_id.bytes[:6], "big") - first["observed_at"]) < 1000
        assert first["event"]["category"] == "web" and first["event"]["type"] == "page_view"
        data = first["event"]["data"]
        assert data["url"] == "/shop/page.html?utm_source=newsletter&utm_campaign=spring&x=1"
        assert data["utm_source"] == "newsletter" and data["utm_campaign"] == "spring"
        assert "utm_medium" not in data
        assert data["title"] == "Tracker test"
        assert "Chrome" in data["user_agent"]
        assert re.fullmatch(r"\d+x\d+", data["screen"])
        assert data["language"]

        # A single-page app navigates with pushState: one more page view, the previous page as referrer.
        page.evaluate("history.pushState({}, '', '/shop/next?utm_medium=email')")
        first_url = "/shop/page.html?utm_source=newsletter&utm_campaign=spring&x=1"
        views = wait_for(
            lambda: [
                e
                for e in site_events(edge, "tracker-site")
                if e["event"]["data"]["url"] == "/shop/next?utm_medium=email"
            ]
        )
        assert views[0]["event"]["data"]["referrer"] == origin + first_url
        assert views[0]["event"]["data"]["utm_medium"] == "email"

        # Custom events.
        page.evaluate("window.edgekite.track('signup', {plan: 'pro'})")
        custom = wait_for(
            lambda: [e for e in site_events(edge, "tracker-site") if e["event"]["type"] == "signup"]
        )
        assert custom[0]["event"]["category"] == "web"
        assert custom[0]["event"]["data"]["plan"] == "pro"
        assert errors.errors == []
        context.close()

        # Global Privacy Control on and data-respect-dnt="true": nothing leaves the browser.
        context = browser.new_context()
        context.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"
        )
        page = context.new_page()
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.url))
        page.goto(f"{origin}/shop/dnt.html")
        page.wait_for_function("window.edgekite !== undefined")
        page.evaluate("window.edgekite.track('ignored', {})")
        page.wait_for_timeout(300)
        assert [u for u in sent if "/api/events" in u] == []
        assert site_events(edge, "tracker-dnt") == []
        context.close()


def test_health_page_shows_the_sync_backlog_and_why_it_is_stuck(tmp_path: Path, browser: Any) -> None:
    """A hub that answers nothing (a closed port): the operator sees the backlog and the error."""
    dead_hub = f"http://127.0.0.1:{free_port()}"
    env = {"EDGEKITE_SYNC__HUB_URL": dead_hub, "EDGEKITE_SYNC__BACKOFF_MAX_SECS": "1"}
    syncing = start_edge(tmp_path / "data", env=env)
    try:
        events = [
            {"source": {"type": "server", "id": "pos-1"}, "event": {"category": "app", "type": "sale"}}
            for _ in range(7)
        ]
        assert http_json(f"{syncing.base}/api/events/batch", events)["accepted"] == 7
        wait_for(lambda: http_json(f"{syncing.base}/api/health")["sync"]["backlog"] == 7)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors = PageErrors(page)
        page.goto(f"{syncing.base}/#/health")
        expect(page.locator("#sync-backlog")).to_contain_text("7 events")
        expect(page.locator("#sync-state")).to_contain_text(dead_hub)
        expect(page.get_by_text("Last sync error")).to_be_visible()
        expect(page.locator("dl.kv", has_text="Sync to hub")).to_contain_text("cannot reach the hub")
        assert errors.errors == []
        context.close()
    finally:
        stop_edge(syncing)


def test_health_page_counts_the_helper_processes_in_the_edge_memory(tmp_path: Path, browser: Any) -> None:
    """A large batch starts a decode worker: the memory the operator sees includes it."""
    edge = start_edge(tmp_path / "data", env={"EDGEKITE_HTTP__DECODE_WORKERS": "1"})
    try:
        events = [
            {
                "source": {"type": "server", "id": "pos-1"},
                "event": {"category": "app", "type": "sale", "data": {"n": i}},
            }
            for i in range(1000)  # ~90 KB: over http.decode_process_min_bytes
        ]
        assert http_json(f"{edge.base}/api/events/batch", events)["accepted"] == 1000
        proc = http_json(f"{edge.base}/api/resources")["process"]
        kinds = sorted(h["kind"] for h in proc["helper_processes"])
        assert "decode_worker" in kinds, kinds
        assert proc["total_rss_bytes"] == proc["rss_bytes"] + sum(
            h["rss_bytes"] for h in proc["helper_processes"]
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors = PageErrors(page)
        page.goto(f"{edge.base}/#/health")
        memory = page.locator("dl.kv", has_text="Edge memory (RSS)")
        expect(memory).to_contain_text("decode worker")
        expect(memory).to_contain_text(re.compile(r"\(edge [\d.]+ MiB \+ "))
        assert errors.errors == []
        context.close()
    finally:
        stop_edge(edge)
