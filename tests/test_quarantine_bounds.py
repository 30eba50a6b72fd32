"""The quarantine is bounded: beyond its caps the oldest rows are summarised (counted by reason,
device and time), and stored + summarised always equals everything rejected. Real SQLite,
real block application (tests.chainkit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger_node import quarantine as quarantine_module
from ledger_node.chain import Message
from ledger_node.quarantine import OTHER_DEVICES, QuarantineLimits
from ledger_node.store import Store
from tests.chainkit import ChainUnderTest, Device


def garbage(dev: str, n: int, received: int, size: int = 10) -> Message:
    return Message(f"tf/v1/test/{dev}/up", b"\xff" + n.to_bytes(4, "big") + b"x" * size,
                   received)


def rows(db: Path) -> list[tuple[int, str, str | None, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, reason, dev, received FROM quarantine ORDER BY id"
                            ).fetchall()


def summary(db: Path) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    with sqlite3.connect(db) as conn:
        return {(r[0], r[1]): tuple(r[2:]) for r in conn.execute(
            "SELECT reason, dev, count, bytes, first_seen, last_seen FROM quarantine_summary")}


def chain(tmp_path: Path, max_rows: int, max_bytes: int = 1 << 30) -> ChainUnderTest:
    tc = ChainUnderTest(tmp_path / "l.sqlite", [Device("truck-1")])
    tc.store.quarantine.limits = QuarantineLimits(max_rows, max_bytes)
    return tc


def test_beyond_the_row_cap_the_oldest_rows_are_summarised_and_the_newest_kept(
        tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=10)
    for n in range(25):
        tc.apply([garbage("noisy", n, received=1000 + n)])
    stored = rows(tmp_path / "l.sqlite")
    assert len(stored) <= 10
    assert [r[3] for r in stored] == list(range(1025 - len(stored), 1025))  # the newest
    (key, (count, size, first, last)), = summary(tmp_path / "l.sqlite").items()
    assert key == ("bad_cbor", "noisy")
    assert count == 25 - len(stored)
    assert size == count * 15
    assert (first, last) == (1000, 1000 + count - 1)


def test_eviction_runs_down_to_ninety_percent_not_on_every_write(tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=100)
    tc.apply([garbage("noisy", n, received=n) for n in range(100)])
    assert len(rows(tmp_path / "l.sqlite")) == 100
    tc.apply([garbage("noisy", 100, received=100)])
    assert len(rows(tmp_path / "l.sqlite")) == 90
    assert summary(tmp_path / "l.sqlite")[("bad_cbor", "noisy")][0] == 11


def test_the_byte_cap_summarises_by_raw_size(tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=1000, max_bytes=10_000)
    for n in range(30):
        tc.apply([garbage("big", n, received=n, size=995)])  # 1000 raw bytes each
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        stored_bytes = conn.execute("SELECT SUM(length(raw)) FROM quarantine").fetchone()[0]
    assert stored_bytes <= 10_000
    count = summary(tmp_path / "l.sqlite")[("bad_cbor", "big")][0]
    assert count + len(rows(tmp_path / "l.sqlite")) == 30


def test_a_batch_larger_than_the_cap_stores_its_newest_rows_and_counts_the_rest(
        tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=5)
    tc.apply([garbage("flood", n, received=n) for n in range(40)])
    assert [r[3] for r in rows(tmp_path / "l.sqlite")] == [35, 36, 37, 38, 39]
    assert summary(tmp_path / "l.sqlite")[("bad_cbor", "flood")][:1] == (35,)


def test_a_cap_of_zero_rows_summarises_everything(tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=0)
    tc.apply([garbage("a", 1, 5), garbage("b", 2, 6), garbage("a", 3, 7)])
    assert rows(tmp_path / "l.sqlite") == []
    assert summary(tmp_path / "l.sqlite") == {("bad_cbor", "a"): (2, 30, 5, 7),
                                              ("bad_cbor", "b"): (1, 15, 6, 6)}


def test_reasons_and_devices_are_kept_apart_in_the_summary(tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    tc.store.quarantine.limits = QuarantineLimits(0, 0)
    stranger = Device("stranger")
    tc.apply([garbage("truck-1", 1, 1), stranger.message(stranger.reading()),
              Message("not/an/up/topic", dev.reading(), 3)])
    got = summary(tmp_path / "l.sqlite")
    assert set(got) == {("bad_cbor", "truck-1"), ("unknown_device", "stranger"),
                        ("bad_topic", "truck-1")}


def test_made_up_device_ids_cannot_grow_the_summary_without_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quarantine_module, "SUMMARY_MAX_ROWS", 3)
    tc = chain(tmp_path, max_rows=0)
    tc.apply([garbage(f"fake-{n}", n, n) for n in range(10)])
    got = summary(tmp_path / "l.sqlite")
    assert len(got) == 4
    assert got[("bad_cbor", OTHER_DEVICES)][0] == 7
    assert sum(v[0] for v in got.values()) == 10


def test_counts_survive_a_restart_and_the_caps_apply_to_what_was_stored_before(
        tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=1000)
    tc.apply([garbage("noisy", n, received=n) for n in range(50)])
    tc.store.close()
    store = Store(tmp_path / "l.sqlite", quarantine=QuarantineLimits(max_rows=20))
    assert (store.quarantine.rows, store.quarantine.bytes) == (50, 50 * 15)
    tc.chain.store = store
    tc.apply([garbage("noisy", 50, received=50)])
    assert len(rows(tmp_path / "l.sqlite")) == 18
    assert summary(tmp_path / "l.sqlite")[("bad_cbor", "noisy")][0] == 33
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        limits = conn.execute("SELECT value FROM meta WHERE key = 'quarantine_limits'"
                              ).fetchone()[0]
    assert b'"max_rows": 20' in limits
    store.close()


def test_ids_only_grow_even_when_eviction_empties_the_table(tmp_path: Path) -> None:
    tc = chain(tmp_path, max_rows=3)
    tc.apply([garbage("a", n, n) for n in range(3)])
    assert [r[0] for r in rows(tmp_path / "l.sqlite")] == [1, 2, 3]
    tc.apply([garbage("a", n, n) for n in range(5)])  # all three evicted, two of five counted
    assert [r[0] for r in rows(tmp_path / "l.sqlite")] == [4, 5, 6]
    tc.store.close()
    store = Store(tmp_path / "l.sqlite", quarantine=QuarantineLimits(max_rows=0))
    tc.chain.store = store
    tc.apply([garbage("a", 9, 9)])
    assert rows(tmp_path / "l.sqlite") == []
    store.quarantine.limits = QuarantineLimits(max_rows=3)
    tc.apply([garbage("a", 10, 10)])
    assert [r[0] for r in rows(tmp_path / "l.sqlite")] == [7]
    store.close()
