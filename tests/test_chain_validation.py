"""Block application and DESIGN §6 validation, on a real SQLite store with software keys."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ledger_node.block import decode_header
from ledger_node.merkle import leaf_hash, root_from_leaf_hashes
from tests.chainkit import ChainUnderTest, Device
from trustfleet import cbor


def quarantine_reasons(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT reason FROM quarantine ORDER BY id")]


def test_good_readings_are_committed_in_a_signed_block_whose_root_covers_every_entry(
        tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    envs = [dev.reading() for _ in range(5)]
    result = tc.apply([dev.message(e) for e in envs])
    assert result.accepted == 5 and result.header is not None
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        data = [bytes(r[0]) for r in conn.execute("SELECT data FROM entries ORDER BY idx")]
    assert data[-5:] == envs
    assert result.header.root == root_from_leaf_hashes([leaf_hash(d) for d in data])
    assert decode_header(result.header_bytes or b"") == result.header
    assert tc.chain.devices["truck-1"].contiguous_seq == 5


def test_duplicate_is_acknowledged_and_ignored(tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    env = dev.reading()
    tc.apply([dev.message(env)])
    again = tc.apply([dev.message(env)])
    assert (again.accepted, again.duplicates, again.header) == (0, 1, None)
    assert quarantine_reasons(tmp_path / "l.sqlite") == []


def test_reading_with_reused_seq_and_other_bytes_is_quarantined_as_replay_conflict(
        tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    tc.apply([dev.message(dev.reading())])
    dev.seq, dev.prev = 0, bytes(32)
    result = tc.apply([dev.message(dev.reading(values={"c": 99.0}))])
    assert result.rejected == {"replay_conflict": 1}
    assert quarantine_reasons(tmp_path / "l.sqlite") == ["replay_conflict"]


def test_gap_and_broken_prev_are_accepted_and_flagged(tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    first = dev.reading()
    dev.reading()  # seq 2 is lost on the way
    third = dev.reading()
    result = tc.apply([dev.message(first), dev.message(third)])
    assert result.accepted == 2
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        flags = dict(conn.execute("SELECT seq, flags FROM readings"))
    assert flags == {1: "", 3: "gap"}
    state = tc.chain.devices["truck-1"]
    assert (state.last_seq, state.contiguous_seq, state.gaps) == (3, 1, 1)


def test_prev_that_does_not_match_the_predecessor_is_flagged(tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    tc.apply([dev.message(dev.reading())])
    dev.prev = b"\x11" * 32
    tc.apply([dev.message(dev.reading())])
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        assert conn.execute("SELECT flags FROM readings WHERE seq = 2").fetchone()[0] == \
            "prev_mismatch"


def test_each_kind_of_bad_input_is_quarantined_with_its_reason_and_good_ones_pass(
        tmp_path: Path) -> None:
    good, other = Device("truck-1"), Device("truck-2")
    stranger = Device("stranger")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [good, other])
    forged = bytearray(good.reading())
    forged[-1] ^= 0x01
    good.seq -= 1
    not_cose = cbor.dumps({"hello": "world"})
    msgs = [
        good.message(b"\xff\x00garbage"),                     # bad_cbor
        good.message(not_cose),                               # bad_envelope
        good.message(bytes(forged)),                          # bad_signature
        stranger.message(stranger.reading()),                 # unknown_device
        good.message(other.reading()),                        # topic_mismatch (seq 1 of other)
        good.message(b"\x5a" + (2_000_000).to_bytes(4, "big") + b"\x00" * 2_000_000),  # too_large
        good.message(good.reading()),                         # accepted
        other.message(other.reading()),                       # accepted (seq 2 of other)
    ]
    result = tc.apply(msgs)
    assert result.accepted == 2
    assert sorted(quarantine_reasons(tmp_path / "l.sqlite")) == sorted(
        ["bad_cbor", "bad_envelope", "bad_signature", "unknown_device", "topic_mismatch",
         "too_large"])


def test_chain_resumes_from_the_store_with_the_same_tip(tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    tc.apply([dev.message(dev.reading())])
    height, tip, size = tc.chain.height, tc.chain.tip_hash, tc.chain.size
    tc.store.close()
    from ledger_node.chain import Chain
    from ledger_node.store import Store

    again = Chain(Store(tmp_path / "l.sqlite"), "main", "node-1", tc.node)
    assert (again.height, again.tip_hash, again.size) == (height, tip, size)
    assert again.devices["truck-1"].last_seq == 1


def test_malleated_high_s_copy_of_a_reading_is_quarantined_not_committed(tmp_path: Path) -> None:
    import cbor2

    from trustfleet.cose import P256_ORDER

    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    env = dev.reading()
    protected, unprotected, payload, sig = cbor2.loads(env).value
    s = int.from_bytes(sig[32:], "big")
    twin = cbor.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), payload,
                                         sig[:32] + (P256_ORDER - s).to_bytes(32, "big")]))
    result = tc.apply([dev.message(twin), dev.message(env)])
    assert result.accepted == 1 and result.rejected == {"bad_signature": 1}


def test_a_reading_whose_device_clock_is_far_from_ledger_time_is_accepted_and_flagged(
        tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    near = dev.reading(t=tc.time)            # the device clock agrees with the ledger
    rtc_reset = dev.reading(t=1_000)         # an RTC back at 1970 after a power cut
    result = tc.apply([dev.message(near), dev.message(rtc_reset)])
    assert result.accepted == 2
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        flags = dict(conn.execute("SELECT seq, flags FROM readings"))
    assert flags == {1: "", 2: "clock_skew"}
