-- IoT views over the raw events table (the enrichment leaves IoT payloads alone), each reading
-- one row per event_id (LIMIT 1 BY event_id: the hub's rule for the raw table, schema.py).
--
-- Fields read from data (the simulator's payloads, edgekite/simulate.py, and the seeds' camera
-- events): detections (category 'iot', type '<label>_detected'): camera_id (else source_id),
-- label (else the type's prefix), confidence (0..1), zone; correlation.incident_id is the column
-- incident_id. Sensor readings (type 'sensor_reading'): metric, value, unit.
-- site: the stored column (data.site, else source_metadata.site_id, else source_id: the enricher's
-- rule, written at ingest).

-- Detections per camera per hour, with confidence.
CREATE OR REPLACE VIEW {db}.iot_detections_hourly AS
SELECT
    toStartOfHour(observed_at) AS hour,
    site,
    edge_id,
    camera_id,
    label,
    toUInt64(count()) AS detections,
    avg(confidence) AS avg_confidence,
    max(confidence) AS max_confidence,
    toUInt64(uniqExactIf(incident_id, incident_id != '')) AS incidents
FROM
(
    SELECT
        observed_at,
        edge_id,
        site,
        if(JSONExtractString(data, 'camera_id') != '', JSONExtractString(data, 'camera_id'), source_id) AS camera_id,
        if(JSONExtractString(data, 'label') != '', JSONExtractString(data, 'label'),
           replaceRegexpOne(type, '_detected$', '')) AS label,
        JSONExtractFloat(data, 'confidence') AS confidence,
        ifNull(incident_id, '') AS incident_id
    FROM {db}.events
    WHERE category = 'iot' AND endsWith(type, '_detected')
    LIMIT 1 BY event_id
)
GROUP BY hour, site, edge_id, camera_id, label;

-- Incidents across cameras and edges: detections sharing correlation.incident_id are one
-- incident wherever they were seen; detections without one are grouped per camera into runs of
-- consecutive detections at most 60 s apart (incident_key 'camera_id#n'). Its site is its first
-- detection's (by observed_at, then event_id).
CREATE OR REPLACE VIEW {db}.iot_incidents AS
SELECT
    incident_key,
    argMin(site, (t_ms, event_id)) AS site,
    min(observed_at) AS first_seen,
    max(observed_at) AS last_seen,
    toUInt32(intDiv(max(t_ms) - min(t_ms), 1000)) AS duration,
    toUInt64(count()) AS detections,
    arraySort(groupUniqArray(camera_id)) AS cameras,
    arraySort(groupUniqArray(edge_id)) AS edges,
    arraySort(groupUniqArray(label)) AS labels,
    max(confidence) AS max_confidence,
    avg(confidence) AS avg_confidence,
    max(incident_id != '') AS correlated
FROM
(
    SELECT
        *,
        if(incident_id != '', incident_id,
           concat(camera_id, '#', toString(sum(new_run) OVER (
               PARTITION BY camera_id, incident_id = '' ORDER BY t_ms, event_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)))) AS incident_key
    FROM
    (
        SELECT
            *,
            toUInt32(t_ms - lagInFrame(t_ms, 1, toInt64(0)) OVER (
                PARTITION BY camera_id, incident_id = '' ORDER BY t_ms, event_id
                ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) > 60000) AS new_run
        FROM
        (
            SELECT
                event_id,
                observed_at,
                toUnixTimestamp64Milli(observed_at) AS t_ms,
                edge_id,
                site,
                if(JSONExtractString(data, 'camera_id') != '', JSONExtractString(data, 'camera_id'), source_id)
                    AS camera_id,
                if(JSONExtractString(data, 'label') != '', JSONExtractString(data, 'label'),
                   replaceRegexpOne(type, '_detected$', '')) AS label,
                JSONExtractFloat(data, 'confidence') AS confidence,
                ifNull(incident_id, '') AS incident_id
            FROM {db}.events
            WHERE category = 'iot' AND endsWith(type, '_detected')
            LIMIT 1 BY event_id
        )
    )
)
GROUP BY incident_key;

-- Sensor readings: min/avg/max per hour, per source and metric.
CREATE OR REPLACE VIEW {db}.iot_sensors_hourly AS
SELECT
    toStartOfHour(observed_at) AS hour,
    site,
    edge_id,
    source_id,
    metric,
    any(unit) AS unit,
    toUInt64(count()) AS readings,
    min(value) AS min_value,
    avg(value) AS avg_value,
    max(value) AS max_value,
    toUInt64(countIf(severity IN ('warn', 'error', 'critical'))) AS out_of_range
FROM
(
    SELECT
        observed_at,
        edge_id,
        source_id,
        severity,
        site,
        JSONExtractString(data, 'metric') AS metric,
        JSONExtractString(data, 'unit') AS unit,
        JSONExtractFloat(data, 'value') AS value
    FROM {db}.events
    WHERE category = 'iot' AND type = 'sensor_reading' AND JSONHas(data, 'value')
    LIMIT 1 BY event_id
)
GROUP BY hour, site, edge_id, source_id, metric;

-- Error rates per source per hour (every category): an error is an event of type 'error' or of
-- severity error/critical; error_rate = errors / events of that source in that hour.
CREATE OR REPLACE VIEW {db}.source_errors_hourly AS
SELECT
    toStartOfHour(observed_at) AS hour,
    edge_id,
    source_id,
    any(source_type) AS source_type,
    toUInt64(count()) AS events,
    toUInt64(countIf(is_error)) AS errors,
    toUInt64(countIf(is_error AND severity = 'critical')) AS critical,
    errors / events AS error_rate
FROM
(
    SELECT observed_at, edge_id, source_id, source_type, severity,
        type = 'error' OR severity IN ('error', 'critical') AS is_error
    FROM {db}.events
    LIMIT 1 BY event_id
)
GROUP BY hour, edge_id, source_id;
