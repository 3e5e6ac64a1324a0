"""The edge→hub batch and ack format, shared by both ends and both transports.

A batch is one zstd frame holding one JSON document: a header (who sent it, which of the
edge's rows it covers) and the events as envelopes, exactly as the edge stores them. The same
bytes travel as an MQTT payload on ``ek/v1/hub/<edge_id>/batch`` or as the body of
``POST /api/ingest/batch``. Resending a batch resends the same ``batch_id``: the hub makes that a
no-op (insert deduplication token), so "at least once" on the wire is "once" in the counts.

Authenticity: with edge keys configured at the hub, a batch carries an HMAC-SHA256 of the
compressed bytes under the edge's key (MQTT 5 user property ``ek-sig``, HTTP header
``X-EK-Signature``; over HTTP the key in ``Authorization: Bearer`` is accepted as well), so
the hub can tell which edge sent it even behind a broker that enforces no ACL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Literal

import orjson
import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekite.envelope import EDGE_ID_PATTERN

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/vnd.edgekite.batch+zstd"
SIGNATURE_PROPERTY = "ek-sig"  # MQTT 5 user property
SIGNATURE_HEADER = "X-EK-Signature"  # HTTP
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$"
_BATCH_ID_RE = re.compile(BATCH_ID_PATTERN)

# Hard bounds whatever the configuration: a batch is never a way to exhaust hub memory.
MAX_BATCH_EVENTS = 20_000
MAX_COMPRESSED_BYTES = 16 * 1024**2
MAX_DECOMPRESSED_BYTES = 128 * 1024**2


class BatchHeader(BaseModel):
    """Everything in a batch document except ``events``."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    edge_id: str = Field(pattern=EDGE_ID_PATTERN)
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    first_seq: int = Field(ge=0, description="First edge row (rowid) the batch covers.")
    last_seq: int = Field(ge=0, description="Last edge row the batch covers (withheld rows included).")
    created_at: int = Field(ge=0, description="Unix ms at the edge when the batch was formed.")
    count: int = Field(ge=0, le=MAX_BATCH_EVENTS, description="Number of events in the batch.")
    backlog: int = Field(0, ge=0, description="Unsynced events at the edge when the batch was sent.")
    withheld: dict[str, int] = Field(
        default_factory=dict, description="Rows in [first_seq, last_seq] kept local, by reason."
    )


class RejectedEvent(BaseModel):
    index: int
    event_id: str | None = None
    code: str
    reason: str


class Ack(BaseModel):
    """The hub's answer for one batch, on ``ek/v1/hub/<edge_id>/ack`` or as the HTTP response.

    ``ok``: stored (``accepted`` events, plus ``rejected`` ones kept in the hub's dead-letter
    table); the edge marks the batch synced. ``retry``: not now (rate limit, storage down);
    send it again after ``retry_after_ms``. ``refused``: authentication or a malformed batch;
    the edge keeps the batch, reports ``reason`` and backs off.
    """

    model_config = ConfigDict(extra="ignore")

    v: int = PROTOCOL_VERSION
    edge_id: str
    batch_id: str
    status: Literal["ok", "retry", "refused"]
    accepted: int = 0
    duplicate: bool = Field(False, description="The hub had stored this batch id already.")
    rejected: list[RejectedEvent] = Field(default_factory=list)
    retry_after_ms: int | None = None
    reason: str | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))


class BatchError(ValueError):
    """A batch that cannot be read at all; ``code`` is a stable counter label."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def make_batch_id(store_id: str, first_seq: int, last_seq: int) -> str:
    """Deterministic per edge database: a rebuilt batch after a restart has the same id.

    ``store_id`` is minted when edge.db is created, so a wiped edge never reuses old ids.
    """
    return f"{store_id}:{first_seq}-{last_seq}"


def encode_batch(
    header: BatchHeader, events_json: list[bytes], *, level: int = 3, zstd_threads: int = 0
) -> bytes:
    """Assemble the document from already-serialised envelopes (no re-parse), then compress."""
    head = orjson.dumps(header.model_dump())
    doc = b"".join((head[:-1], b',"events":[', b",".join(events_json), b"]}"))
    return zstandard.ZstdCompressor(level=level, threads=zstd_threads).compress(doc)


def decompress_batch(payload: bytes) -> bytes:
    """The batch document's JSON, within the size bounds."""
    if len(payload) > MAX_COMPRESSED_BYTES:
        raise BatchError("too_large", f"{len(payload)} bytes compressed (max {MAX_COMPRESSED_BYTES})")
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(payload)
        raw: bytes = reader.read(MAX_DECOMPRESSED_BYTES + 1)
    except zstandard.ZstdError as exc:
        raise BatchError("bad_compression", f"not a zstd frame: {exc}") from exc
    if len(raw) > MAX_DECOMPRESSED_BYTES:
        raise BatchError("too_large", f"more than {MAX_DECOMPRESSED_BYTES} bytes decompressed")
    return raw


def decode_batch(payload: bytes) -> tuple[BatchHeader, list[Any]]:
    """Decompress and parse a batch; the envelopes are returned unvalidated (the caller's job)."""
    raw = decompress_batch(payload)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BatchError("invalid_json", str(exc)) from exc
    if type(doc) is not dict:
        raise BatchError("invalid_batch", "a batch is a JSON object")
    events = doc.pop("events", None)
    if type(events) is not list:
        raise BatchError("invalid_batch", "events: a JSON array is required")
    try:
        header = BatchHeader.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        raise BatchError("invalid_batch", f"{where}: {first['msg']}") from exc
    if len(events) != header.count:
        raise BatchError("invalid_batch", f"count says {header.count}, events holds {len(events)}")
    return header, events


def sign(key: str, payload: bytes) -> str:
    return hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()


def verify(key: str, payload: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(sign(key, payload), signature)


def valid_batch_id(batch_id: str) -> bool:
    return bool(_BATCH_ID_RE.match(batch_id))
