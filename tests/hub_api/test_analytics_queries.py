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
def test_a_camera_prefilter_only_where_it_cannot_drop_a_row(value: str, prefiltered: bool) -> None:
    camera = aq._camera_is("source", value)
    assert camera.endswith(f"{aq._CAMERA_EXPR} = {{source:String}}")
    assert ("position(data, {source:String})" in camera) is prefiltered


def test_a_camera_filter_reads_the_incident_ids_only_for_correlated_detections() -> None:
    q = aq.IotQuery("edgekite", 0, 1, source="cam-1")
    sql, params = aq.incidents_sql(q, None, 50)
    assert params["source"] == "cam-1"
    uncorrelated = sql.split("ifNull(incident_id, '') = ''", 1)[1].split("LIMIT 1 BY event_id", 1)[0]
    assert "position(data, {source:String})" in uncorrelated
    assert "incident_id IN" not in uncorrelated


def test_the_site_expression_parses_only_where_the_key_occurs_and_answers_the_same(store: HubStore) -> None:
    """``site_sql`` (the stored column's default) skips the JSON parse when the key's text is
    absent; on JSON the hub writes (orjson: letters never escaped) it answers what the plain
    ``JSONExtractString`` chain does, and what ingest stores (``site_of``) for string sites."""
    import orjson

    from edgekite.hubstore.schema import site_sql
    from edgekite.visitor import site_of

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
        sql = f"""SELECT {site_sql("d", "m", "s")}, {plain}
            FROM (SELECT {{d:String}} AS d, {{m:String}} AS m, {{s:String}} AS s)"""
        ((guarded, expected),) = store.query_rows(sql, params)
        assert guarded == expected, (data, meta)
        if not isinstance(data.get("site"), int):  # site_of takes strings only; JSON would say "5"
            assert site_of(data, meta, "src-1") == guarded, (data, meta)
