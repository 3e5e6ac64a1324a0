"""One typed configuration tree for every EdgeKite service.

Loaded from a TOML file, then overridden by ``EDGEKITE_*`` environment variables
(``EDGEKITE_MQTT__URL=mqtt://broker:1883`` sets ``mqtt.url``; ``__`` separates levels),
then by command-line flags. The resulting object is passed down explicitly; nothing reads
configuration from globals.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgekite.envelope import EDGE_ID_PATTERN

ENV_PREFIX = "EDGEKITE_"
HUB_ENV_PREFIX = "EDGEKITE_HUB_"  # the hub's own variables; the edge ignores them


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


C = TypeVar("C", bound=_Section)


class EdgeSection(_Section):
    edge_id: str = Field(
        "edge-1", pattern=EDGE_ID_PATTERN, description="This edge's name in the fleet; used in hub topics."
    )
    data_dir: Path = Field(Path("./data"), description="Where edge.db and its WAL live.")


class MqttSection(_Section):
    url: str = Field(
        "",
        description="Broker the bridge subscribes to, mqtt://host:port or mqtts://host:port. "
        "Empty: start the embedded amqtt broker in-process.",
    )
    embedded_host: str = Field("0.0.0.0", description="Interface the embedded broker listens on.")
    embedded_port: int = Field(1883, ge=0, le=65535, description="Port of the embedded broker (0: any).")
    embedded_password_file: Path | None = Field(
        None, description="amqtt password file; when set, anonymous devices are refused."
    )
    embedded_max_in_flight: int = Field(
        250,
        ge=1,
        description="Messages the embedded broker holds waiting for their commit, over all devices; "
        "beyond that it stops reading and TCP holds the rest. Measured under eight publishers of "
        "1,000 in flight each (peak RSS, events/s): unbounded 138-142 MB at 2,361-2,682; 1000: "
        "86-87 MB at 3,620-3,866; 250: 79 MB at 3,237-4,043; 100: 76.5 MB at 2,632-3,409.",
    )
    client_id: str = Field(
        "",
        description="Bridge client id; stable so the broker keeps its session. Default: edgekite-<edge_id>.",
    )
    username: str | None = None
    password: str | None = None
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version; auto = 5 for an external broker (Receive Maximum), 3.1.1 embedded."
    )
    ca_file: Path | None = Field(None, description="CA bundle for mqtts://; system CAs when unset.")
    session_expiry_secs: int = Field(
        7 * 86400, ge=0, description="How long the broker keeps the bridge's queue while it is away."
    )
    receive_maximum: int = Field(
        2000, ge=1, le=65535, description="Unacknowledged QoS 1 messages the broker may have in flight to us."
    )
    keepalive_secs: int = Field(30, ge=5, le=3600)
    connect_wait_secs: float = Field(
        10, ge=0, description="How long start-up waits for the broker subscription before going on."
    )
    topics: list[str] = Field(
        default_factory=lambda: ["ek/v1/+/events"],
        description="Envelope topics; the 3rd level is the source id.",
    )
    source_id_must_match_topic: bool = Field(
        True,
        description="Refuse an envelope whose source.id differs from the topic's, so a device "
        "authorised for ek/v1/X/ cannot speak for Y.",
    )
    bridge_process: bool | Literal["auto"] = Field(
        "auto",
        description="With an external broker, receive and validate in a child process, so MQTT "
        "handling and SQLite writes use two cores instead of sharing one (about 2x the rate on a "
        "2-core box, for about 25 MB more memory). False: one process, a thread for each. auto: "
        "the child when this process may use 2 or more CPUs (affinity and cgroup quota).",
    )


class TopicMapping(_Section):
    """Maps a foreign topic (an existing camera system, a sensor gateway) to envelopes."""

    filter: str = Field(description="MQTT topic filter, e.g. frigate/events.")
    source_type: Literal["browser", "edge_device", "server", "mobile"] = "edge_device"
    source_id: str = Field(
        "{topic[0]}",
        description="Template: {topic[i]} is a topic level, {field.path} a payload field.",
    )
    category: Literal["web", "iot", "app", "ops", "security"] = "iot"
    type: str = Field("{topic[-1]}", description="Template for event.type, e.g. '{after.label}_detected'.")
    severity: Literal["debug", "info", "warn", "error", "critical"] = "info"
    event_id: str | None = Field(
        None,
        description="Template of the producer's own id for this event (e.g. '{after.id}:{type}'); "
        "hashed to a stable event_id so the producer's retries deduplicate.",
    )
    observed_at_field: str | None = Field(None, description="Payload field with the observation time.")
    observed_at_unit: Literal["ms", "s"] = Field("ms", description="Unit of a numeric observed_at_field.")


class HttpSection(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    api_key: str | None = Field(
        None, description="When set, every /api and /metrics request needs it (Bearer or X-API-Key)."
    )
    ingest_auth: Literal["open", "lan", "all"] = Field(
        "open",
        description="With api_key set, whether POST /api/events(/batch) needs it: 'open' never (browsers "
        "running the tracker hold no secret), 'lan' from non-loopback senders, 'all' always.",
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to POST events from a browser; [] for none.",
    )
    max_body_bytes: int = Field(
        2 * 1024**2, ge=1024, description="Largest HTTP request body (a full 1,000-event batch fits)."
    )
    tracker_respect_dnt: bool = Field(True, description="The tracker sends nothing when Do-Not-Track is on.")
    record_client_ip: bool = Field(
        True, description="Add the sender's address as data.ip to web events lacking one (marked pii)."
    )
    max_sse_clients: int = Field(32, ge=1)
    decode_workers: Annotated[int, Field(ge=0, le=16)] | Literal["auto"] = Field(
        "auto",
        description="Worker processes that decode large ingest bodies, so validation runs beside "
        "the SQLite writer instead of taking turns with it (about 2x the batch rate on 2 cores). "
        "Started on demand (~40 MB RSS each, measured 38.5); 0 decodes everything in the edge process. "
        "Measured on 2 cores: one worker (~16 us/event) keeps up with the writer; a second added "
        "nothing (26,160 vs 25,451 events/s) and cost 47 MB. auto: 1 when this process may use 2 "
        "or more CPUs, else 0.",
    )
    decode_process_min_bytes: int = Field(
        32 * 1024,
        ge=0,
        description="Bodies at least this large go to the decode worker; smaller ones are decoded in place.",
    )


class RollupsSection(_Section):
    incident_gap_secs: float = Field(60, gt=0, description="Detections closer than this form one incident.")
    hll_lg_k: int = Field(12, ge=8, le=16, description="HyperLogLog precision: 2^k buckets (12 ~ 1.6 %).")


class HealthSection(_Section):
    stale_after_secs: float = Field(300, gt=0, description="A source silent this long is stale.")


class LimitsSection(_Section):
    max_message_bytes: int = Field(256 * 1024, ge=1024, description="Largest MQTT message or HTTP body.")
    max_events_per_message: int = Field(1000, ge=1)
    max_depth: int = Field(16, ge=2, le=200, description="Deepest JSON nesting accepted inside an envelope.")
    max_string_chars: int = Field(8192, ge=64, description="Longest string anywhere in an envelope.")
    max_keys: int = Field(256, ge=8, description="Most keys in any one JSON object.")
    max_future_skew_secs: int = Field(300, ge=0, description="observed_at later than now+this is flagged.")
    max_past_age_days: int = Field(365, ge=1, description="observed_at older than this is flagged.")
    dead_letter_max_bytes: int = Field(4096, ge=0, description="How much of a rejected payload is kept.")


class RetentionSection(_Section):
    short_days: float = Field(7, gt=0)
    standard_days: float = Field(30, gt=0)
    long_days: float = Field(365, gt=0)
    dead_letter_days: float = Field(14, gt=0)
    max_db_bytes: int = Field(
        8 * 1024**3, ge=1024**2, description="Size cap of live data; the oldest events go first."
    )
    interval_secs: float = Field(30, gt=0, description="How often retention runs (in small chunks).")
    chunk_rows: int = Field(5000, ge=100, description="Rows deleted per transaction, so ingest never stalls.")

    def days_for(self, retention_class: str) -> float:
        return float(getattr(self, f"{retention_class}_days"))


class StoreSection(_Section):
    batch_max_events: int = Field(2000, ge=1, description="Most events in one transaction.")
    batch_max_wait_ms: float = Field(
        5, ge=0, description="How long the writer waits to fill a batch once it has something."
    )
    queue_max_messages: int = Field(
        4000, ge=10, description="Items in the ingest queue: a message, a group of messages or an HTTP batch."
    )
    queue_max_bytes: Annotated[int, Field(ge=1024**2)] | Literal["auto"] = Field(
        "auto",
        description="Memory bound of the ingest queue (payload bytes; Python holds ~2.5x that). This, "
        "not the MQTT Receive Maximum, bounds memory: Mosquitto 2.0 sends past Receive Maximum once "
        "PUBACKs flow (mosquitto#2301). Measured: 16 MB stored no faster and peaked 16 MB higher. "
        "auto: 4 MiB, but 1 MiB when the MQTT bridge runs in the edge process (mqtt.bridge_process): "
        "there paho and the writer take turns on one GIL, a deeper queue only holds more rows "
        "(measured on one CPU: peak 86.9 -> 77.2 MB, the same ~8,400 events/s).",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL", description="FULL survives power loss for committed data; NORMAL only process crashes."
    )
    wal_max_bytes: int = Field(64 * 1024**2, ge=1024**2, description="WAL is checkpointed back under this.")
    background_checkpoint: bool = Field(
        True,
        description="Copy the WAL back into edge.db on a thread of its own instead of inside the writer's "
        "commits. Measured with random ids on a 1.2M-event store: the writer x1.11, HTTP ingest x1.10-1.25.",
    )
    cache_mb: int = Field(
        4, ge=1, description="SQLite page cache per connection; measured: 16 MB bought no ingest speed."
    )
    compress: bool = Field(True, description="zstd-compress JSON columns with a dictionary trained here.")
    compress_train_events: int = Field(
        5000, ge=100, description="Events stored before the dictionary is trained from them."
    )
    fingerprint_hours: float = Field(
        24, gt=0, description="How long redelivery fingerprints of id-less messages are kept."
    )

    def ingest_queue_bytes(self, bridge_in_edge_process: bool) -> int:
        """``queue_max_bytes`` resolved; auto depends on where the MQTT bridge runs."""
        if self.queue_max_bytes != "auto":
            return self.queue_max_bytes
        return 1024**2 if bridge_in_edge_process else 4 * 1024**2


class SyncSection(_Section):
    """Forwarding to the hub. Off unless ``hub_mqtt_url`` or ``hub_url`` is set."""

    hub_mqtt_url: str = Field(
        "", description="Hub broker, mqtt://HOST:PORT or mqtts://HOST:PORT (MQTT 5, e.g. Mosquitto)."
    )
    hub_url: str = Field(
        "", description="Hub HTTP base URL (http(s)://HOST:PORT) for sites where MQTT out is blocked."
    )
    api_key: str | None = Field(
        None,
        description="This edge's key at the hub: signs every batch (HMAC) and is the HTTP Bearer token.",
    )
    username: str | None = Field(None, description="Hub broker username (per-edge credentials).")
    password: str | None = None
    ca_file: Path | None = Field(
        None, description="CA bundle for mqtts:// or https://; system CAs when unset."
    )
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for the hub broker.")
    key_file: Path | None = Field(None, description="Key of the client certificate.")
    client_id: str = Field(
        "", description="MQTT client id at the hub broker. Default: edgekite-sync-<edge_id>."
    )
    batch_max_events: int = Field(2000, ge=1, le=20_000)
    batch_max_bytes: int = Field(
        1024**2, ge=4096, le=64 * 1024**2, description="Uncompressed JSON bytes per batch."
    )
    batch_max_age_ms: float = Field(
        500, ge=0, description="A partial batch waits this long for more events before it is sent."
    )
    max_in_flight: int = Field(4, ge=1, le=64, description="Batches sent and not yet acknowledged.")
    ack_timeout_secs: float = Field(30, gt=0, description="A batch unacknowledged this long is sent again.")
    backoff_initial_secs: float = Field(1, gt=0)
    backoff_max_secs: float = Field(300, gt=0)
    heartbeat_secs: float = Field(
        30, gt=0, description="With nothing to send, an empty batch reports backlog and liveness this often."
    )
    compress_level: int = Field(3, ge=1, le=19)
    pii: Literal["send", "hash", "drop", "local"] = Field(
        "send",
        description="Events with privacy.pii: sent as they are, with pii_fields hashed (keyed) or "
        "dropped, or kept on the edge. 'send' lets the hub geolocate and then drop IPs itself.",
    )
    pii_fields: list[str] = Field(
        default_factory=lambda: ["ip", "email", "user_id", "phone"],
        description="event.data fields that 'hash' and 'drop' apply to (top level or dotted paths).",
    )
    pii_hash_key: str | None = Field(
        None, description="Key of the keyed hash; default: a random key kept in edge.db, never sent."
    )
    short_retention: Literal["send", "local"] = Field(
        "send", description="Whether retention_class 'short' events leave the site."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.hub_mqtt_url or self.hub_url)


class LogSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class EdgeConfig(_Section):
    edge: EdgeSection = Field(default_factory=EdgeSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    http: HttpSection = Field(default_factory=HttpSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    store: StoreSection = Field(default_factory=StoreSection)
    log: LogSection = Field(default_factory=LogSection)
    rollups: RollupsSection = Field(default_factory=RollupsSection)
    health: HealthSection = Field(default_factory=HealthSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    mappings: list[TopicMapping] = Field(default_factory=list)

    @field_validator("mappings")
    @classmethod
    def _no_overlap_with_envelope_topics(cls, v: list[TopicMapping]) -> list[TopicMapping]:
        filters = [m.filter for m in v]
        if len(set(filters)) != len(filters):
            raise ValueError("two mappings share a topic filter")
        return v

    @model_validator(mode="after")
    def _client_id_default(self) -> EdgeConfig:
        if not self.mqtt.client_id:
            self.mqtt.client_id = f"edgekite-{self.edge.edge_id}"
        if not self.sync.client_id:
            self.sync.client_id = f"edgekite-sync-{self.edge.edge_id}"
        if self.sync.hub_mqtt_url and self.sync.hub_url:
            raise ValueError("sync: set hub_mqtt_url or hub_url, not both")
        return self

    @property
    def db_path(self) -> Path:
        return self.edge.data_dir / "edge.db"


def env_overrides(environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """Turn ``EDGEKITE_A__B=v`` variables into a nested dict ``{"a": {"b": v}}``.

    Values that parse as JSON (numbers, booleans, lists) are taken as such, so
    ``EDGEKITE_STORE__BATCH_MAX_EVENTS=500`` is an int; anything else stays a string.
    """
    out: dict[str, Any] = {}
    skip = (prefix + "TEST_",) if prefix == HUB_ENV_PREFIX else (prefix + "TEST_", HUB_ENV_PREFIX)
    for key, raw in environ.items():
        if not key.startswith(prefix) or key.startswith(skip):
            continue
        path = [p.lower() for p in key[len(prefix) :].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key} conflicts with another EDGEKITE_ variable")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node[path[-1]] = value
    return out


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_edge_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EdgeConfig:
    """Build the edge config: TOML file, then environment, then explicit overrides (CLI flags)."""
    return _layered(EdgeConfig, ENV_PREFIX, path, environ, overrides)


def _layered(
    model: type[C],
    prefix: str,
    path: Path | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> C:
    data: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    data = deep_merge(data, env_overrides(os.environ if environ is None else environ, prefix=prefix))
    if overrides:
        data = deep_merge(data, overrides)
    return model.model_validate(data)


# ---------------------------------------------------------------------------------------------
# The hub


class HubSection(_Section):
    data_dir: Path = Field(Path("./hub-data"), description="chDB's data directory (embedded storage).")


class HubStorageSection(_Section):
    backend: Literal["chdb", "clickhouse"] = Field(
        "chdb", description="chdb: embedded, in <data_dir>; clickhouse: a server through clickhouse-connect."
    )
    clickhouse_url: str = Field(
        "", description="http(s)://user:password@host:8123 of the ClickHouse server (backend clickhouse)."
    )
    database: str = Field("edgekite", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    dedup_window_batches: int = Field(
        100_000, ge=100, description="Recent batch ids ClickHouse remembers to drop a resent batch."
    )


class HubMqttSection(_Section):
    url: str = Field("", description="Hub broker (MQTT 5, e.g. Mosquitto); empty: HTTP ingest only.")
    share_group: str = Field("edgekite-hub", description="Consumers in one group split the batches.")
    consumers: int = Field(1, ge=1, le=32, description="Consumers (MQTT sessions) in this process.")
    client_id: str = Field("edgekite-hub", description="Prefix of the consumers' client ids.")
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_secs: int = Field(7 * 86400, ge=0)
    receive_maximum: int = Field(16, ge=1, le=65535, description="Batches in flight to one consumer.")


class HubHttpSection(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8090, ge=0, le=65535)
    api_key: str | None = Field(None, description="When set, the read API and /metrics need it (Bearer).")
    max_body_bytes: int = Field(16 * 1024**2, ge=1024**2, description="Largest POST /api/ingest/batch body.")


class HubEdge(_Section):
    """One edge allowed to send, once any is configured (no edges configured: development mode)."""

    api_key: str = Field(min_length=16, description="Shared with the edge (its sync.api_key).")
    rate_limit_events_per_sec: float | None = Field(None, gt=0, description="Overrides the default.")


class HubIngestSection(_Section):
    rate_limit_events_per_sec: float = Field(
        100_000, gt=0, description="Per edge, sustained; a batch over the limit is answered 'retry'."
    )
    rate_limit_burst_events: int = Field(200_000, ge=1)
    dead_letter_max_bytes: int = Field(4096, ge=0, description="How much of a rejected event is kept.")
    visitor_ip: Literal["truncate", "drop"] = Field(
        "truncate",
        description="What is stored of a web event's data.ip once its visitor id is computed: the "
        "network (/24 IPv4, /48 IPv6, enough for geo) or nothing. The raw address is never stored.",
    )
    salt_keep_days: int = Field(
        2, ge=1, le=30, description="Days a visitor-id salt lives (today included), then it is deleted."
    )


class HubEnrichSection(_Section):
    enabled: bool = Field(True, description="Run the enrichment consumer in the hub process.")
    bots_file: Path | None = Field(
        None,
        description="Extra bot patterns, one regex per line ('!' allows); read at start, no release needed.",
    )
    geo_db: Path | None = Field(
        None, description="MaxMind-format database (GeoLite2/GeoIP2 City or Country)."
    )
    site_hosts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="site -> its own hostnames, so clicks between its pages are 'internal'.",
    )
    lag_secs: float = Field(
        30, ge=0, description="The consumer stays this far behind ingest (see hub_enrich)."
    )
    batch_rows: int = Field(20_000, ge=100, le=1_000_000)
    busy_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="While edges' batches are arriving, enrichment takes at most this share of the "
        "time, so acknowledging edges comes first; it catches up when ingest is quiet. 1: no limit.",
    )


class HubConfig(_Section):
    hub: HubSection = Field(default_factory=HubSection)
    storage: HubStorageSection = Field(default_factory=HubStorageSection)
    mqtt: HubMqttSection = Field(default_factory=HubMqttSection)
    http: HubHttpSection = Field(default_factory=HubHttpSection)
    ingest: HubIngestSection = Field(default_factory=HubIngestSection)
    enrich: HubEnrichSection = Field(default_factory=HubEnrichSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    log: LogSection = Field(default_factory=LogSection)
    edges: dict[str, HubEdge] = Field(
        default_factory=dict, description="edge_id -> credentials; empty accepts any edge (development)."
    )

    @field_validator("edges")
    @classmethod
    def _edge_ids_valid(cls, v: dict[str, HubEdge]) -> dict[str, HubEdge]:
        import re

        for edge_id in v:
            if not re.match(EDGE_ID_PATTERN, edge_id):
                raise ValueError(f"edges: {edge_id!r} is not a valid edge id")
        return v


def load_hub_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """Hub config: TOML file, then ``EDGEKITE_HUB_*`` variables, then CLI flags.

    ``EDGEKITE_HUB_STORAGE__BACKEND=clickhouse`` sets ``storage.backend``: a prefix of its own,
    so an edge and a hub started from one shell never read each other's variables.
    """
    return _layered(HubConfig, HUB_ENV_PREFIX, path, environ, overrides)
