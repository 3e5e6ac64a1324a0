-- Visits (Umami's definitions, docs/metrics.md): one visitor's web events on one site, ordered by
-- observed_at, start a new visit after a gap of more than 30 minutes (a gap of exactly 30 minutes
-- stays in the visit). Sessions are per (site, visitor_id, is_bot): bot and human traffic never
-- share a visit. Events without a visitor id (visitor_id = 0) form no visits.
--
-- new_visit: 1 when the gap to the previous event of the same visitor exceeds 30 min (the first
-- event's lagInFrame default is 0, i.e. 1970: always a new visit); visit_no: the running sum.
-- The visit's attributes (entry page, referrer, channel, UTM, country, browser, ...) are the
-- first page view's (first event's if the visit has no page view): Umami's landing-page rule.
CREATE OR REPLACE VIEW {db}.web_visits AS
SELECT
    site,
    visitor_id,
    is_bot,
    visit_no,
    cityHash64(site, visitor_id, is_bot, visit_no) AS visit_id,
    min(observed_at) AS visit_start,
    max(observed_at) AS visit_end,
    toUInt32(intDiv(max(t_ms) - min(t_ms), 1000)) AS duration,
    toUInt32(countIf(type = 'page_view')) AS pageviews,
    toUInt32(count()) AS events,
    argMinIf(url_path, (t_ms, event_id), type = 'page_view') AS entry_path,
    argMaxIf(url_path, (t_ms, event_id), type = 'page_view') AS exit_path,
    argMin(url_host, (type != 'page_view', t_ms, event_id)) AS url_host,
    argMin(country, (type != 'page_view', t_ms, event_id)) AS country,
    argMin(region, (type != 'page_view', t_ms, event_id)) AS region,
    argMin(city, (type != 'page_view', t_ms, event_id)) AS city,
    argMin(browser, (type != 'page_view', t_ms, event_id)) AS browser,
    argMin(os, (type != 'page_view', t_ms, event_id)) AS os,
    argMin(device_type, (type != 'page_view', t_ms, event_id)) AS device_type,
    argMin(channel, (type != 'page_view', t_ms, event_id)) AS channel,
    argMin(referrer_host, (type != 'page_view', t_ms, event_id)) AS referrer_host,
    argMin(referrer_source, (type != 'page_view', t_ms, event_id)) AS referrer_source,
    argMin(utm_source, (type != 'page_view', t_ms, event_id)) AS utm_source,
    argMin(utm_medium, (type != 'page_view', t_ms, event_id)) AS utm_medium,
    argMin(utm_campaign, (type != 'page_view', t_ms, event_id)) AS utm_campaign,
    argMin(utm_term, (type != 'page_view', t_ms, event_id)) AS utm_term,
    argMin(utm_content, (type != 'page_view', t_ms, event_id)) AS utm_content,
    any(edge_id) AS edge_id
FROM
(
    SELECT
        *,
        sum(new_visit) OVER (
            PARTITION BY site, visitor_id, is_bot ORDER BY t_ms, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS visit_no
    FROM
    (
        SELECT
            site, visitor_id, is_bot, event_id, edge_id, type, url_host, url_path, country, region, city,
            browser, os, device_type, channel, referrer_host, referrer_source,
            utm_source, utm_medium, utm_campaign, utm_term, utm_content,
            observed_at,
            toUnixTimestamp64Milli(observed_at) AS t_ms,
            toUInt32(t_ms - lagInFrame(t_ms, 1, toInt64(0)) OVER (
                PARTITION BY site, visitor_id, is_bot ORDER BY t_ms, event_id
                ROWS BETWEEN 1 PRECEDING AND CURRENT ROW
            ) > 1800000) AS new_visit
        FROM {db}.web_events
        WHERE visitor_id != 0
    )
)
GROUP BY site, visitor_id, is_bot, visit_no;
