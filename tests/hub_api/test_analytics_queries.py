"""Checks of the analytics SQL builders' parts (the numbers themselves: test_analytics_api.py)."""

from __future__ import annotations

import pytest

from edgekite.hubstore import HubStore
from hub_api import analytics_queries as aq


@pytest.mark.parametrize(
    ("value", "prefiltered"),
    [
        ("cam-barn-01", True),
        ("site one.2_x", True),
        ("kamera-ü", False),  # json.dumps writes \\u00fc: a substring test could miss the row
        ('cam"1', False),
        ("cam\\1", False),
        ("cam/1", False),
        ("cam\t1", False),
    ],
)
def test_a_substring_prefilter_only_where_it_cannot_drop_a_row(value: str, prefiltered: bool) -> None:
    camera = aq._camera_is("source", value)
    site = aq._site_is(value)
    assert camera.endswith(f"{aq._CAMERA_EXPR} = {{source:String}}")
    assert site.endswith(f"{aq._SITE_EXPR} = {{site:String}}")
    assert ("position(data, {source:String})" in camera) is prefiltered
    assert ("position(data, {site:String})" in site) is prefiltered


def test_a_camera_filter_reads_the_incident_ids_only_for_correlated_detections() -> None:
    q = aq.IotQuery("edgekite", 0, 1, source="cam-1")
    sql, params = aq.incidents_sql(q, None, 50)
    assert params["source"] == "cam-1"
    uncorrelated = sql.split("ifNull(incident_id, '') = ''", 1)[1].split("LIMIT 1 BY event_id", 1)[0]
    assert "position(data, {source:String})" in uncorrelated
    assert "incident_id IN" not in uncorrelated


def test_the_site_expression_parses_only_where_the_key_occurs_and_answers_the_same(store: HubStore) -> None:
    """``_site_expr`` skips the JSON parse when the key's text is absent; on JSON the hub writes
    (orjson: letters never escaped) it answers what the plain ``JSONExtractString`` chain does."""
    import orjson

    plain = (
        "multiIf(JSONExtractString(d, 'site') != '', JSONExtractString(d, 'site'), "
        "JSONExtractString(m, 'site_id') != '', JSONExtractString(m, 'site_id'), s)"
    )
    docs = [
        ({"site": "barn"}, {"site_id": "farm"}),
        ({"label": "site"}, {"site_id": "farm"}),  # the word as a value: parsed, no key
        ({"x": {"site": "nested"}}, {}),  # only top-level keys count
        ({"site": ""}, {"site_id": "farm"}),
        ({"site": 5}, {}),
        ({}, {"note": "site_id"}),
        ({"site": "ünïcode"}, {"site_id": "farm"}),
    ]
    for data, meta in docs:
        params = {"d": orjson.dumps(data).decode(), "m": orjson.dumps(meta).decode(), "s": "src-1"}
        sql = f"""SELECT {aq._site_expr("d", "m", "s")}, {plain}
            FROM (SELECT {{d:String}} AS d, {{m:String}} AS m, {{s:String}} AS s)"""
        ((guarded, expected),) = store.query_rows(sql, params)
        assert guarded == expected, (data, meta)
