"""The one ``edgekite`` command: ``edge``, ``hub``, ``broker``, ``simulate``, ``schema``.

Imports are deferred to the subcommand that needs them, so ``edgekite schema`` does not pay
for aiohttp and the edge starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

_T0 = time.monotonic()
log = logging.getLogger("edgekite")


def _edge_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if args.data_dir is not None:
        over.setdefault("edge", {})["data_dir"] = str(args.data_dir)
    if args.edge_id is not None:
        over.setdefault("edge", {})["edge_id"] = args.edge_id
    if args.mqtt_url is not None:
        over.setdefault("mqtt", {})["url"] = args.mqtt_url
    if args.mqtt_port is not None:
        over.setdefault("mqtt", {})["embedded_port"] = args.mqtt_port
    if args.http_port is not None:
        over.setdefault("http", {})["port"] = args.http_port
    if args.log_level is not None:
        over.setdefault("log", {})["level"] = args.log_level
    if args.hub_mqtt_url is not None:
        over.setdefault("sync", {})["hub_mqtt_url"] = args.hub_mqtt_url
    if args.hub_url is not None:
        over.setdefault("sync", {})["hub_url"] = args.hub_url
    if args.hub_api_key is not None:
        over.setdefault("sync", {})["api_key"] = args.hub_api_key
    return over


def cmd_edge(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edgekite.config import load_edge_config
    from edgekite.logs import setup_logging

    try:
        config = load_edge_config(args.config, overrides=_edge_overrides(args))
    except (ValidationError, OSError, ValueError) as exc:
        print(f"edgekite: bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    return asyncio.run(_run_edge(config))


async def _run_edge(config: Any) -> int:
    from edgekite.edge_node import EdgeNode

    async with EdgeNode(config) as node:
        ready = time.monotonic() - _T0
        print(
            f"edgekite edge {config.edge.edge_id} ready in {ready:.2f}s: "
            f"MQTT {node.mqtt_url}  HTTP {node.http_url}  (metrics {node.http_url}/metrics, "
            f"data {config.db_path})",
            flush=True,
        )
        await node.run()
    return 0


def _hub_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if args.data_dir is not None:
        over.setdefault("hub", {})["data_dir"] = str(args.data_dir)
    if args.mqtt_url is not None:
        over.setdefault("mqtt", {})["url"] = args.mqtt_url
    if args.http_port is not None:
        over.setdefault("http", {})["port"] = args.http_port
    if args.log_level is not None:
        over.setdefault("log", {})["level"] = args.log_level
    return over


def cmd_hub(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edgekite.config import load_hub_config
    from edgekite.logs import setup_logging

    try:
        config = load_hub_config(args.config, overrides=_hub_overrides(args))
    except (ValidationError, OSError, ValueError) as exc:
        print(f"edgekite: bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    if args.action == "enrich":
        return cmd_hub_enrich(args, config)
    if args.rerun or args.since is not None:
        print("edgekite hub: --rerun and --since belong to `edgekite hub enrich`", file=sys.stderr)
        return 2
    from edgekite.hubstore import StoreLockedError

    try:
        return asyncio.run(_run_hub(config))
    except StoreLockedError as exc:
        print(f"edgekite hub: {exc}", file=sys.stderr)
        return 1


def cmd_hub_enrich(args: argparse.Namespace, config: Any) -> int:
    """``edgekite hub enrich [--rerun [--since T]]``: one-off enrichment next to (not inside) the hub."""
    from hub_enrich.rerun import run_cli

    if args.since is not None and not args.rerun:
        print("edgekite hub enrich: --since needs --rerun", file=sys.stderr)
        return 2
    return run_cli(
        config,
        do_rerun=args.rerun,
        since=args.since,
        bots_file=args.bots_file,
        geo_db=args.geo_db,
        batch_rows=args.batch_rows,
    )


async def _run_hub(config: Any) -> int:
    from edgekite.hub_node import HubNode

    async with HubNode(config) as node:
        ready = time.monotonic() - _T0
        print(
            f"edgekite hub ready in {ready:.2f}s: HTTP {node.http_url}  MQTT {node.mqtt_description}  "
            f"storage {node.store.description}",
            flush=True,
        )
        await node.run()
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from broker.embedded import run_broker
    from edgekite.logs import setup_logging

    setup_logging(args.log_level or "INFO")
    print(f"edgekite broker on mqtt://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_broker(args.host, args.port, args.password_file))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from edgekite.logs import setup_logging
    from edgekite.simulate import run_from_args

    setup_logging("INFO")
    return run_from_args(args)


def cmd_schema(args: argparse.Namespace) -> int:
    from edgekite.envelope import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekite", description="Offline-first event analytics at the edge."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    edge = sub.add_parser(
        "edge", help="run the edge: broker (embedded unless --mqtt-url), bridge, store, HTTP"
    )
    edge.add_argument("--config", type=Path, help="TOML config file (EDGEKITE_* variables override it)")
    edge.add_argument("--data-dir", type=Path, help="where edge.db lives (default ./data)")
    edge.add_argument("--edge-id", help="this edge's name in the fleet")
    edge.add_argument("--mqtt-url", help="external broker, mqtt://HOST:PORT; omit to embed one")
    edge.add_argument("--mqtt-port", type=int, help="port of the embedded broker (default 1883)")
    edge.add_argument(
        "--http-port", type=int, help="HTTP port for the API, dashboard and /metrics (default 8080)"
    )
    edge.add_argument(
        "--hub-mqtt-url", help="forward every event to the hub through this broker, mqtt(s)://HOST:PORT"
    )
    edge.add_argument("--hub-url", help="forward to the hub over HTTP(S) instead, http(s)://HOST:PORT")
    edge.add_argument("--hub-api-key", help="this edge's key at the hub (or sync.api_key in the config)")
    edge.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    edge.set_defaults(func=cmd_edge)

    hub = sub.add_parser(
        "hub",
        help="run the hub: batch ingest (MQTT and HTTP) into ClickHouse, read API; "
        "`hub enrich --rerun` recomputes enrichment",
    )
    hub.add_argument(
        "action",
        nargs="?",
        choices=["enrich"],
        help="enrich: enrich new events and exit, or with --rerun recompute history (hub stopped)",
    )
    hub.add_argument("--config", type=Path, help="TOML config file (EDGEKITE_HUB_* variables override it)")
    hub.add_argument("--data-dir", type=Path, help="chDB data directory (default ./hub-data)")
    hub.add_argument("--mqtt-url", help="hub broker, mqtt://HOST:PORT; omit for HTTP ingest only")
    hub.add_argument(
        "--http-port", type=int, help="HTTP port for ingest, the API and /metrics (default 8090)"
    )
    hub.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    hub.add_argument("--rerun", action="store_true", help="enrich: recompute stored events' enrichment")
    hub.add_argument("--since", help="enrich --rerun: only events observed since (ISO-8601 or Unix ms)")
    hub.add_argument("--bots-file", type=Path, help="enrich: extra bot patterns (docs/enrichment.md)")
    hub.add_argument("--geo-db", type=Path, help="enrich: MaxMind-format database for geo")
    hub.add_argument("--batch-rows", type=int, default=50_000, help="enrich: raw rows per insert")
    hub.set_defaults(func=cmd_hub)

    brk = sub.add_parser("broker", help="run only the embedded MQTT broker (amqtt)")
    brk.add_argument("--host", default="0.0.0.0")
    brk.add_argument("--port", type=int, default=1883)
    brk.add_argument("--password-file", type=Path)
    brk.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    brk.set_defaults(func=cmd_broker)

    sim = sub.add_parser("simulate", help="publish realistic device and web traffic")
    from edgekite.simulate_args import add_arguments

    add_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    schema = sub.add_parser("schema", help="print the envelope's JSON Schema")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
