-- Fleet views over the raw events table, one row per event_id (LIMIT 1 BY event_id).

-- Events per edge per day. The day is the edge's receive day (received_at: the edge's clock, sane
-- where device clocks are not); observed_days counts distinct device days for comparison.
CREATE OR REPLACE VIEW {db}.fleet_events_daily AS
SELECT
    edge_id,
    toDate(received_at) AS day,
    toUInt64(count()) AS events,
    toUInt64(uniqExact(source_id)) AS sources,
    toUInt64(countIf(category = 'web')) AS web_events,
    toUInt64(countIf(category = 'iot')) AS iot_events,
    min(hub_received_at) AS first_hub_received_at,
    max(hub_received_at) AS last_hub_received_at
FROM
(
    SELECT edge_id, received_at, hub_received_at, source_id, category
    FROM {db}.events
    LIMIT 1 BY event_id
)
GROUP BY edge_id, day;

-- Sync lag = hub_received_at - observed_at (ms) per edge per day of hub receipt: how late the
-- hub learns of an event (device buffering + edge outbox + network + an edge offline for days).
-- quantilesExact, so small days are exact; negative lags are device clocks in the future.
CREATE OR REPLACE VIEW {db}.fleet_sync_lag_daily AS
SELECT
    edge_id,
    toDate(hub_received_at) AS day,
    toUInt64(count()) AS events,
    quantilesExact(0.5, 0.9, 0.95, 0.99)(lag_ms) AS q,
    q[1] AS lag_p50_ms,
    q[2] AS lag_p90_ms,
    q[3] AS lag_p95_ms,
    q[4] AS lag_p99_ms,
    max(lag_ms) AS lag_max_ms
FROM
(
    SELECT edge_id, hub_received_at,
        toUnixTimestamp64Milli(hub_received_at) - toUnixTimestamp64Milli(observed_at) AS lag_ms
    FROM {db}.events
    LIMIT 1 BY event_id
)
GROUP BY edge_id, day;

-- Last heartbeat per edge and source (type 'heartbeat', any category), with the last reported
-- vitals (the simulator's and the edge's heartbeat data: uptime_seconds, cpu/memory/disk_percent).
CREATE OR REPLACE VIEW {db}.fleet_heartbeats AS
SELECT
    edge_id,
    source_id,
    any(source_type) AS source_type,
    max(observed_at) AS last_heartbeat_at,
    max(hub_received_at) AS last_heartbeat_received_at,
    toUInt64(count()) AS heartbeats,
    argMax(JSONExtractUInt(data, 'uptime_seconds'), observed_at) AS uptime_seconds,
    argMax(JSONExtractFloat(data, 'cpu_percent'), observed_at) AS cpu_percent,
    argMax(JSONExtractFloat(data, 'memory_percent'), observed_at) AS memory_percent,
    argMax(JSONExtractFloat(data, 'disk_percent'), observed_at) AS disk_percent
FROM
(
    SELECT edge_id, source_id, source_type, observed_at, hub_received_at, data
    FROM {db}.events
    WHERE type = 'heartbeat'
    LIMIT 1 BY event_id
)
GROUP BY edge_id, source_id;
