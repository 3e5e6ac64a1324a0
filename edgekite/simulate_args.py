"""The ``edgekite simulate`` options, apart from the simulator.

The CLI builds every sub-command's parser at start; keeping these here means ``edgekite
edge`` does not import the simulator (paho, multiprocessing, the traffic tables) to run.
"""

from __future__ import annotations

import argparse
import os


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser`` (a sub-command of the ``edgekite`` CLI).

    Credentials default to ``EDGEKITE_MQTT_USERNAME`` / ``EDGEKITE_MQTT_PASSWORD`` so that a
    password need not appear in the process list.
    """
    parser.add_argument(
        "--mqtt-url",
        default="mqtt://127.0.0.1:1883",
        help="broker, mqtt://host:port or mqtts://host:port (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="total events per second; <= 0 = as fast as possible (default: %(default)s)",
    )
    parser.add_argument(
        "--count",
        type=_non_negative_int,
        default=1000,
        help="envelopes to publish; 0 = until Ctrl-C (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="traffic seed (default: 0)")
    parser.add_argument(
        "--qos", type=int, choices=(0, 1, 2), default=1, help="MQTT QoS (default: %(default)s)"
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        help="envelopes per message, sent as a JSON array (default: 1)",
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="publisher processes; one tops out near 9,000 msgs/s (default: 1)",
    )
    parser.add_argument(
        "--sites", type=_positive_int, default=2, help="sites simulated per process (default: 2)"
    )
    parser.add_argument(
        "--username",
        default=os.environ.get("EDGEKITE_MQTT_USERNAME"),
        help="broker user (default: $EDGEKITE_MQTT_USERNAME)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("EDGEKITE_MQTT_PASSWORD"),
        help="broker password (default: $EDGEKITE_MQTT_PASSWORD)",
    )
