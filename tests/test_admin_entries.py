"""Operator-signed enrolment, revocation and rotation, checked at ledger time (issue 3)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hsm import SoftwareSigner
from ledger_node.chain import Chain
from ledger_node.store import Store
from tests.chainkit import ChainUnderTest, Device
from tests.pki import T0, SoftPKI


def reasons(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT reason FROM quarantine ORDER BY id")]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ChainUnderTest, Device, Path]:
    dev = Device("truck-1")
    db = tmp_path / "l.sqlite"
    return ChainUnderTest(db, [dev]), dev, db


def test_enrolled_device_readings_are_accepted(setup: tuple[ChainUnderTest, Device, Path]
                                               ) -> None:
    tc, dev, _ = setup
    assert tc.apply([dev.message(dev.reading())]).accepted == 1
    assert tc.chain.devices["truck-1"].cert_not_after is not None


def test_unenrolled_device_is_enrolled_by_an_operator_entry_in_a_later_block(
        setup: tuple[ChainUnderTest, Device, Path]) -> None:
    tc, _, _ = setup
    late = Device("truck-9")
    assert tc.apply([late.message(late.reading())]).rejected == {"unknown_device": 1}
    late.seq, late.prev = 0, bytes(32)
    result = tc.apply([late.message(late.reading())], admin=[tc.pki.enrol("truck-9",
                                                                          late.signer)])
    assert [a.status for a in result.admin] == ["accepted"] and result.accepted == 1


@pytest.mark.parametrize("case, reason", [
    ("signed_by_a_device_certificate", "not_operator"),
    ("operator_from_another_ca", "operator_cert_chain"),
    ("device_cert_from_another_ca", "cert_chain"),
    ("device_cert_for_another_id", "cert_wrong_device"),
    ("device_cert_expired", "cert_expired"),
    ("device_cert_not_yet_valid", "cert_not_yet_valid"),
    ("operator_role_as_device", "cert_role"),
    ("flipped_signature", "bad_signature"),
    ("no_certificate_in_header", "not_operator"),
])
def test_bad_enrolment_entries_are_rejected_with_their_reason(
        setup: tuple[ChainUnderTest, Device, Path], case: str, reason: str) -> None:
    tc, _, db = setup
    pki, other = tc.pki, SoftPKI()
    key = SoftwareSigner.generate()
    body = {"type": "device_enrolled", "dev": "truck-2", "fleet": "test"}
    if case == "signed_by_a_device_certificate":
        entry = pki.signed({**body, "cert": pki.issue(key, "truck-2", "device")}, key,
                           pki.issue(key, "truck-2", "device"))
    elif case == "operator_from_another_ca":
        entry = other.signed({**body, "cert": pki.issue(key, "truck-2", "device")})
    elif case == "device_cert_from_another_ca":
        entry = pki.signed({**body, "cert": other.issue(key, "truck-2", "device")})
    elif case == "device_cert_for_another_id":
        entry = pki.signed({**body, "cert": pki.issue(key, "truck-3", "device")})
    elif case == "device_cert_expired":
        entry = pki.signed({**body, "cert": pki.issue(key, "truck-2", "device", T0, T0 + 1000)})
    elif case == "device_cert_not_yet_valid":
        entry = pki.signed({**body, "cert": pki.issue(key, "truck-2", "device",
                                                      tc.time + 10**9, tc.time + 10**10)})
    elif case == "operator_role_as_device":
        entry = pki.signed({**body, "cert": pki.issue(key, "truck-2", "operator")})
    elif case == "flipped_signature":
        raw = bytearray(pki.enrol("truck-2", key))
        raw[-5] ^= 1
        entry = bytes(raw)
    else:
        from trustfleet import cbor
        from trustfleet.cose import sign1

        payload = cbor.dumps({"v": 1, **body, "t": T0,
                              "cert": pki.issue(key, "truck-2", "device")})
        entry = sign1(payload, pki.operator.kid, pki.operator.sign)  # no x5chain
    result = tc.apply(admin=[entry])
    assert [a.status for a in result.admin] == ["rejected"]
    assert result.admin[0].reason == reason, result.admin[0]
    assert "truck-2" not in tc.chain.devices
    assert reasons(db) == [reason]


def test_enrolling_again_with_the_same_certificate_is_a_duplicate_and_another_key_is_refused(
        setup: tuple[ChainUnderTest, Device, Path]) -> None:
    tc, dev, _ = setup
    same = tc.apply(admin=[tc.pki.enrol("truck-1", dev.signer)])
    assert [a.status for a in same.admin] == ["duplicate"] and same.header is None
    other = tc.apply(admin=[tc.pki.enrol("truck-1", SoftwareSigner.generate())])
    assert other.admin[0].reason == "already_enrolled"


def test_revoked_device_readings_are_rejected_after_the_revocation_and_kept_before(
        setup: tuple[ChainUnderTest, Device, Path]) -> None:
    tc, dev, db = setup
    assert tc.apply([dev.message(dev.reading())]).accepted == 1
    assert tc.apply(admin=[tc.pki.revoke("truck-1")]).admin[0].status == "accepted"
    assert tc.apply([dev.message(dev.reading())]).rejected == {"revoked_device": 1}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1
    again = tc.apply(admin=[tc.pki.revoke("truck-1")])
    assert again.admin[0].status == "duplicate"
    rotate = tc.apply(admin=[tc.pki.rotate("truck-1", SoftwareSigner.generate(),
                                           dev.signer.kid)])
    assert rotate.admin[0].reason == "revoked_device"


def test_rotation_retires_the_old_key_and_cannot_be_rolled_back_by_replay(
        setup: tuple[ChainUnderTest, Device, Path]) -> None:
    tc, dev, _ = setup
    old_signer = dev.signer
    assert tc.apply([dev.message(dev.reading())]).accepted == 1
    new_signer = SoftwareSigner.generate()
    rotation = tc.pki.rotate("truck-1", new_signer, old_signer.kid)
    assert tc.apply(admin=[rotation]).admin[0].status == "accepted"
    assert tc.apply([dev.message(dev.reading())]).rejected == {"rotated_key": 1}
    dev.seq -= 1
    dev.signer = new_signer
    assert tc.apply([dev.message(dev.reading())]).accepted == 1
    assert tc.apply(admin=[rotation]).admin[0].status == "duplicate"
    back = tc.apply(admin=[tc.pki.rotate("truck-1", old_signer, new_signer.kid)])
    assert back.admin[0].reason == "stale_rotation"
    third = SoftwareSigner.generate()
    stale = tc.apply(admin=[tc.pki.rotate("truck-1", third, old_signer.kid)])
    assert stale.admin[0].reason == "stale_rotation"


def test_readings_after_the_device_certificate_expires_are_rejected(tmp_path: Path) -> None:
    pki = SoftPKI()
    dev = Device("truck-1")
    tc = ChainUnderTest.__new__(ChainUnderTest)
    ChainUnderTest.__init__(tc, tmp_path / "l.sqlite", [], pki)
    expiry = tc.time + 5_000
    result = tc.apply(admin=[pki.enrol("truck-1", dev.signer, not_after=expiry)])
    assert result.admin[0].status == "accepted"
    tc.time = expiry + 1
    assert tc.apply([dev.message(dev.reading())]).rejected == {"cert_expired": 1}


def test_a_reloaded_chain_remembers_rotations_revocations_and_certificate_validity(
        tmp_path: Path) -> None:
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(tmp_path / "l.sqlite", [a, b])
    old = a.signer
    tc.apply(admin=[tc.pki.rotate("truck-1", SoftwareSigner.generate(), old.kid),
                    tc.pki.revoke("truck-2")])
    tc.store.close()
    chain = Chain(Store(tmp_path / "l.sqlite"), "main", "node-1", tc.node)
    assert old.kid in chain.devices["truck-1"].retired_kids
    assert chain.devices["truck-2"].revoked_time is not None
    assert chain.devices["truck-1"].cert_not_after is not None
    assert chain.ca_cert == tc.pki.ca_cert


def test_a_genesis_naming_an_unusable_fleet_ca_is_refused(tmp_path: Path) -> None:
    from ledger_node import entries
    from ledger_node.chain import OrderedBatch

    pki = SoftPKI()
    node = SoftwareSigner.generate()
    chain = Chain(Store(tmp_path / "l.sqlite"), "main", "node-1", node)
    device_cert = pki.issue(SoftwareSigner.generate(), "truck-1", "device")
    result = chain.apply(OrderedBatch(T0 + 1000, "node-1", (
        entries.genesis("main", "node-1", node.public_key_der(), T0, device_cert),)))
    assert [a.reason for a in result.admin] == ["bad_fleet_ca"]
    assert chain.height == -1
