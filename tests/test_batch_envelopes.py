"""Batch envelopes: one signature over a Merkle root of readings, each reading self-contained."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import cbor2
import pytest

from hsm import SoftwareSigner, verify_es256
from tests.chainkit import ChainUnderTest, Device
from trustfleet import cbor
from trustfleet.batch import TAG_BATCHED_READING, open_reading, sign_batch
from trustfleet.errors import WireError
from trustfleet.payload import Reading, encode_payload
from trustfleet.topics import encode_batch


def batch_of(dev: Device, n: int, signer: SoftwareSigner | None = None) -> list[bytes]:
    """The next n readings of `dev` as one signed batch; prev links by payload hash."""
    payloads = []
    first = dev.seq + 1
    for _ in range(n):
        dev.seq += 1
        r = Reading(dev=dev.dev, seq=dev.seq, prev=dev.prev, t=1_763_700_000_000 + dev.seq,
                    ts="gps", k="temp", d={"c": 5.0})
        payload = encode_payload(r)
        dev.prev = hashlib.sha256(payload).digest()
        payloads.append(payload)
    s = signer or dev.signer
    return sign_batch(payloads, dev.dev, first, 1_763_700_000_000, s.kid, s.sign)


def test_each_batched_reading_opens_and_verifies_on_its_own() -> None:
    dev = Device("truck-1")
    items = batch_of(dev, 7)
    for seq, item in enumerate(items, start=1):
        opened = open_reading(item)
        assert opened.batched and opened.reading.seq == seq
        assert verify_es256(dev.signer.public_key_der(), opened.to_be_signed, opened.signature)
    assert len({open_reading(i).signature for i in items}) == 1


def test_a_batch_is_committed_with_contiguous_seq_and_unbroken_prev_links(tmp_path: Path
                                                                          ) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    single = dev.reading()                       # seq 1, a single envelope
    items = batch_of(dev, 10)                    # seq 2..11, prev of 2 = SHA-256(envelope 1)
    dev.prev = hashlib.sha256(cbor2.loads(items[-1]).value[3]).digest()
    after = dev.reading()                        # seq 12 links to the payload of 11
    result = tc.apply([dev.message(single), dev.message(encode_batch(items)),
                       dev.message(after)])
    assert result.accepted == 12 and not result.rejected
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:
        flags = [f for (f,) in conn.execute("SELECT flags FROM readings ORDER BY seq")]
    assert flags == [""] * 12
    assert tc.chain.devices["truck-1"].contiguous_seq == 12


def test_a_resent_batch_is_a_duplicate(tmp_path: Path) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    items = batch_of(dev, 4)
    tc.apply([dev.message(encode_batch(items))])
    again = tc.apply([dev.message(encode_batch(items))])
    assert (again.accepted, again.duplicates) == (0, 4)


def _rewrap(item: bytes, **change: object) -> bytes:
    batch, index, proof, payload = cbor2.loads(item).value
    parts = {"batch": batch, "index": index, "proof": list(proof), "payload": payload} | change
    return cbor.dumps(cbor2.CBORTag(TAG_BATCHED_READING, [parts["batch"], parts["index"],
                                                           parts["proof"], parts["payload"]]))


@pytest.mark.parametrize("tamper, reason", [
    ("changed_payload", "batch_proof"),
    ("flipped_proof_hash", "batch_proof"),
    ("wrong_index", "bad_batch"),
    ("truncated_proof", "batch_proof"),
    ("other_key", "kid_mismatch"),
    ("forged_signature", "bad_signature"),
])
def test_a_tampered_batched_reading_is_quarantined_and_the_rest_of_the_batch_commits(
        tmp_path: Path, tamper: str, reason: str) -> None:
    dev = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [dev])
    items = batch_of(dev, 8, SoftwareSigner.generate() if tamper == "other_key" else None)
    victim = items[3]
    batch, index, proof, payload = cbor2.loads(victim).value
    if tamper == "changed_payload":
        r = cbor2.loads(payload)
        r["d"] = {"c": 99.0}
        victim = _rewrap(victim, payload=cbor.dumps(r))
    elif tamper == "flipped_proof_hash":
        victim = _rewrap(victim, proof=[bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]])
    elif tamper == "wrong_index":
        victim = _rewrap(victim, index=index + 1)
    elif tamper == "truncated_proof":
        victim = _rewrap(victim, proof=list(proof[:-1]))
    elif tamper == "forged_signature":
        protected, unprotected, body, sig = cbor2.loads(batch).value
        forged = cbor.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), body,
                                               sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]]))
        items = [_rewrap(i, batch=forged) for i in items]
        victim = items[3]
    items[3] = victim
    result = tc.apply([dev.message(encode_batch(items))])
    assert result.rejected.get(reason, 0) >= 1, result.rejected
    if tamper in ("changed_payload", "flipped_proof_hash", "wrong_index", "truncated_proof"):
        assert result.accepted == 7
        assert tc.chain.devices["truck-1"].gaps == 1


def test_batch_items_reject_garbage_with_a_reason() -> None:
    for bad in (cbor.dumps(cbor2.CBORTag(TAG_BATCHED_READING, [1, 2])),
                cbor.dumps(cbor2.CBORTag(TAG_BATCHED_READING, [b"x", 0, [], b"y"]))):
        with pytest.raises(WireError) as err:
            open_reading(bad)
        assert err.value.reason == "bad_batch"
