"""``HubStore``: one small interface over embedded chDB and a ClickHouse server.

chDB is blocking and lets only one process open a data directory. Every call into the store
runs on one dedicated thread (:meth:`HubStore.run`), so calls into the chDB session are
serialised and the event loop never blocks; the processor, the consumers and the read API all
go through it. Values are always bound as query parameters (``{name:Type}`` placeholders, which
both backends understand), never formatted into SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import pyarrow as pa

from edgekite.config import HubConfig
from edgekite.hubstore.schema import SITE_COLUMN_SQL, ddl, events_migration, events_needs_migration

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class StorageError(RuntimeError):
    """The backend failed a call (the batch is answered 'retry'; nothing crashes)."""


class StoreLockedError(StorageError):
    """Another process holds the chDB data directory."""


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _status_locked(data_dir: Path) -> bool:
    """Whether another process holds ClickHouse's lock on ``<data_dir>/status`` (chDB's error
    text says only "Error initializing EmbeddedServer"; the lock message goes to stderr)."""
    import fcntl

    status = data_dir / "status"
    if not status.exists():
        return False
    with status.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _literal(value: Any) -> str:
    """A ClickHouse literal of a str or int (the quoting rules of ClickHouse string literals)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"cannot bind {type(value).__name__} in an array parameter")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chdb_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """chDB binds parameters from text: a list becomes an array literal (``['a','b']``);
    clickhouse-connect takes the Python list as it is."""
    if not params:
        return None
    return {
        k: "[" + ",".join(_literal(x) for x in v) + "]" if isinstance(v, list | tuple) else v
        for k, v in params.items()
    }


def arrow_stream(tbl: pa.Table) -> bytes:
    """``tbl`` as one Arrow IPC stream (what chDB's ``ArrowStream`` input format reads)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tbl.schema) as writer:
        writer.write_table(tbl)
    return bytes(sink.getvalue().to_pybytes())


class HubStore:
    """``store.open()`` … ``store.close()``; blocking methods, to be called on the store thread."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.backend = config.storage.backend
        self.database = config.storage.database
        self._session: Any = None
        self._client: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubstore")
        self._lock = threading.Lock()  # belt and braces: tests call the blocking API directly

    # -- life cycle ------------------------------------------------------------------------
    @property
    def description(self) -> str:
        if self.backend == "chdb":
            return f"chdb:{Path(self.config.hub.data_dir).resolve()}"
        return f"clickhouse:{_redact(self.config.storage.clickhouse_url)}"

    def open(self) -> None:
        if self.backend == "chdb":
            self._open_chdb()
        else:
            self._open_clickhouse()
        for statement in ddl(self.config):
            self.command(statement)
        migrated = self._migrate_events()
        self._add_site_column(materialize=migrated)
        log.info("hub storage open: %s", self.description)

    def _add_site_column(self, *, materialize: bool) -> None:
        """Give an ``events`` table from before the stored ``site`` the column, and write it into
        the existing parts in the background (until then they read its default: same values)."""
        db = self.database
        rows = self.query_rows(
            "SELECT count() FROM system.columns"
            " WHERE database = {db:String} AND table = 'events' AND name = 'site'",
            {"db": db},
        )
        if not int(rows[0][0]):
            self.command(f"ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS {SITE_COLUMN_SQL}")
            materialize = True
        if materialize:
            self.command(f"ALTER TABLE {db}.events MATERIALIZE COLUMN site")
            log.info("events: writing the new site column into the stored parts (a background mutation)")

    def _migrate_events(self) -> bool:
        """Give an ``events`` table from before ``first_arrival_ver`` the version (see schema.py)."""
        db = self.database
        rows = self.query_rows(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'events'",
            {"db": db},
        )
        if not rows or not events_needs_migration(str(rows[0][0])):
            return False
        parts = self.query_rows(
            "SELECT DISTINCT partition_id FROM system.parts"
            " WHERE database = {db:String} AND table = 'events' AND active ORDER BY partition_id",
            {"db": db},
        )
        started = time.monotonic()
        window = int(self.config.storage.dedup_window_batches)
        for statement in events_migration(db, window, [str(p[0]) for p in parts]):
            self.command(statement)
        log.info(
            "events table migrated to keep each event's first arrival (%d partitions, %.1f s)",
            len(parts),
            time.monotonic() - started,
        )
        return True

    def _open_chdb(self) -> None:
        from chdb import session

        data_dir = Path(self.config.hub.data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(data_dir))  # type: ignore[no-untyped-call]
        except Exception as exc:
            if "Cannot lock file" in str(exc) or _status_locked(data_dir):
                raise StoreLockedError(
                    f"another process has the chDB data directory {data_dir} open (chDB allows one "
                    "process per directory; run several hub processes against a ClickHouse server)"
                ) from exc
            if "already initialized with path" in str(exc):
                raise StorageError(
                    f"this process has another chDB data directory open; close it before opening {data_dir}"
                ) from exc
            raise StorageError(f"cannot open chDB in {data_dir}: {exc}") from exc
        # JSON output keeps 64-bit integers as numbers (the default quotes them).
        self._session.query("SET output_format_json_quote_64bit_integers = 0")

    def _open_clickhouse(self) -> None:
        import clickhouse_connect

        url = self.config.storage.clickhouse_url
        if not url:
            raise StorageError("storage.backend is 'clickhouse' but storage.clickhouse_url is empty")
        try:
            self._client = clickhouse_connect.get_client(dsn=url)
        except Exception as exc:
            raise StorageError(f"cannot connect to ClickHouse at {_redact(url)}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                session, self._session = self._session, None
                session.close()
            if self._client is not None:
                client, self._client = self._client, None
                client.close()

    def shutdown_executor(self) -> None:
        self._executor.shutdown(wait=True)

    @property
    def is_open(self) -> bool:
        return self._session is not None or self._client is not None

    # -- the store thread --------------------------------------------------------------------
    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the store's single thread (every chDB call goes through here)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def submit(self, fn: Callable[[], T]) -> Any:
        """The same thread, from a non-async caller (the MQTT consumers' network threads)."""
        return self._executor.submit(fn)

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    # -- SQL ---------------------------------------------------------------------------------
    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            try:
                if self._session is not None:
                    self._session.query(sql, "Null", params=_chdb_params(params))
                elif self._client is not None:
                    self._client.command(sql, parameters=dict(params) if params else None)
                else:
                    raise StorageError("the hub store is not open")
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(str(exc)) from exc

    def query_rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows as tuples of JSON-ish values; queries convert times and UUIDs in SQL
        (``toUnixTimestamp64Milli``, ``toString``) so both backends return the same types."""
        with self._lock:
            try:
                if self._session is not None:
                    res = self._session.query(sql, "JSONCompact", params=_chdb_params(params))
                    raw = res.bytes()
                    if not raw:
                        return []
                    return [tuple(r) for r in orjson.loads(raw)["data"]]
                if self._client is not None:
                    result = self._client.query(sql, parameters=dict(params) if params else None)
                    return [tuple(r) for r in result.result_rows]
                raise StorageError("the hub store is not open")
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(str(exc)) from exc

    def query_rows_later(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> Callable[[], list[tuple[Any, ...]]]:
        """Run the query now, turn its result into Python rows later, on the caller's thread.

        For large reads (the enrichment consumer's 20,000 rows): the store thread only runs the
        query, and the Python conversion (the costly part) happens off it, while inserts go on.
        """
        with self._lock:
            try:
                if self._session is not None:
                    raw = self._session.query(sql, "JSONCompact", params=_chdb_params(params)).bytes()
                    return lambda: [tuple(r) for r in orjson.loads(raw)["data"]] if raw else []
                if self._client is not None:
                    rows = [
                        tuple(r)
                        for r in self._client.query(
                            sql, parameters=dict(params) if params else None
                        ).result_rows
                    ]
                    return lambda: rows
                raise StorageError("the hub store is not open")
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(str(exc)) from exc

    def insert_arrow(self, table: str, tbl: pa.Table, dedup_token: str | None = None) -> None:
        """Insert an Arrow table; a token already seen in the dedup window makes it a no-op.

        On chDB the table goes over as an Arrow IPC stream (``send_insert``), not through
        ``INSERT … SELECT … FROM Python(tbl)``: that scan has a fixed cost of several ms per
        statement, which made the hub's few-row ledger insert a third of its ingest CPU.
        """
        if tbl.num_rows == 0:
            return
        if self._session is not None:
            self._send_arrow_stream(table, arrow_stream(tbl), tbl.schema.names, dedup_token)
            return
        self._client_insert(table, tbl, dedup_token)

    def insert_arrow_ipc(self, table: str, data: bytes, columns: Sequence[str], dedup_token: str) -> None:
        """Insert one Arrow IPC stream (built in a decode worker) under a deduplication token.

        chDB parses the stream natively (``send_insert`` with ``ArrowStream``): no Python
        objects per row and no ``Python(tbl)`` scan in this process.
        """
        if self._session is not None:
            self._send_arrow_stream(table, data, columns, dedup_token)
            return
        self._client_insert(table, pa.ipc.open_stream(data).read_all(), dedup_token)

    def _send_arrow_stream(
        self, table: str, data: bytes, columns: Sequence[str], dedup_token: str | None
    ) -> None:
        """chDB: ``send_insert`` takes no parameters, so the token is inlined as a quoted
        literal (``_literal`` escapes it)."""
        with self._lock:
            try:
                if self._session is None:
                    raise StorageError("the hub store is not open")
                # async_insert is on by default in chDB: an async insert would neither honour
                # the token nor be stored when the call returns.
                settings = "async_insert = 0"
                if dedup_token is not None:
                    settings += f", insert_deduplication_token = {_literal(dedup_token)}"
                sql = f"INSERT INTO {self.table(table)} ({', '.join(columns)}) SETTINGS {settings}"
                inserter = self._session.send_insert(sql, "ArrowStream")
                try:
                    inserter.append(data)
                    inserter.finish()
                except BaseException:
                    with contextlib.suppress(Exception):
                        inserter.cancel()
                    raise
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(f"insert into {table} failed: {exc}") from exc

    def _client_insert(self, table: str, tbl: pa.Table, dedup_token: str | None) -> None:
        with self._lock:
            try:
                if self._client is None:
                    raise StorageError("the hub store is not open")
                self._client.insert_arrow(
                    table,
                    tbl,
                    database=self.database,
                    settings={"insert_deduplication_token": dedup_token} if dedup_token else None,
                )
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(f"insert into {table} failed: {exc}") from exc
