"""The BASELINE for ingest_mqtt.py: a bare paho-mqtt subscriber that only counts messages.

MQTT 5, QoS 1, paho's automatic PUBACK (after on_message returns), a persistent session
(clean_start=False, session expiry 1 h) and the edge's default Receive Maximum (2000), so it
sees exactly the broker-side flow control the edge's bridge sees, minus decoding and SQLite.

Protocol with the parent (stdout, one line each):
  ``ready``                          after SUBACK
  ``done <first_msg_monotonic> <last_msg_monotonic> <messages>``   once ``--expect`` arrived
time.monotonic() is CLOCK_MONOTONIC, shared by all processes on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--expect", type=int, required=True, help="messages to receive before reporting")
    ap.add_argument("--receive-maximum", type=int, default=2000)
    ap.add_argument("--topic", default="ek/v1/+/events")
    ap.add_argument("--client-id", default="bench-bare-subscriber")
    ap.add_argument(
        "--parse", action="store_true", help="also orjson.loads every payload (a parse-only reference)"
    )
    args = ap.parse_args()

    state = {"n": 0, "first": 0.0}

    def on_connect(client, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
        if reason.is_failure:
            print(f"error connect {reason}", flush=True)
            client.disconnect()
            return
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):  # type: ignore[no-untyped-def]
        print("ready", flush=True)

    loads = orjson.loads if args.parse else None

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        if loads is not None:
            loads(msg.payload)
        n = state["n"] = state["n"] + 1
        if n == 1:
            state["first"] = time.monotonic()
        if n == args.expect:
            print(f"done {state['first']:.6f} {time.monotonic():.6f} {n}", flush=True)
            client.disconnect()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = args.receive_maximum
    client.connect("127.0.0.1", args.port, keepalive=30, clean_start=False, properties=props)
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
