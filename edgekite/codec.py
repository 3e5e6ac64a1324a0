"""Compression of the events' JSON columns with a zstd dictionary trained on this edge's own data.

Event payloads are small (100-500 bytes) and repetitive (the same keys, user agents, camera
names), which plain zstd cannot exploit but a dictionary can: on the simulator's mix the JSON
columns shrink about 5x for ~1.5 µs per row (bench/README.md). A column value is either TEXT
(plain JSON: rows written before a dictionary existed, or tiny ones) or a BLOB of one byte of
dictionary id followed by a zstd frame. ``ek_json(col)`` gives the JSON text back in SQL on any
connection the codec is registered on, so ``json_extract(ek_json(payload_json), '$.url')`` works.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

import zstandard

# Below this size a zstd frame saves too little to be worth a decode on every read.
MIN_COMPRESS_BYTES = 48
DICT_BYTES = 32 * 1024
LEVEL = 3
# fastCover's hash table is 2^f counters; zstd's default f=20 made training the edge's largest
# allocation (13 MB on 5,000 events against 3.6 MB at f=16) for 1 % better compression.
TRAIN_F = 16


class UnknownDictionaryError(LookupError):
    """A row names a dictionary this database does not hold (a copied or damaged file)."""


class PayloadCodec:
    """Compresses with the newest dictionary, decompresses with whichever a value names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        self._compressor: zstandard.ZstdCompressor | None = None
        self._dict_id: int | None = None
        self._conn_for_lookup: sqlite3.Connection | None = None

    @property
    def active_dict_id(self) -> int | None:
        return self._dict_id

    def load(self, conn: sqlite3.Connection, *, keep: bool = True) -> None:
        """Take the dictionaries stored in ``zstd_dicts``; the newest one compresses. ``keep``:
        look up dictionaries trained later on ``conn`` (it must stay open)."""
        for dict_id, data in conn.execute("SELECT id, dict FROM zstd_dicts ORDER BY id"):
            self._install(int(dict_id), bytes(data))
        if keep:
            self._conn_for_lookup = conn

    def holds(self, dict_id: int) -> bool:
        return dict_id in self._decompressors

    def _install(self, dict_id: int, data: bytes) -> None:
        d = zstandard.ZstdCompressionDict(data)
        with self._lock:
            self._decompressors[dict_id] = zstandard.ZstdDecompressor(dict_data=d)
            if self._dict_id is None or dict_id > self._dict_id:
                self._dict_id = dict_id
                self._compressor = zstandard.ZstdCompressor(
                    level=LEVEL,
                    dict_data=d,
                    write_checksum=False,
                    write_content_size=True,
                    write_dict_id=False,
                )

    def train(self, conn: sqlite3.Connection, samples: Sequence[bytes], now_ms: int) -> tuple[int, bytes]:
        """Train a dictionary from recent payloads and store it (inside the caller's transaction).

        Not used until ``install``: only once the transaction has committed may a row name it
        (a rolled-back dictionary would leave rows nobody can read), and the HTTP decode worker,
        told the active id, reads it from edge.db."""
        data = zstandard.train_dictionary(DICT_BYTES, list(samples), level=LEVEL, f=TRAIN_F).as_bytes()
        (next_id,) = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM zstd_dicts").fetchone()
        if next_id > 255:
            raise ValueError("no dictionary ids left")
        conn.execute(
            "INSERT INTO zstd_dicts (id, dict, trained_at, samples) VALUES (?,?,?,?)",
            (next_id, data, now_ms, len(samples)),
        )
        return int(next_id), data

    def install(self, dict_id: int, data: bytes) -> None:
        """Use a dictionary that edge.db holds (committed): the newest compresses from now on."""
        self._install(dict_id, data)

    def encode(self, text: str | None) -> str | bytes | None:
        """The stored form of one JSON column value."""
        if text is None or self._compressor is None or len(text) < MIN_COMPRESS_BYTES:
            return text
        assert self._dict_id is not None
        return bytes((self._dict_id,)) + self._compressor.compress(text.encode())

    def decode(self, value: str | bytes | None) -> str | None:
        """JSON text from a stored value, whichever form it has."""
        if value is None or isinstance(value, str):
            return value
        dict_id = value[0]
        dec = self._decompressors.get(dict_id)
        if dec is None:
            dec = self._lookup(dict_id)
        return dec.decompress(value[1:]).decode()

    def _lookup(self, dict_id: int) -> zstandard.ZstdDecompressor:
        """A dictionary trained after this reader loaded (dictionaries never change once written)."""
        if self._conn_for_lookup is not None:
            row = self._conn_for_lookup.execute(
                "SELECT dict FROM zstd_dicts WHERE id = ?", (dict_id,)
            ).fetchone()
            if row is not None:
                self._install(dict_id, bytes(row[0]))
                return self._decompressors[dict_id]
        raise UnknownDictionaryError(f"payload names zstd dictionary {dict_id}, which edge.db does not hold")

    def register(self, conn: sqlite3.Connection) -> None:
        """Make ``ek_json(value)`` available in SQL on ``conn`` (a reader's connection)."""
        if self._conn_for_lookup is None:
            self.load(conn)
        conn.create_function("ek_json", 1, self.decode, deterministic=True)
