"""The bridge's child process stays small: it validates the common envelope without pydantic.

pydantic is ~11 MB on top of the ~25 MB the child needs; the child loads it only when an
envelope leaves the fast path (an unusual shape, or one refused, whose reason the model words).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

from edgekite.config import EdgeConfig
from edgekite.simulate import TrafficGenerator

CHILD_SCRIPT = """
import sys, orjson
from edge_bridge import bridge_process  # everything the child process imports
from edge_bridge.inbound import InboundRouter
from edgekite.config_view import ConfigView

data = orjson.loads(sys.stdin.buffer.read())
router = InboundRouter(ConfigView(orjson.loads(data["config"])))
out = {"events": 0, "rejected": [], "pydantic_before_bad": None}
for topic, payload in data["messages"]:
    if payload == "BAD" and out["pydantic_before_bad"] is None:
        out["pydantic_before_bad"] = "pydantic" in sys.modules
    d = router.decode(topic, payload.encode(), 1795400000000)
    out["events"] += len(d.events)
    out["rejected"] += [r.detail for r in d.rejections]
print(orjson.dumps(out).decode())
"""


def run_child(messages: list[tuple[str, str]]) -> dict[str, Any]:
    stdin = orjson.dumps({"config": EdgeConfig().model_dump_json(), "messages": messages})
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT], input=stdin, capture_output=True, timeout=60, check=True
    )
    result: dict[str, Any] = orjson.loads(proc.stdout)
    return result


def test_the_simulator_mix_is_validated_without_loading_pydantic() -> None:
    gen = TrafficGenerator(seed=7)
    messages = []
    for _ in range(3000):
        sid, env = gen.next_event()
        messages.append((f"ek/v1/{sid}/events", orjson.dumps(env).decode()))
    assert sum('"attachments"' in m for _, m in messages) > 20, "camera events with thumbnails included"
    bad = orjson.dumps({"source": {"type": "edge_device"}, "event": {"category": "weather", "type": "x"}})
    messages.append(("ek/v1/cam-1/events", "BAD"))
    messages.append(("ek/v1/cam-1/events", bad.decode()))

    out = run_child(messages)

    assert out["events"] == 3000
    assert out["pydantic_before_bad"] is False
    # A refused envelope is still worded by the model (which loads pydantic then, once).
    assert any("not valid JSON" in r for r in out["rejected"])
    assert any("event.category" in r for r in out["rejected"])
