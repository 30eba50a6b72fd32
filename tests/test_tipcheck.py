"""The start-up tip check, in process: the stored subtrees (16 leaves or more) that the tip block
completed or that the tip's frontier holds must be present and unchanged; smaller subtrees are
not stored and are not looked for. (tests/test_node_start_tamper runs a real node on this.)"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_node.errors import TamperError
from ledger_node.subtrees import MIN_STORED_LEVEL
from ledger_node.tipcheck import check_tip
from tests.chainkit import ChainUnderTest, Device


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, bytes]]:
    """Sizes 3, 23, 43, 53: the tip block completes (4, 2); its frontier is (5, 0), (4, 2),
    (2, 12), (0, 52), of which (5, 0) and (4, 2) are stored."""
    a = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [a, Device("truck-2")])
    for n in (20, 20, 10):
        tc.apply([a.message(a.reading()) for _ in range(n)])
    tc.store.close()
    conn = sqlite3.connect(tmp_path / "l.sqlite")
    yield conn, tc.node.public_key_der()
    conn.close()


def test_an_intact_tip_passes_and_no_small_subtree_is_stored(
        chain: tuple[sqlite3.Connection, bytes]) -> None:
    conn, key = chain
    check_tip(conn, "node-1", key)
    rows = conn.execute("SELECT level, idx FROM merkle_nodes ORDER BY level, idx").fetchall()
    assert rows == [(4, 0), (4, 1), (4, 2), (5, 0)] and min(r[0] for r in rows) == \
        MIN_STORED_LEVEL


@pytest.mark.parametrize("sql, named", [
    ("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 2",
     "merkle_nodes row (level 4, index 2): hash differs from the recomputed subtree"),
    ("DELETE FROM merkle_nodes WHERE level = 4 AND idx = 2",
     "merkle_nodes row (level 4, index 2): missing"),
    ("DELETE FROM merkle_nodes WHERE level = 5 AND idx = 0",
     "merkle_nodes row (level 5, index 0): missing"),
    ("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 5 AND idx = 0",
     "merkle_nodes row (level 5, index 0): hash differs from the recomputed subtree"),
])
def test_a_damaged_stored_subtree_of_the_tip_is_named(
        chain: tuple[sqlite3.Connection, bytes], sql: str, named: str) -> None:
    conn, key = chain
    conn.execute(sql)
    with pytest.raises(TamperError) as err:
        check_tip(conn, "node-1", key)
    assert str(err.value) == named
