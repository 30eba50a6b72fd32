"""The durable outbox: order, chaining, resend timing, receipts, and surviving a restart."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_agent.collectors.base import Sample
from edge_agent.outbox import Outbox
from hsm import SoftwareSigner, verify_es256
from trustfleet.cose import decode_sign1
from trustfleet.payload import GENESIS_PREV, decode_payload

SIGNER = SoftwareSigner.generate()


def samples(n: int, start: int = 0) -> list[Sample]:
    return [Sample("temp", {"c": 4.0 + i / 10, "probe": "28-000000000001"},
                   1_763_700_000_000 + i * 1000, "gps") for i in range(start, start + n)]


def test_sealed_readings_form_a_signed_chain_in_insertion_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add(samples(5))
    assert box.seal("truck-1", SIGNER.kid, SIGNER.sign) == 5
    prev = GENESIS_PREV
    for seq, env in box.due(now_ms=0, resend_after_ms=1000, limit=100):
        msg = decode_sign1(env)
        r = decode_payload(msg.payload)
        assert (r.seq, r.prev, r.dev) == (seq, prev, "truck-1")
        assert verify_es256(SIGNER.public_key_der(), msg.to_be_signed(), msg.signature)
        prev = hashlib.sha256(env).digest()


def test_sent_reading_is_resent_only_after_the_timeout_and_kept_until_a_receipt(
        tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add(samples(3))
    box.seal("truck-1", SIGNER.kid, SIGNER.sign)
    box.mark_sent([1, 2, 3], now_ms=10_000)
    assert box.due(now_ms=10_500, resend_after_ms=1000, limit=10) == []
    assert [s for s, _ in box.due(now_ms=11_000, resend_after_ms=1000, limit=10)] == [1, 2, 3]
    assert box.apply_receipt(2, height=7) == 2
    assert [s for s, _ in box.due(now_ms=99_000, resend_after_ms=1000, limit=10)] == [3]
    st = box.stats()
    assert (st.unreceipted, st.last_seq, st.receipt_seq, st.receipt_height) == (1, 3, 2, 7)


def test_outbox_survives_a_restart_and_continues_the_chain(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add(samples(2))
    box.seal("truck-1", SIGNER.kid, SIGNER.sign)
    last_env = box.due(0, 0, 10)[-1][1]
    box.add(samples(1, start=2))  # stored, not yet sealed, when the power goes
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.stats().unsealed == 1
    again.seal("truck-1", SIGNER.kid, SIGNER.sign)
    seq, env = again.due(0, 0, 10)[-1]
    reading = decode_payload(decode_sign1(env).payload)
    assert seq == 3 and reading.prev == hashlib.sha256(last_env).digest()


def test_a_stale_receipt_does_not_move_the_receipt_mark_backwards(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add(samples(4))
    box.seal("truck-1", SIGNER.kid, SIGNER.sign)
    box.apply_receipt(3, height=9)
    box.apply_receipt(1, height=4)
    st = box.stats()
    assert (st.receipt_seq, st.receipt_height, st.unreceipted) == (3, 9, 1)
