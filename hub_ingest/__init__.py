"""Hub ingest: batches from edges (MQTT shared subscription or HTTP) into ClickHouse, then acks."""
