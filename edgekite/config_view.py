"""A read-only, pydantic-free view of an already validated configuration.

The edge validates its configuration once, with the pydantic models of ``edgekite.config``.
The bridge's child process receives it as JSON and needs nothing but attribute access to plain
values; rebuilding the models there would load pydantic (about 11 MB of what was a 37 MB process) to
validate what was validated a moment ago.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigView:
    """``view.mqtt.client_id`` over ``{"mqtt": {"client_id": ...}}``; lists become tuples."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(f"configuration has no {name!r}") from None
        return _wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a configuration view is read-only")

    def __repr__(self) -> str:
        return f"ConfigView({sorted(self._data)})"


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return ConfigView(value)
    if isinstance(value, list):
        return tuple(_wrap(v) for v in value)
    return value
