"""`trustfleet verify` from disk: passes on an honest store, names the first tampered item."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chainkit import ChainUnderTest, Device
from tests.fleet import damage, run_verify, verify_fails_naming


def build(tmp_path: Path) -> Path:
    db = tmp_path / "node" / "ledger.sqlite"
    db.parent.mkdir()
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(db, [a, b])
    for _ in range(4):
        tc.apply([a.message(a.reading()), b.message(b.reading()), a.message(a.reading())])
    tc.store.close()
    return db


def test_verify_passes_on_an_untouched_store_and_reports_what_it_checked(tmp_path: Path) -> None:
    out = run_verify(build(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: 5 blocks (height 4), 15 entries, 12 readings from 2 devices" in out.stdout


def _flip_entry_byte(conn: sqlite3.Connection) -> None:
    data = bytearray(conn.execute("SELECT data FROM entries WHERE idx = 7").fetchone()[0])
    data[-10] ^= 0x01
    conn.execute("UPDATE entries SET data = ? WHERE idx = 7", (bytes(data),))


def _flip_header_byte(conn: sqlite3.Connection) -> None:
    header = bytearray(conn.execute("SELECT header FROM blocks WHERE height = 2").fetchone()[0])
    header[-3] ^= 0x01
    conn.execute("UPDATE blocks SET header = ? WHERE height = 2", (bytes(header),))


def _flip_signature_byte(conn: sqlite3.Connection) -> None:
    sig = bytearray(conn.execute("SELECT sig FROM block_sigs WHERE height = 3").fetchone()[0])
    sig[5] ^= 0x01
    conn.execute("UPDATE block_sigs SET sig = ? WHERE height = 3", (bytes(sig),))


def _delete_entry(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM entries WHERE idx = 9")


def _swap_entries(conn: sqlite3.Connection) -> None:
    # entries 4 and 5 are both readings of block 1: each still verifies on its own
    e4 = conn.execute("SELECT data FROM entries WHERE idx = 4").fetchone()[0]
    e5 = conn.execute("SELECT data FROM entries WHERE idx = 5").fetchone()[0]
    conn.execute("UPDATE entries SET data = ? WHERE idx = 4", (e5,))
    conn.execute("UPDATE entries SET data = ? WHERE idx = 5", (e4,))


@pytest.mark.parametrize("tamper, named", [
    (_flip_entry_byte, "entry 7 (block 2)"),
    (_flip_header_byte, "block 2"),
    (_flip_signature_byte, "block 3: signature of node 'node-1' does not verify"),
    (_delete_entry, "block 3: 3 entries in header, 2 in store"),
    (_swap_entries, "block 1: Merkle root recomputed from the stored entries does not match"),
])
def test_verify_fails_and_names_the_tampered_item(
        tmp_path: Path, tamper: Callable[[sqlite3.Connection], None], named: str) -> None:
    db = build(tmp_path)
    damage(db, tamper)
    verify_fails_naming(db, named)


def test_verify_with_a_pinned_node_key_rejects_a_chain_signed_by_another_key(
        tmp_path: Path) -> None:
    from hsm import SoftwareSigner

    db = build(tmp_path)
    other = tmp_path / "other.der"
    other.write_bytes(SoftwareSigner.generate().public_key_der())
    out = run_verify(db, "--node-key", str(other))
    assert out.returncode == 1
    assert "FAILED: block 0: signature of node 'node-1' does not verify" in out.stdout


def test_verify_on_a_missing_store_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    out = run_verify(tmp_path / "nothing" / "ledger.sqlite")
    assert out.returncode == 2
    assert "no ledger store at" in out.stderr
