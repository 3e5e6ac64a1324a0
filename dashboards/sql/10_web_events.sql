-- Web events, enriched, one row per event_id (Guarantee 2: every count deduplicates by event_id).
--
-- events_enriched is a ReplacingMergeTree(enriched_at) whose sorting key and partition are
-- functions of the raw event only, so every copy of an event (the consumer's first pass, a
-- re-processing after a crash, a rerun) has the same key and FINAL keeps exactly the newest.
-- FINAL was measured against argMax(..., enriched_at) GROUP BY event_id and LIMIT 1 BY event_id
-- on chDB 26.9 with 10 M rows: see docs/metrics.md ("Deduplication: FINAL vs argMax").
CREATE OR REPLACE VIEW {db}.web_events AS
SELECT *
FROM {db}.events_enriched FINAL
WHERE category = 'web';
