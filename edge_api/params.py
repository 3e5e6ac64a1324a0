"""Query-string parsing with clear 400s, and opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from edgekite.envelope import parse_timestamp

MAX_LIMIT = 500
WINDOWS_MS = {"24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}


class BadParamError(web.HTTPBadRequest):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(reason=f"parameter {name!r}: {why}")


def time_param(q: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        raise BadParamError(name, str(exc)) from None


def limit_param(q: Mapping[str, str], default: int = 50) -> int:
    raw = q.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParamError("limit", "must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadParamError("limit", f"must be between 1 and {MAX_LIMIT}")
    return value


def choice_param(q: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = q.get(name) or default
    if value not in choices:
        raise BadParamError(name, f"must be one of {', '.join(choices)}")
    return value


def text_param(q: Mapping[str, str], name: str, max_len: int = 200) -> str | None:
    value = q.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_len:
        raise BadParamError(name, f"longer than {max_len} characters")
    return value


def encode_cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(q: Mapping[str, str], length: int) -> list[Any] | None:
    raw = q.get("cursor")
    if not raw:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise BadParamError("cursor", "not a cursor this API gave out") from None
    if not isinstance(value, list) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise BadParamError("cursor", "not a cursor this API gave out")
    return value
