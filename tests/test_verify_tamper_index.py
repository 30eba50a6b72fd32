"""`trustfleet verify` checks the rows derived from the log (readings, devices, merkle_nodes,
blocks columns, entry kinds) against a replay of the verified log, names every damaged row,
and reports per-device gaps and broken prev links. Real CLI, real SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger_node.merkle import RangeHasher, leaf_hash
from ledger_node.subtrees import MIN_STORED_LEVEL
from ledger_node.verify import verify_store
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import damage, run_verify, verify_fails_naming


def build(tmp_path: Path) -> Path:
    """Blocks 1-4: entries 3..14; truck-1 never sends seq 4 (a gap) and breaks prev at seq 7."""
    db = tmp_path / "node" / "ledger.sqlite"
    db.parent.mkdir()
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(db, [a, b])
    for block in range(4):
        first, second = a.reading(), b.reading()
        if block == 1:
            a.reading()  # seq 4 is never sent
        if block == 2:
            a.prev = bytes(32)  # seq 7 does not link to seq 6
        tc.apply([a.message(first), b.message(second), a.message(a.reading())])
    tc.store.close()
    return db


def test_an_honest_store_passes_with_index_counts_and_the_per_device_report(
        tmp_path: Path) -> None:
    out = run_verify(build(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: 5 blocks (height 4), 15 entries, 12 readings from 2 devices" in out.stdout
    assert ("index rows checked against the log: 5 blocks, 15 entries.kind, 12 readings, "
            "0 merkle_nodes, 2 devices") in out.stdout  # 15 entries: no subtree of 16 stored
    assert ("devices (log replay): 2; 1 with gaps (1 gap(s), 1 missing seq), 1 with broken "
            "prev links (1)") in out.stdout
    table = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()
             if line.startswith("  truck-")}
    #                     readings, last seq, contiguous, gaps, missing, prev mismatches
    assert table == {"truck-1": ["8", "9", "3", "1", "1", "1"],
                     "truck-2": ["4", "4", "4", "0", "0", "0"]}


def _set(sql: str, *args: object) -> Callable[[sqlite3.Connection], None]:
    def tamper(conn: sqlite3.Connection) -> None:
        conn.execute(sql, args)
    return tamper


def _reading_hash(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE readings SET hash = ? WHERE idx = 7", (bytes(32),))


@pytest.mark.parametrize("tamper, named", [
    (_set("UPDATE readings SET seq = 42 WHERE idx = 7"),
     "readings row 7 (truck-2 seq 2): seq is 42, entry 7 gives 2"),
    (_reading_hash, "readings row 7 (truck-2 seq 2): hash is 00000000"),
    (_set("UPDATE readings SET t = t + 1 WHERE idx = 9"), "readings row 9 (truck-1 seq 6): t is"),
    (_set("UPDATE readings SET flags = '' WHERE idx = 8"),
     "readings row 8 (truck-1 seq 5): flags is '', entry 8 gives 'gap'"),
    (_set("UPDATE readings SET flags = '' WHERE idx = 11"),
     "readings row 11 (truck-1 seq 7): flags is '', entry 11 gives 'prev_mismatch'"),
    (_set("DELETE FROM readings WHERE idx = 4"),
     "readings row for entry 4: missing (truck-2 seq 1)"),
    (_set("INSERT INTO readings SELECT 99, 'truck-2', 99, hash, t, ts, k, d, flags, height, "
          "ledger_time FROM readings WHERE idx = 4"),
     "readings row 99: indexes no entry (the log has 15)"),
    (_set("UPDATE devices SET last_seq = 3 WHERE dev = 'truck-2'"),
     "devices row 'truck-2': last_seq is 3, the log replay gives 4"),
    (_set("UPDATE devices SET gaps = 0 WHERE dev = 'truck-1'"),
     "devices row 'truck-1': gaps is 0, the log replay gives 1"),
    (_set("UPDATE devices SET key = x'00' WHERE dev = 'truck-1'"),
     "devices row 'truck-1': key is 00"),
    (_set("DELETE FROM devices WHERE dev = 'truck-2'"),
     "devices row 'truck-2': missing (the log enrols this device)"),
    (_set("INSERT INTO devices SELECT 'ghost', fleet, key, x'01', enrolled_height, NULL, 0, 0, "
          "NULL, NULL, 0, 0, 0 FROM devices WHERE dev = 'truck-1'"),
     "devices row 'ghost': the log never enrols this device"),
    (_set("INSERT INTO merkle_nodes VALUES (1, 7, zeroblob(32))"),
     "merkle_nodes row (level 1, index 7): is not a subtree of the log's 15 entries"),
    (_set("UPDATE blocks SET time = time + 1 WHERE height = 2"),
     "blocks row 2: time is"),
    (_set("UPDATE blocks SET frontier = (SELECT frontier FROM blocks WHERE height = 1) "
          "WHERE height = 3"), "blocks row 3: frontier is"),
    (_set("UPDATE entries SET kind = 'genesis' WHERE idx = 5"),
     "entries row 5: kind column says 'genesis', the entry is 'reading'"),
])
def test_a_damaged_index_row_is_named_and_fails_verify(
        tmp_path: Path, tamper: Callable[[sqlite3.Connection], None], named: str) -> None:
    db = build(tmp_path)
    damage(db, tamper)
    out = verify_fails_naming(db, named)
    assert "checked 5 good blocks" in out.stdout  # the log itself is intact


def build_long(tmp_path: Path) -> Path:
    """Blocks 1-5 of 13 readings: 68 entries, so merkle_nodes holds the subtrees of 16 leaves or
    more: (4, 0..3), (5, 0..1) and (6, 0)."""
    db = tmp_path / "node" / "ledger.sqlite"
    db.parent.mkdir()
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(db, [a, b])
    for _ in range(5):
        tc.apply([(a if i % 2 else b).message((a if i % 2 else b).reading()) for i in range(13)])
    tc.store.close()
    return db


def _flip_merkle_node(level: int, idx: int) -> Callable[[sqlite3.Connection], None]:
    def tamper(conn: sqlite3.Connection) -> None:
        where = f"level = {level} AND idx = {idx}"
        h = bytearray(conn.execute(f"SELECT hash FROM merkle_nodes WHERE {where}").fetchone()[0])
        h[0] ^= 0x80
        conn.execute(f"UPDATE merkle_nodes SET hash = ? WHERE {where}", (bytes(h),))
    return tamper


def test_an_honest_store_with_stored_subtrees_passes(tmp_path: Path) -> None:
    report = verify_store(build_long(tmp_path))
    assert report.ok, report.problems
    assert report.index_rows["merkle_nodes"] == 7


@pytest.mark.parametrize("tamper, named", [
    (_flip_merkle_node(4, 1), "merkle_nodes row (level 4, index 1): hash differs from the "
                              "subtree recomputed from the entries"),
    (_flip_merkle_node(6, 0), "merkle_nodes row (level 6, index 0): hash differs from the "
                              "subtree recomputed from the entries"),
    (_set("DELETE FROM merkle_nodes WHERE level = 5 AND idx = 1"),
     "merkle_nodes row (level 5, index 1): missing"),
    (_set("INSERT INTO merkle_nodes VALUES (4, 4, zeroblob(32))"),
     "merkle_nodes row (level 4, index 4): is not a subtree of the log's 68 entries"),
    (_set("INSERT INTO merkle_nodes VALUES (64, 0, zeroblob(32))"),
     "merkle_nodes row (level 64, index 0): is not a subtree of the log's 68 entries"),
    (_set("INSERT INTO merkle_nodes VALUES (5, 1 << 58, zeroblob(32))"),
     f"merkle_nodes row (level 5, index {1 << 58}): is not a subtree of the log's 68 entries"),
    (_set("INSERT INTO merkle_nodes VALUES (2, 3, zeroblob(32))"),
     "merkle_nodes row (level 2, index 3): is below level 4: smaller subtrees are hashed from "
     "the entries, not stored"),
])
def test_a_damaged_stored_subtree_row_is_named_and_fails_verify(
        tmp_path: Path, tamper: Callable[[sqlite3.Connection], None], named: str) -> None:
    db = build_long(tmp_path)
    damage(db, tamper)
    report = verify_store(db)
    assert not report.ok and str(report.problems[0]) == named, report.problems
    if "level 5" in named:  # the CLI says the same
        verify_fails_naming(db, named)


def test_a_schema_2_store_not_yet_opened_by_the_writer_verifies_with_its_small_rows(
        tmp_path: Path) -> None:
    db = build_long(tmp_path)
    with sqlite3.connect(db) as conn:  # levels 1 to 3 as schema 2 stored them
        hasher = RangeHasher([leaf_hash(bytes(r[0]))
                              for r in conn.execute("SELECT data FROM entries ORDER BY idx")])
        conn.executemany("INSERT INTO merkle_nodes VALUES (?, ?, ?)",
                         [(lvl, i, hasher(i << lvl, (i + 1) << lvl))
                          for lvl in range(1, MIN_STORED_LEVEL) for i in range(68 >> lvl)])
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"2",))
    report = verify_store(db)
    assert report.ok, report.problems
    with sqlite3.connect(db) as conn:  # in a schema-3 store the same rows do not belong
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"3",))
    problems = [str(p) for p in verify_store(db).problems]  # 34 + 17 + 8 rows, 50 named
    assert len(problems) == 50 and all(p.endswith("): is below level 4: smaller subtrees are "
                                              "hashed from the entries, not stored")
                                       for p in problems)
    assert problems[0].startswith("merkle_nodes row (level 1, index 0): ")
    with sqlite3.connect(db) as conn:  # schema 2, a row out of place: named as before
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"2",))
        conn.execute("DELETE FROM merkle_nodes WHERE level = 2 AND idx = 3")
        conn.execute("INSERT INTO merkle_nodes VALUES (3, 9, zeroblob(32))")
        conn.execute("DELETE FROM merkle_nodes WHERE level = 1 AND idx = 0")
    assert [str(p) for p in verify_store(db).problems] == [
        "merkle_nodes row (level 3, index 9): is not a subtree of the log's 68 entries",
        "merkle_nodes: 65 rows, a tree of 68 needs 66"]


def test_every_damaged_row_is_listed_not_only_the_first(tmp_path: Path) -> None:
    db = build(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE readings SET seq = seq + 100")
        conn.execute("UPDATE devices SET readings = 0")
    report = verify_store(db)
    wheres = [p.where for p in report.problems]
    assert len([w for w in wheres if w.startswith("readings row")]) == 12
    assert "devices row 'truck-1'" in wheres and "devices row 'truck-2'" in wheres


def test_index_damage_is_not_reported_for_a_log_that_failed(tmp_path: Path) -> None:
    db = build(tmp_path)
    with sqlite3.connect(db) as conn:
        data = bytearray(conn.execute("SELECT data FROM entries WHERE idx = 7").fetchone()[0])
        data[-10] ^= 0x01
        conn.execute("UPDATE entries SET data = ? WHERE idx = 7", (bytes(data),))
    out = run_verify(db)
    assert out.returncode == 1
    assert out.stdout.startswith("FAILED: entry 7 (block 2)")
    assert "devices row" not in out.stdout and "checked 2 good blocks before the failure" \
        in out.stdout


def test_batched_readings_verify_and_their_rows_match_by_payload_hash(tmp_path: Path) -> None:
    import hashlib

    import cbor2

    from tests.test_batch_envelopes import batch_of
    from trustfleet.topics import encode_batch

    db = tmp_path / "node" / "ledger.sqlite"
    db.parent.mkdir()
    dev = Device("truck-1")
    tc = ChainUnderTest(db, [dev])
    single = dev.reading()
    items = batch_of(dev, 5)
    dev.prev = hashlib.sha256(cbor2.loads(items[-1]).value[3]).digest()
    tc.apply([dev.message(single), dev.message(encode_batch(items)), dev.message(dev.reading())])
    tc.store.close()
    report = verify_store(db)
    assert report.ok, report.problems
    assert report.readings == 7 and report.index_rows["readings"] == 7
    (stats,) = report.device_stats
    assert (stats.contiguous_seq, stats.gaps, stats.prev_mismatches) == (7, 0, 0)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE readings SET hash = ? WHERE seq = 3", (bytes(32),))
    assert [p.where for p in verify_store(db).problems] == ["readings row 4 (truck-1 seq 3)"]
