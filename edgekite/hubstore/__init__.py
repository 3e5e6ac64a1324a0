"""The hub's ClickHouse storage, shared by every hub service (ingest, API, enrichment).

One DDL and one set of SQL for both backends: embedded chDB (the default) and a ClickHouse
server through clickhouse-connect.
"""

from edgekite.hubstore.backend import HubStore, StorageError, StoreLockedError

__all__ = ["HubStore", "StorageError", "StoreLockedError"]
