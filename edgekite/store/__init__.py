"""The edge's SQLite store: schema, the single writer, and its upkeep."""

from edgekite.store.writer import EdgeStore, IngestResult, WriteItem, message_fingerprint

__all__ = ["EdgeStore", "IngestResult", "WriteItem", "message_fingerprint"]
