-- The web overview per site and UTC day (Umami's numbers, docs/metrics.md).
--   pageviews, visitors: page views and distinct visitor ids of events observed that day;
--   visits, bounces, total_duration: of the visits that *started* that day (a visit across
--   midnight counts once). bounce rate = bounces / visits, average duration = total_duration / visits.
-- web_daily leaves bot traffic out (the default everywhere); web_daily_all keeps it (include_bots).
CREATE OR REPLACE VIEW {db}.web_daily AS
SELECT
    e.site AS site,
    e.day AS day,
    e.pageviews AS pageviews,
    e.visitors AS visitors,
    v.visits AS visits,
    v.bounces AS bounces,
    v.total_duration AS total_duration
FROM
(
    SELECT site, toDate(observed_at) AS day,
        toUInt64(countIf(type = 'page_view')) AS pageviews,
        toUInt64(uniqExactIf(visitor_id, visitor_id != 0)) AS visitors
    FROM {db}.web_events
    WHERE is_bot = 0
    GROUP BY site, day
) AS e
LEFT JOIN
(
    SELECT site, toDate(visit_start) AS day,
        toUInt64(count()) AS visits,
        toUInt64(countIf(pageviews = 1)) AS bounces,
        toUInt64(sum(duration)) AS total_duration
    FROM {db}.web_visits
    WHERE is_bot = 0
    GROUP BY site, day
) AS v
ON e.site = v.site AND e.day = v.day;

CREATE OR REPLACE VIEW {db}.web_daily_all AS
SELECT
    e.site AS site,
    e.day AS day,
    e.pageviews AS pageviews,
    e.visitors AS visitors,
    v.visits AS visits,
    v.bounces AS bounces,
    v.total_duration AS total_duration
FROM
(
    SELECT site, toDate(observed_at) AS day,
        toUInt64(countIf(type = 'page_view')) AS pageviews,
        toUInt64(uniqExactIf(visitor_id, visitor_id != 0)) AS visitors
    FROM {db}.web_events
    GROUP BY site, day
) AS e
LEFT JOIN
(
    SELECT site, toDate(visit_start) AS day,
        toUInt64(count()) AS visits,
        toUInt64(countIf(pageviews = 1)) AS bounces,
        toUInt64(sum(duration)) AS total_duration
    FROM {db}.web_visits
    GROUP BY site, day
) AS v
ON e.site = v.site AND e.day = v.day;
