"""Proof bundles (version 2) and certificates: a device's keys come from the operator entries in
the log (enrolment, rotations, revocation), checked offline against the fleet CA.

Two kinds of evidence:
- real chains (tests/chainkit.py) that enrol, rotate and revoke: their bundles verify, and the
  verifier says what happened to the device;
- logs a dishonest node signed (RogueLog): entries the node should have refused, committed
  anyway, with valid inclusion proofs and a valid node signature. Only the checks on the
  content can catch those, and each one is named.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest

from hsm import SoftwareSigner
from ledger_node import entries
from ledger_node.admin import DEVICE_ENROLLED, DEVICE_ROTATED
from ledger_node.block import ZERO_HASH, BlockHeader
from ledger_node.bundle import Subject, bundle_document, bundle_for_device
from ledger_node.bundle_verify import BundleReport, describe, verify_bundle
from ledger_node.merkle import RangeHasher, inclusion_proof, leaf_hash
from ledger_node.store import open_reader
from tests.chainkit import FLEET, ChainUnderTest, Device
from tests.pki import T0, SoftPKI
from trustfleet import cbor
from trustfleet.batch import TAG_BATCHED_READING

Bundle = dict[str, Any]
T = 1_763_700_000_000  # ledger time of the chains here (certificates are valid from T0)


def two_truck_bundles(db: Path, pki: SoftPKI) -> tuple[Bundle, Bundle, bytes]:
    """(truck-1's bundle, truck-2's bundle, node key) from a real chain: block 0 holds the
    genesis (0) and both enrolments (1, 2); blocks 1-4 one reading of truck-1, one of truck-2,
    one of truck-1 each."""
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(db, [a, b], pki=pki)
    for _ in range(4):
        tc.apply([a.message(a.reading()), b.message(b.reading()), a.message(a.reading())])
    tc.store.close()
    conn = open_reader(db)
    one, two = bundle_for_device(conn, "truck-1"), bundle_for_device(conn, "truck-2")
    conn.close()
    return one, two, tc.node.public_key_der()


def check(bundle: Bundle, *, node_key: bytes | None = None,
          ca: bytes | None = None) -> BundleReport:
    return verify_bundle(json.dumps(bundle).encode(), pinned_node_key=node_key, pinned_ca=ca)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def reasons(report: BundleReport) -> list[str]:
    return [p.reason for p in report.problems]


class RogueLog:
    """What a dishonest (or broken) node can sign: entries appended with no validation at all,
    in one block whose header it signs. Its bundles are well formed and every proof holds."""

    def __init__(self, pki: SoftPKI, *, time: int = T) -> None:
        self.pki = pki
        self.node = SoftwareSigner.generate()
        self.time = time
        self.entries = [entries.genesis("main", "node-1", self.node.public_key_der(), time,
                                        pki.ca_cert)]

    def add(self, *data: bytes) -> RogueLog:
        self.entries.extend(data)
        return self

    def bundle(self, device: str | None = "truck-1") -> Bundle:
        n = len(self.entries)
        hasher = RangeHasher([leaf_hash(e) for e in self.entries])
        header = BlockHeader(chain="main", height=0, time=self.time, prev=ZERO_HASH, first=0,
                             count=n, size=n, root=hasher(0, n), proposer="node-1").encode()
        return bundle_document(Subject(device), (header, [("node-1", self.node.sign(header))]),
                               self.pki.ca_cert,
                               [(i, e, inclusion_proof(i, n, hasher))
                                for i, e in enumerate(self.entries)])


# -- real chains -------------------------------------------------------------------------------

def test_a_rotated_device_proves_old_and_new_readings(tmp_path: Path) -> None:
    a = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "ledger.sqlite", [a])  # block 0: genesis 0, enrolment 1
    tc.apply([a.message(a.reading()) for _ in range(3)])  # block 1: 2, 3, 4
    old, new = a.signer, SoftwareSigner.generate()
    done = tc.apply(admin=[tc.pki.rotate("truck-1", new, old.kid)])  # block 2: rotation 5
    assert [x.status for x in done.admin] == ["accepted"], done.admin
    a.signer = new
    tc.apply([a.message(a.reading()) for _ in range(3)])  # block 3: 6, 7, 8
    tc.store.close()
    conn = open_reader(tmp_path / "ledger.sqlite")
    bundle = bundle_for_device(conn, "truck-1")
    before = bundle_for_device(conn, "truck-1", height=1)  # the rotation is not in that tree
    conn.close()
    assert [e["index"] for e in bundle["entries"]] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert len(bundle["blocks"]) == 2  # blocks 0 and 2: when the keys were put on the log
    report = check(bundle, ca=tc.pki.ca_cert)
    assert report.ok, describe(report)
    assert [p.reading.seq for p in report.readings["truck-1"]] == [1, 2, 3, 4, 5, 6]
    history = report.devices["truck-1"]
    assert history.enrolled == 1 and history.rotations == [5] and history.revoked is None
    text = describe(report)
    assert "2 operator entries (1 enrolment, 1 rotation)" in text
    assert "note: truck-1: key rotated by the operator entry at index 5" in text
    assert [e["index"] for e in before["entries"]] == [0, 1, 2, 3, 4] and before["blocks"] == [
        before["blocks"][0]]
    assert check(before).ok


def test_a_revoked_device_is_named_revoked(tmp_path: Path) -> None:
    a = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "ledger.sqlite", [a])
    tc.apply([a.message(a.reading()) for _ in range(2)])
    tc.apply(admin=[tc.pki.revoke("truck-1", "stolen")])
    late = tc.apply([a.message(a.reading())])
    assert late.rejected == {"revoked_device": 1}  # the node refuses readings after it
    tc.store.close()
    conn = open_reader(tmp_path / "ledger.sqlite")
    bundle = bundle_for_device(conn, "truck-1")
    conn.close()
    report = check(bundle, node_key=tc.node.public_key_der())
    assert report.ok, describe(report)
    assert report.devices["truck-1"].revoked == 4
    assert ("truck-1: REVOKED by the operator entry at index 4 (stolen); readings logged "
            "before it stand") in report.notes


def test_batched_readings_are_proven_like_single_ones(tmp_path: Path) -> None:
    from tests.test_batch_envelopes import batch_of
    from trustfleet.topics import encode_batch

    a = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "ledger.sqlite", [a])
    single = a.reading()
    items = batch_of(a, 5)  # seq 2..6, one signature
    a.prev = hashlib.sha256(cbor.loads_strict(items[-1]).value[3]).digest()
    done = tc.apply([a.message(single), a.message(encode_batch(items)),
                     a.message(a.reading())])
    assert done.accepted == 7, done.rejected
    tc.store.close()
    conn = open_reader(tmp_path / "ledger.sqlite")
    bundle = bundle_for_device(conn, "truck-1")
    conn.close()
    report = check(bundle, ca=tc.pki.ca_cert)
    assert report.ok, describe(report)
    assert [(p.reading.seq, p.batched) for p in report.readings["truck-1"]] == [
        (1, False), *((seq, True) for seq in range(2, 7)), (7, False)]
    assert report.notes == []  # prev links hold across the modes


def test_a_batched_reading_outside_its_signed_batch_is_refused() -> None:
    """A node that logs a batched reading whose payload is not the one the device signed."""
    from tests.test_batch_envelopes import batch_of

    pki, a = SoftPKI(), Device("truck-1")
    items = batch_of(a, 3)
    batch, index, proof, payload = cbor.loads_strict(items[1]).value
    changed = payload.replace(b"\xf9\x45\x00", b"\xf9\x46\x00")  # 5.0 -> 6.0 degrees
    assert changed != payload
    forged = cbor.dumps(cbor2.CBORTag(TAG_BATCHED_READING, [batch, index, proof, changed]))
    report = check(RogueLog(pki).add(pki.enrol("truck-1", a.signer), items[0], forged,
                                     items[2]).bundle())
    assert reasons(report) == ["bad_entry"], describe(report)
    assert "batch_proof: the reading is not in the signed batch root" in \
        report.problems[0].detail


def test_without_block_headers_certificates_are_checked_at_their_not_before(
        tmp_path: Path) -> None:
    a = Device("truck-1")
    tc = ChainUnderTest(tmp_path / "ledger.sqlite", [a])
    tc.apply([a.message(a.reading())])
    tc.store.close()
    conn = open_reader(tmp_path / "ledger.sqlite")
    bundle = bundle_for_device(conn, "truck-1")
    conn.close()
    bundle["blocks"] = []
    report = check(bundle)
    assert report.ok, describe(report)
    assert report.notes == [
        "entries[1] (index 1), device_enrolled of 'truck-1': the header of the block that "
        "logged it is not in the bundle, so its certificates were checked at their notBefore, "
        "not at the ledger time"]


def test_a_forged_fleet_passes_only_unpinned(tmp_path: Path) -> None:
    """A forger runs the real node software with a CA, operator and node key of their own:
    the bundle is internally consistent, and only a pin tells it from the real fleet's."""
    real = SoftPKI()
    real_one, _, real_node = two_truck_bundles(tmp_path / "real.sqlite", real)
    forged, _, _ = two_truck_bundles(tmp_path / "forged.sqlite", SoftPKI())
    report = check(forged)
    assert report.ok, describe(report)
    assert "NOT pinned: the fleet CA and the node key came from the bundle itself" in \
        describe(report)
    report = check(forged, ca=real.ca_cert)
    assert reasons(report) == ["wrong_ca"], describe(report)
    assert "FAILED [wrong_ca] certificates.ca: the bundle's fleet CA" in describe(report)
    assert set(reasons(check(forged, node_key=real_node))) == {"bad_node_signature"}
    assert check(real_one, ca=real.ca_cert, node_key=real_node).ok


def test_a_node_certificate_from_the_fleet_ca_vouches_for_the_head() -> None:
    """Room left for node certificates (genesis entries do not carry one yet): with a node
    certificate issued by the pinned CA, the head is certified too and nothing is left to pin."""
    pki, a = SoftPKI(), Device("truck-1")
    log = RogueLog(pki).add(pki.enrol("truck-1", a.signer), a.reading())
    bundle = log.bundle()
    bundle["certificates"]["nodes"] = [{"node": "node-1",
                                        "cert": b64(pki.issue(log.node, "node-1", "node"))}]
    report = check(bundle, ca=pki.ca_cert)
    assert report.ok, describe(report)
    assert report.key_source == "the node certificate issued by the fleet CA"
    assert "trust:" not in describe(report)
    # the certified key is the one the head must verify with
    stranger = SoftwareSigner.generate()
    bundle["certificates"]["nodes"][0]["cert"] = b64(pki.issue(stranger, "node-1", "node"))
    assert reasons(check(bundle)) == ["bad_node_signature"]
    bundle["certificates"]["nodes"][0]["cert"] = b64(pki.issue(log.node, "node-1", "device"))
    assert reasons(check(bundle)) == ["node_cert_role"]


# -- logs a dishonest node signed ----------------------------------------------------------------

def test_an_honest_rogue_log_verifies() -> None:
    """The helper itself: a log with nothing wrong in it checks out."""
    pki, a = SoftPKI(), Device("truck-1")
    report = check(RogueLog(pki).add(pki.enrol("truck-1", a.signer), a.reading()).bundle())
    assert report.ok, describe(report)


def test_a_device_certificate_from_another_ca_is_refused() -> None:
    pki, other, a = SoftPKI(), SoftPKI(), Device("truck-1")
    cert = other.issue(a.signer, "truck-1", "device")
    enrol = pki.signed({"type": DEVICE_ENROLLED, "dev": "truck-1", "fleet": FLEET,
                        "cert": cert})  # signed by the real operator
    report = check(RogueLog(pki).add(enrol, a.reading(), a.reading()).bundle())
    assert reasons(report) == ["device_cert_chain", "missing_enrolment"], describe(report)
    first, second = report.problems
    assert first.where == "entries[1] (index 1), device_enrolled of 'truck-1'"
    assert first.detail.startswith("device certificate: cert_chain:")
    assert second.where == "device 'truck-1' (2 readings, index 2..3)"
    assert "the operator entry about 'truck-1' at index 1 failed (cert_chain)" in \
        second.detail


def test_an_operator_entry_signed_by_a_device_certificate_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    device_cert = pki.issue(a.signer, "truck-1", "device")
    enrol = pki.signed({"type": DEVICE_ENROLLED, "dev": "truck-1", "fleet": FLEET,
                        "cert": device_cert}, signer=a.signer, cert=device_cert)
    report = check(RogueLog(pki).add(enrol, a.reading()).bundle())
    assert reasons(report) == ["not_operator", "missing_enrolment"], describe(report)
    assert "certificate is for a device, expected a operator" in report.problems[0].detail


def test_an_operator_certificate_expired_when_its_entry_was_logged_is_refused() -> None:
    pki, a, late = SoftPKI(), Device("truck-1"), SoftwareSigner.generate()
    cert = pki.issue(late, "operator-2", "operator", not_before=T0, not_after=T - 60_000)
    enrol = pki.signed({"type": DEVICE_ENROLLED, "dev": "truck-1", "fleet": FLEET,
                        "cert": pki.issue(a.signer, "truck-1", "device")}, signer=late,
                       cert=cert)
    report = check(RogueLog(pki).add(enrol, a.reading()).bundle())
    assert reasons(report)[0] == "operator_cert_expired", describe(report)


def test_a_reading_signed_with_a_rotated_away_key_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    old, new = a.signer, SoftwareSigner.generate()
    log = RogueLog(pki).add(pki.enrol("truck-1", old), a.reading())   # 1, 2: fine
    log.add(pki.rotate("truck-1", new, old.kid))                      # 3
    stale = a.reading()                                               # 4: old key, after 3
    a.signer = new
    log.add(stale, a.reading())                                       # 5: new key, fine
    report = check(log.bundle())
    assert reasons(report) == ["rotated_key"], describe(report)
    assert report.problems[0].where == "entries[4] (index 4), 'truck-1' seq 2"
    assert "a key that the rotation at index 3 retired before this reading" in \
        report.problems[0].detail
    assert [p.reading.seq for p in report.readings["truck-1"]] == [1, 3]


def test_a_reading_signed_with_the_new_key_before_the_rotation_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    old, new = a.signer, SoftwareSigner.generate()
    a.signer = new
    early = a.reading()
    report = check(RogueLog(pki).add(pki.enrol("truck-1", old), early,
                                     pki.rotate("truck-1", new, old.kid)).bundle())
    assert reasons(report) == ["enrolled_after_reading"], describe(report)
    assert "put on the log by the operator entry at index 3, after the reading" in \
        report.problems[0].detail


def test_a_reading_before_the_enrolment_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    report = check(RogueLog(pki).add(a.reading(), pki.enrol("truck-1", a.signer)).bundle())
    assert reasons(report) == ["enrolled_after_reading"], describe(report)


def test_a_reading_after_the_revocation_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    report = check(RogueLog(pki).add(pki.enrol("truck-1", a.signer), a.reading(),
                                     pki.revoke("truck-1"), a.reading()).bundle())
    assert reasons(report) == ["revoked_device"], describe(report)
    assert report.problems[0].where == "entries[4] (index 4), 'truck-1' seq 2"
    assert "revoked by the operator entry at index 3, before this reading" in \
        report.problems[0].detail


def test_a_reading_signed_with_another_devices_key_is_refused() -> None:
    pki, a, b = SoftPKI(), Device("truck-1"), Device("truck-2")
    a.signer = b.signer  # names truck-1, signed with truck-2's enrolled key
    report = check(RogueLog(pki).add(pki.enrol("truck-1", SoftwareSigner.generate()),
                                     pki.enrol("truck-2", b.signer), a.reading()).bundle())
    assert reasons(report) == ["device_mismatch"], describe(report)
    assert "the payload names 'truck-1', but its key" in report.problems[0].detail


def test_a_rotation_of_a_key_already_retired_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    k1, k2, k3 = a.signer, SoftwareSigner.generate(), SoftwareSigner.generate()
    report = check(RogueLog(pki).add(pki.enrol("truck-1", k1), pki.rotate("truck-1", k2, k1.kid),
                                     pki.rotate("truck-1", k3, k1.kid)).bundle())
    assert reasons(report) == ["stale_rotation"], describe(report)
    assert report.problems[0].where == f"entries[3] (index 3), {DEVICE_ROTATED} of 'truck-1'"


def test_a_node_made_enrolment_with_a_raw_key_is_not_an_operator_entry() -> None:
    """The version-1 enrolment (a CBOR map with the raw key, no certificate, no operator)."""
    pki, a = SoftPKI(), Device("truck-1")
    spki = a.signer.public_key_der()
    legacy = cbor.dumps({"type": DEVICE_ENROLLED, "dev": "truck-1", "fleet": FLEET,
                         "key": spki, "kid": hashlib.sha256(spki).digest()})
    report = check(RogueLog(pki).add(legacy, a.reading()).bundle())
    assert reasons(report) == ["bad_operator_entry", "missing_enrolment"], describe(report)


def test_an_operator_entry_with_a_broken_signature_is_refused() -> None:
    pki, a = SoftPKI(), Device("truck-1")
    protected, unprotected, payload, signature = cbor2.loads(pki.enrol("truck-1", a.signer)).value
    broken = bytes([signature[0] ^ 1]) + signature[1:]
    entry = cbor.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, broken]))
    report = check(RogueLog(pki).add(entry, a.reading()).bundle())
    assert reasons(report) == ["bad_operator_signature", "missing_enrolment"], describe(report)


@pytest.mark.parametrize("entry", ["genesis_again", "contract"])
def test_entries_a_bundle_does_not_carry_are_named(entry: str) -> None:
    pki = SoftPKI()
    log = RogueLog(pki)
    data = log.entries[0] if entry == "genesis_again" else cbor.dumps({"type": "contract"})
    report = check(log.add(data).bundle(device=None))
    assert reasons(report) == ["bad_genesis" if entry == "genesis_again" else
                               "unsupported_entry"], describe(report)
