"""The hub's analysts' dashboard in a real headless Chromium, against a real hub.

No mocks: ``edgekite hub`` runs as a child process (chDB, the enrichment consumer in-process),
simulator traffic from two edges arrives as real signed-off batches over the HTTP ingest route,
and Debian's ``chromium`` (driven by Playwright, which downloads no browser here) loads the
dashboard from the hub. Every number checked on screen is compared with the API's answer to the
very query the page made (the page keeps that query's URL in ``data-api``). A site whose name,
page path, referrer and UTM campaign hold HTML and script is fed in too: it must show as text.
"""

from __future__ import annotations

import csv
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import PageErrors, expect, needs_chromium, screenshot
from tests.browser import browser as browser  # the module-scoped fixture, used by name
from tests.conftest import HubProcess, wait_for
from tests.hub_ingest.helpers import batch, envelopes, http, metric, post_batch

API_KEY = "analyst-key-0123456789"
SIM_EVENTS = 700
XSS_SITE = 'xss"><img src=x onerror="window.__xss=1">'
XSS_PATH = '/<img src=x onerror="window.__xss=2">'
XSS_CAMPAIGN = "<script>window.__xss=3</script>"
XSS_REFERRER = 'https://evil.example/"><script>window.__xss=4</script>'

pytestmark = needs_chromium


def api(hub: HubProcess, path: str) -> Any:
    """GET a read-API path (as the page asked it, e.g. from a data-api attribute) with the key."""
    status, _, body = http("GET", f"{hub.http_url}{path}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200, (path, status, body)
    return body


def hostile_events() -> list[dict[str, Any]]:
    """Four page views of a site whose every visible string is markup, from four visitors."""
    views = [e for e in envelopes(60, seed=99) if e["event"]["type"] == "page_view"][:4]
    assert len(views) == 4
    for i, e in enumerate(views):
        data = e["event"]["data"]
        for k in ("utm_source", "utm_medium", "utm_campaign"):
            data.pop(k, None)
        data.update(
            site=XSS_SITE,
            url=f"{XSS_PATH}?utm_source=x&utm_campaign={urllib.parse.quote(XSS_CAMPAIGN)}",
            utm_source="x",
            utm_campaign=XSS_CAMPAIGN,
            referrer=XSS_REFERRER,
            title="<b>title</b>",
            ip=f"198.51.100.{200 + i}",
        )
    return views


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A hub (read API behind a key) with two edges' simulator traffic, enriched."""
    env = {"EDGEKITE_HUB_ENRICH__LAG_SECS": "0", "EDGEKITE_HUB_HTTP__API_KEY": API_KEY}
    h = HubProcess(tmp_path_factory.mktemp("hubdash") / "hub", env=env).start()
    try:
        events = envelopes(SIM_EVENTS, seed=21)
        first, second = events[:400], events[400:] + hostile_events()
        for edge, evs, backlog in (("farm-1", first, 0), ("farm-2", second, 7)):
            status, _, ack = post_batch(
                h.http_url, batch(edge, f"s:1-{len(evs)}", evs, backlog=backlog), edge=edge
            )
            assert status == 200 and ack["accepted"] == len(evs), ack
        total = len(first) + len(second)

        def enriched() -> float:
            return metric(api(h, "/metrics"), "edgekite_hub_events_enriched_total")

        wait_for(lambda: enriched() >= total, timeout=40)
        yield h
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.terminate()


def shot(page: Any, tmp_path: Path, name: str, full_page: bool = False) -> Path:
    return screenshot(page, tmp_path, name, prefix="edgekite-hub-dashboard", full_page=full_page)


# -- the dashboard's number formats (en-US), to compare the API's numbers with the screen ----------
def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_rate(fraction: float) -> str:
    return f"{fraction * 100:.1f} %"


def fmt_secs(secs: float) -> str:
    t = round(secs)
    if t < 60:
        return f"{t} s"
    if t < 3600:
        return f"{t // 60} min {t % 60:02d} s"
    return f"{t // 3600} h {(t % 3600) // 60:02d} min"


def page_query(locator: Any, must: Callable[[dict[str, str]], bool] = lambda q: True) -> str:
    """The API query an element was filled from (its data-api), once it is one that ``must`` accepts:
    right after a navigation the previous page may still be on screen for a moment."""

    def ready() -> str | None:
        url = locator.get_attribute("data-api")
        if not url:
            return None
        return url if must(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))) else None

    found: str = wait_for(ready, timeout=10)
    return found


def check_totals(
    page: Any, hub: HubProcess, must: Callable[[dict[str, str]], bool] = lambda q: True
) -> dict[str, Any]:
    """The Web page's totals equal the API's for the page's own query; that answer."""
    totals = page.locator("#web-totals")
    answer = api(hub, page_query(totals, must))
    assert answer["truth"] == "hub"
    t = answer["totals"]
    expected = {
        "visitors": fmt_int(t["visitors"]),
        "visits": fmt_int(t["visits"]),
        "pageviews": fmt_int(t["pageviews"]),
        "bounce_rate": fmt_rate(t["bounce_rate"]),
        "avg_duration_secs": fmt_secs(t["avg_duration_secs"]),
    }
    for name, text in expected.items():
        expect(totals.locator(f"[data-metric={name}] .counter-value")).to_have_text(text)
    return answer


def check_toplist(
    page: Any, hub: HubProcess, card: str, must: Callable[[dict[str, str]], bool] = lambda q: True
) -> list[dict[str, Any]]:
    body = page.locator(f"[data-card={card}] .section-body")
    answer = api(hub, page_query(body, must))
    rows = answer["rows"]
    assert rows, answer
    items = body.locator(".toplist li")
    expect(items).to_have_count(len(rows))
    second = "visits" if answer["dim"] in ("entry_page", "exit_page") else "pageviews"
    for i, row in enumerate(rows):
        li = items.nth(i)
        assert li.get_attribute("data-value") == row["value"]
        expect(li.locator("[data-col=visitors]")).to_have_text(fmt_int(row["visitors"]))
        expect(li.locator(f"[data-col={second}]")).to_have_text(fmt_int(row[second]))
    return list(rows)


def hash_params(page: Any) -> dict[str, str]:
    frag = urllib.parse.urlsplit(page.url).fragment
    return dict(urllib.parse.parse_qsl(frag.partition("?")[2]))


def test_hub_dashboard_end_to_end(hub: HubProcess, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = PageErrors(page)

    # -- the read API wants a key: the page asks for it once, then remembers it
    page.goto(f"{hub.http_url}/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")
    expect(dialog).to_be_hidden()
    assert page.evaluate("localStorage.getItem('edgekite.hubApiKey')") == API_KEY
    # Chromium logs the refused request itself; nothing else may have gone wrong.
    assert all("401 (Unauthorized)" in e for e in errors.errors), errors.errors
    errors.errors.clear()

    # -- every page says whose numbers these are, and how fresh
    fleet = api(hub, "/api/fleet")
    latest = api(hub, "/api/web/sites")["latest_event_ms"]
    expect(page.locator("#truth-banner")).to_contain_text("Hub analytical truth")
    expect(page.locator("#truth-latest")).to_have_attribute("data-ms", str(latest))

    # -- Fleet: one row per edge with the API's numbers; the chart stacks both edges
    table = page.locator("#fleet-table")
    expect(table.locator("tbody tr")).to_have_count(len(fleet["edges"]))
    for e in fleet["edges"]:
        row = table.locator(f"tr[data-edge={e['edge_id']}]")
        for col in ("events", "backlog_reported", "batches", "rejected"):
            expect(row.locator(f"[data-col={col}]")).to_have_text(fmt_int(e[col]))
    expect(table.locator("tr[data-edge=farm-2] [data-col=backlog_reported]")).to_have_text("7")
    expect(page.locator("#fleet-events-chart rect.ser-1").first).to_be_attached()
    expect(table.locator("td.lag").first).not_to_have_text("…")
    shot(page, tmp_path, "fleet", full_page=True)
    with page.expect_download() as download:
        page.locator("#fleet-csv a.csv").click()
    rows = list(csv.DictReader(Path(download.value.path()).read_text().splitlines()))
    expected_events = {e["edge_id"]: e["events"] for e in fleet["edges"]}
    assert {r["edge_id"]: int(r["events"]) for r in rows} == expected_events

    # -- per-edge drill-down, and back
    table.get_by_role("link", name="farm-2").click()
    page.wait_for_url(re.compile(r"#/edge\?edge_id=farm-2"))
    detail = api(hub, "/api/fleet/farm-2")
    farm2 = next(e for e in fleet["edges"] if e["edge_id"] == "farm-2")
    assert sum(d["events"] for d in detail["events_per_day"]) == farm2["events"]
    expect(page.locator("[data-counter=events] .counter-value")).to_have_text(fmt_int(farm2["events"]))
    expect(page.locator("#edge-sources tbody tr")).to_have_count(len(detail["sources"]))
    expect(page.locator("#edge-lag-table tbody tr").first).to_be_visible()
    page.go_back()
    page.wait_for_url(re.compile(r"#/fleet$"))
    expect(page.locator("#fleet-table tbody tr")).to_have_count(len(fleet["edges"]))

    # -- Web: the busiest site is picked; totals and a top list equal the API's
    page.get_by_role("link", name="Web", exact=True).click()
    page.wait_for_url(re.compile(r"#/web\?site="))
    sites = api(hub, "/api/web/sites")["sites"]
    assert hash_params(page)["site"] == sites[0]["site"]
    before = check_totals(page, hub)
    assert before["totals"]["pageviews"] > 0
    expect(page.locator("#web-chart .bar-main").first).to_be_attached()
    browsers = check_toplist(page, hub, "env")
    check_toplist(page, hub, "pages")
    shot(page, tmp_path, "web", full_page=True)
    # CSV export of a top list: behind the key, so the page fetches it with the key and saves it.
    with page.expect_download() as download:
        page.locator("[data-card=env] a.csv").click()
    assert download.value.suggested_filename.endswith(".csv")
    exported = list(csv.reader(Path(download.value.path()).read_text().splitlines()))
    assert exported[0] == ["value", "visitors", "pageviews"]
    assert [(r[0], int(r[1])) for r in exported[1:]] == [(b["value"], b["visitors"]) for b in browsers]

    # Clicking a row filters everything by it: URL, chip, and new numbers that match the API's.
    pick = browsers[-1]["value"] if len(browsers) > 1 else browsers[0]["value"]
    page.locator("[data-card=env] .toplist li").filter(has_text=pick).get_by_role("button").click()
    page.wait_for_url(re.compile(r"browser="))
    assert hash_params(page)["browser"] == pick
    expect(page.locator("#filter-chips [data-filter=browser]")).to_contain_text(pick)
    after = check_totals(page, hub, lambda q: q.get("browser") == pick)
    assert after["totals"]["visitors"] < before["totals"]["visitors"], (before, after)
    check_toplist(page, hub, "env", lambda q: q.get("browser") == pick)
    shot(page, tmp_path, "web-filtered")

    # The chip removes it again; the back button goes back to the filter.
    page.locator("#filter-chips [data-filter=browser] button").click()
    page.wait_for_url(lambda url: "browser=" not in url)
    expect(page.locator("#filter-chips")).to_be_hidden()
    expect(page.locator("#web-totals [data-metric=visitors] .counter-value")).to_have_text(
        fmt_int(before["totals"]["visitors"])
    )
    page.go_back()
    page.wait_for_url(re.compile(r"browser="))
    expect(page.locator("#filter-chips [data-filter=browser]")).to_be_visible()
    page.go_back()
    page.wait_for_url(lambda url: "browser=" not in url)

    # Include bots, and a date range: both land in the URL and in the page's query.
    page.check("#include-bots")
    page.wait_for_url(re.compile(r"include_bots=1"))
    with_bots = check_totals(page, hub, lambda q: q.get("include_bots") == "1")
    assert with_bots["totals"]["pageviews"] >= before["totals"]["pageviews"]
    page.select_option("#range", "24h")
    page.wait_for_url(re.compile(r"range=24h"))
    day = check_totals(page, hub, lambda q: int(q["to"]) - int(q["from"]) == 86_400_000)
    assert day["interval"] == "hour"

    # -- Funnels: two page steps picked in the form, bars with the API's numbers
    top_pages = api(hub, f"/api/web/top?dim=page&site={urllib.parse.quote(sites[0]['site'])}")["rows"]
    second_page = next(r["value"] for r in top_pages if r["value"] != "/")
    page.get_by_role("link", name="Funnels", exact=True).click()
    page.wait_for_url(re.compile(r"#/funnels\?site="))
    page.locator("#funnel-steps .step-value").nth(0).fill("/")
    page.locator("#funnel-steps .step-value").nth(1).fill(second_page)
    page.click("#funnel-run")
    page.wait_for_url(re.compile(r"steps="))
    bars = page.locator("#funnel-bars li")
    expect(bars).to_have_count(2)
    funnel = api(hub, page_query(page.locator("#funnel-result .section-body")))
    for i, step in enumerate(funnel["steps"]):
        expect(bars.nth(i).locator(".funnel-visitors")).to_have_text(fmt_int(step["visitors"]))
        expect(bars.nth(i).locator(".funnel-conv")).to_have_text(fmt_rate(step["conversion_rate"]))
    assert funnel["steps"][0]["step"] == "page:/" and funnel["steps"][0]["visitors"] > 0
    shot(page, tmp_path, "funnel")

    # -- Cohorts: one grid row per cohort, week 0 is the whole cohort
    page.get_by_role("link", name="Cohorts", exact=True).click()
    grid = page.locator("#cohort-grid")
    expect(grid.locator("tbody tr").first).to_be_visible()
    cohorts = api(hub, page_query(page.locator("#cohorts .section-body")))["cohorts"]
    expect(grid.locator("tbody tr")).to_have_count(len(cohorts))
    expect(grid.locator("tbody tr").last.locator("td.heat").first).to_have_text("100.0 %")

    # -- IoT: per-camera detections equal the API's rows summed per camera; sensors charted
    page.get_by_role("link", name="IoT", exact=True).click()
    cams = page.locator("#iot-cameras tbody tr")
    expect(cams.first).to_be_visible()
    det = api(hub, page_query(page.locator("#iot-detections .section-body")))
    per_cam: dict[str, int] = {}
    for r in det["rows"]:
        per_cam[r["camera_id"]] = per_cam.get(r["camera_id"], 0) + r["detections"]
    expect(cams).to_have_count(len(per_cam))
    shown = {}
    for i in range(cams.count()):
        cells = cams.nth(i)
        camera = cells.locator("[data-col=camera_id]").inner_text()
        shown[camera] = cells.locator("[data-col=detections]").inner_text()
    assert shown == {k: fmt_int(v) for k, v in per_cam.items()}
    expect(page.locator("#iot-incidents-table tbody tr").first).to_be_visible()
    expect(page.locator("#iot-sensors .small-chart").first).to_be_visible()
    shot(page, tmp_path, "iot", full_page=True)

    # -- hostile strings: the site, its page path, referrer and campaign show as text, never run
    page.goto(f"{hub.http_url}/#/web?{urllib.parse.urlencode({'site': XSS_SITE, 'tab_utm': 'utm_campaign'})}")
    expect(page.locator("#site")).to_have_value(XSS_SITE)
    pages = page.locator("[data-card=pages] .toplist")
    expect(pages).to_contain_text(XSS_PATH)
    expect(page.locator("[data-card=utm] .toplist")).to_contain_text(XSS_CAMPAIGN)
    pages.get_by_role("button", name=XSS_PATH).click()
    page.wait_for_url(re.compile(r"path="))
    expect(page.locator("#filter-chips [data-filter=path]")).to_contain_text(XSS_PATH)
    assert page.locator("#main img, script:not([src])").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    shot(page, tmp_path, "hostile")

    assert errors.errors == []
    context.close()


def test_hub_dashboard_on_a_phone(hub: HubProcess, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="en-US",
    )
    context.add_init_script(f"localStorage.setItem('edgekite.hubApiKey', {json.dumps(API_KEY)})")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = PageErrors(page)
    page.goto(f"{hub.http_url}/#/web")
    expect(page.locator("#web-totals [data-metric=visitors]")).to_be_visible()
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, tmp_path, "phone-web", full_page=True)
    page.click("#nav-toggle")
    page.get_by_role("link", name="Fleet", exact=True).click()
    expect(page.locator("#fleet-table tbody tr").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(page.locator("#nav")).to_be_hidden()  # the menu folds away after a choice
    shot(page, tmp_path, "phone-fleet", full_page=True)
    assert errors.errors == []
    context.close()


def test_dashboard_files_are_public_and_the_data_is_not(hub: HubProcess) -> None:
    status, headers, body = http("GET", f"{hub.http_url}/")
    assert status == 200 and "<main" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, headers, _ = http("GET", f"{hub.http_url}/static/app.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert http("GET", f"{hub.http_url}/static/..%2Fdashboard.py")[0] == 404
    assert http("GET", f"{hub.http_url}/static/nothing.js")[0] == 404
    status, _, body = http("GET", f"{hub.http_url}/api/web/overview")
    assert status == 401 and body["error"]["code"] == "unauthorized"
