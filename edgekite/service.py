"""What every EdgeKite service process does the same way: serve its aiohttp app, wait for a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start ``app`` on host:port (0: any free port); returns the runner and the URL to print."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return runner, f"http://{shown}:{bound}"


async def wait_for_stop(stop: asyncio.Event) -> None:
    """Until ``stop`` is set, by the caller or by SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
