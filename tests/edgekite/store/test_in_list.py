"""IN-lists come in a few lengths, so the connection's statement cache cannot fill with
one compiled program per batch size."""

from __future__ import annotations

import sqlite3

import pytest

from edgekite.store.in_list import MAX_IN, padded_in


def test_every_length_up_to_the_chunk_maps_to_a_handful_of_statements() -> None:
    shapes = set()
    for n in range(MAX_IN + 1):
        marks, params = padded_in([b"x"] * n, b"")
        assert marks.count("?") == len(params) >= max(n, 1)
        assert params[:n] == [b"x"] * n and set(params[n:]) <= {b""}
        shapes.add(marks)
    assert len(shapes) <= 8


def test_the_filler_matches_nothing_and_longer_lists_are_refused() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE ids (id BLOB PRIMARY KEY) WITHOUT ROWID")
    conn.executemany("INSERT INTO ids VALUES (?)", [(bytes([i]) * 16,) for i in range(5)])
    marks, params = padded_in([bytes([1]) * 16, bytes([9]) * 16], b"")
    found = conn.execute(f"SELECT id FROM ids WHERE id IN ({marks})", params).fetchall()
    assert found == [(bytes([1]) * 16,)]
    with pytest.raises(ValueError, match="chunks"):
        padded_in([b"x"] * (MAX_IN + 1), b"")
