"""HTTP ingest: the same validation and commit-before-answer as MQTT.

Pure helpers turn a request body into decoded rows; the handlers submit them to the store and
answer only after the transaction committed, with what was accepted, what was a replay, and
why anything was refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from edgekite.config import EdgeConfig
from edgekite.ingest import Decoded, Rejection, rows_from_objects

if TYPE_CHECKING:  # the decode worker process never loads the store
    from edgekite.store import WriteItem


class BodyError(ValueError):
    """The body as a whole cannot be read; answered with 400 and this reason."""


def parse_single(body: bytes) -> list[Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    if isinstance(obj, list):
        raise BodyError("a JSON array goes to /api/events/batch")
    return [obj]


def parse_batch(body: bytes, content_type: str, max_events: int) -> list[Any | Rejection]:
    """A JSON array, or NDJSON (one envelope per line; a bad line is rejected on its own)."""
    stripped = body.lstrip()
    if not stripped:
        raise BodyError("empty body")
    if stripped[:1] == b"[" and "ndjson" not in content_type:
        try:
            objs = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
        if len(objs) > max_events:
            raise BodyError(f"{len(objs)} envelopes in one batch (max {max_events})")
        return list(objs)
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) > max_events:
        raise BodyError(f"{len(lines)} envelopes in one batch (max {max_events})")
    out: list[Any | Rejection] = []
    for i, line in enumerate(lines):
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            out.append(Rejection("invalid_json", f"line {i + 1} is not valid JSON: {exc}", i, line))
    if out and all(isinstance(o, Rejection) for o in out):
        raise BodyError("body is neither a JSON array nor NDJSON")
    return out


def add_client_ip(obj: Any, ip: str | None) -> None:
    """Web events lack the visitor's address (a page cannot know it): take the sender's."""
    if ip is None or type(obj) is not dict:
        return
    event = obj.get("event")
    if type(event) is not dict or event.get("category") != "web":
        return
    data = event.setdefault("data", {})
    if type(data) is dict and "ip" not in data:
        data["ip"] = ip
        privacy = obj.setdefault("privacy", {})
        if type(privacy) is dict:
            privacy["pii"] = True


def add_user_agent(obj: Any, user_agent: str | None) -> None:
    """Web events without ``data.user_agent`` (a tracker's custom event, a server-side sender)
    get the request's: the hub parses it and needs it for the visitor id, so a visitor's custom
    events join their page views in funnels."""
    if user_agent is None or type(obj) is not dict:
        return
    event = obj.get("event")
    if type(event) is not dict or event.get("category") != "web":
        return
    data = event.setdefault("data", {})
    if type(data) is dict and "user_agent" not in data:
        data["user_agent"] = user_agent


def decode_objects(objs: list[Any | Rejection], config: EdgeConfig, received_at: int) -> Decoded:
    pre_rejected = [o for o in objs if isinstance(o, Rejection)]
    positions = [i for i, o in enumerate(objs) if not isinstance(o, Rejection)]
    decoded = rows_from_objects(
        [objs[i] for i in positions],
        topic_source_id=None,
        received_at=received_at,
        limits=config.limits,
        require_source_match=False,
        indexed=True,
    )
    # Map positions among the parsed objects back to positions in the body.
    rejections = [r._replace(position=positions[r.position or 0]) for r in decoded.rejections]
    rejections.extend(pre_rejected)
    rejections.sort(key=lambda r: r.position or 0)
    return Decoded(decoded.events, rejections, decoded.ids_generated)


def decode_body(
    body: bytes,
    content_type: str,
    batch: bool,
    user_agent: str | None,
    client_ip: str | None,
    config: EdgeConfig,
    received_at: int,
) -> tuple[int, Decoded]:
    """A request body to (envelopes in it, decoded rows); BodyError when it is unreadable.

    ``client_ip`` is added to web events only when ``http.record_client_ip`` is on."""
    objs = (
        parse_batch(body, content_type, config.limits.max_events_per_message) if batch else parse_single(body)
    )
    ip = client_ip if config.http.record_client_ip else None
    for obj in objs:
        add_user_agent(obj, user_agent)
        add_client_ip(obj, ip)
    return len(objs), decode_objects(objs, config, received_at)


def write_item(decoded: Decoded, size: int) -> WriteItem:
    from edgekite.store import WriteItem

    return WriteItem(decoded=decoded, transport="http", topic=None, size=size)


def response_body(accepted: int, duplicates: int, rejections: list[Rejection]) -> dict[str, Any]:
    return {
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [{"index": r.position or 0, "reason": f"{r.code}: {r.detail}"} for r in rejections],
    }
