"""HubStore on real chDB (and on a ClickHouse server when EDGEKITE_TEST_CLICKHOUSE_URL is set)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore, StoreLockedError
from edgekite.hubstore.arrow import BATCHES_SCHEMA, table_from_rows

SERVER_URL = os.environ.get("EDGEKITE_TEST_CLICKHOUSE_URL", "")


def _config(tmp: Path, backend: str) -> object:
    over: dict[str, object] = {"hub": {"data_dir": str(tmp / "data")}}
    if backend == "clickhouse":
        over["storage"] = {"backend": "clickhouse", "clickhouse_url": SERVER_URL, "database": "edgekite_test"}
    return load_hub_config(environ={}, overrides=over)


@pytest.fixture(
    scope="module",
    params=[
        "chdb",
        pytest.param(
            "clickhouse",
            marks=pytest.mark.skipif(
                not SERVER_URL, reason="EDGEKITE_TEST_CLICKHOUSE_URL is not set (no ClickHouse server)"
            ),
        ),
    ],
)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStore]:
    s = HubStore(_config(tmp_path_factory.mktemp("store"), request.param))  # type: ignore[arg-type]
    s.open()
    if request.param == "clickhouse":
        for t in ("events", "batches", "dead_letter"):
            s.command(f"TRUNCATE TABLE {s.table(t)}")
    yield s
    s.close()


def _row(edge: str, batch_id: str, events: int) -> tuple[object, ...]:
    return (edge, batch_id, 1, events, events, events, 0, 0, "{}", 1_800_000_000_000, 1_800_000_000_001)


def test_schema_is_idempotent(store: HubStore) -> None:
    from edgekite.hubstore.schema import ddl

    for statement in ddl(store.config):
        store.command(statement)
    tables = {
        r[0]
        for r in store.query_rows(
            "SELECT name FROM system.tables WHERE database = {d:String}", {"d": store.database}
        )
    }
    assert {"events", "batches", "dead_letter"} <= tables


def test_same_dedup_token_inserts_once(store: HubStore) -> None:
    tbl = table_from_rows(BATCHES_SCHEMA, [_row("tok", "b1", 5)])
    store.insert_arrow("batches", tbl, "tok/b1")
    store.insert_arrow("batches", tbl, "tok/b1")
    store.insert_arrow("batches", table_from_rows(BATCHES_SCHEMA, [_row("tok", "b2", 7)]), "tok/b2")
    rows = store.query_rows(
        f"SELECT count(), sum(events) FROM {store.table('batches')} WHERE edge_id = {{e:String}}",
        {"e": "tok"},
    )
    assert rows == [(2, 12)]


def test_values_are_bound_never_spliced(store: HubStore) -> None:
    nasty = "x' OR 1=1 --"
    store.insert_arrow("batches", table_from_rows(BATCHES_SCHEMA, [_row(nasty, "b", 1)]), None)
    rows = store.query_rows(
        f"SELECT edge_id, toUnixTimestamp64Milli(edge_created_at) FROM {store.table('batches')} "
        "WHERE edge_id = {e:String}",
        {"e": nasty},
    )
    assert rows == [(nasty, 1_800_000_000_000)]


def test_a_second_process_gets_a_clear_error(store: HubStore) -> None:
    if store.backend != "chdb":
        pytest.skip("chDB only")
    data_dir = str(store.config.hub.data_dir)
    code = (
        "import sys\n"
        "from edgekite.config import load_hub_config\n"
        "from edgekite.hubstore import HubStore, StoreLockedError\n"
        f"cfg = load_hub_config(environ={{}}, overrides={{'hub': {{'data_dir': {data_dir!r}}}}})\n"
        "s = HubStore(cfg)\n"
        "try:\n    s.open()\nexcept StoreLockedError as e:\n    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "another process has the chDB data directory" in proc.stdout
    assert StoreLockedError.__name__  # the type the CLI turns into a one-line message


def test_array_parameters_are_quoted_for_chdb() -> None:
    from edgekite.hubstore.backend import _chdb_params

    assert _chdb_params({"a": ["x", "it's", "back\\slash"], "n": [1, 2], "s": "plain"}) == {
        "a": "['x','it\\'s','back\\\\slash']",
        "n": "[1,2]",
        "s": "plain",
    }
