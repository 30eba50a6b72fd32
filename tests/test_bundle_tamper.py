"""Broken twins of a good proof bundle: each one fails offline verification with a named reason.

As transparency-dev/merkle's test data does for proofs, every twin changes one thing (a flipped
bit, a truncated proof, a swapped certificate, entry or reading, ...) and the verifier must name
that thing. Logs that a dishonest node signed (content the node should have refused, with valid
proofs) are in tests/test_bundle_certs.py.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsm import SoftwareSigner
from ledger_node.admin import DEVICE_ENROLLED
from ledger_node.bundle_verify import BundleReport, describe, verify_bundle
from ledger_node.entries import KIND_READING, admin_kind
from tests.pki import SoftPKI

Bundle = dict[str, Any]
PKI = SoftPKI()  # the fleet CA and operator of the chain the bundles come from
OTHER = SoftPKI()  # another fleet's CA and operator


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle, bytes]:
    """(truck-1's bundle, truck-2's bundle, node key), both bundles against the same head.

    Block 0: genesis (0), enrolments of truck-1 (1) and truck-2 (2); blocks 1-4: readings
    a, b, a each (truck-1 at 3, 5, 6, 8, 9, 11, 12, 14)."""
    from tests.test_bundle_certs import two_truck_bundles

    return two_truck_bundles(tmp_path_factory.mktemp("tamper") / "ledger.sqlite", PKI)


def flip(b64: str, byte: int = -1, bit: int = 0) -> str:
    data = bytearray(base64.b64decode(b64))
    data[byte] ^= 1 << bit
    return base64.b64encode(bytes(data)).decode()


def flip_root(header_b64: str) -> str:
    """Flip a bit inside a block header's "root" value (CBOR: text "root", bstr of 32)."""
    at = base64.b64decode(header_b64).index(b"\x64root\x58\x20") + 7
    return flip(header_b64, byte=at + 9)


def readings(bundle: Bundle) -> list[dict[str, Any]]:
    return [e for e in bundle["entries"] if kind(e) == KIND_READING]


def kind(entry: dict[str, Any]) -> str:
    return admin_kind(base64.b64decode(entry["data"]))


def enrolment(bundle: Bundle) -> dict[str, Any]:
    return next(e for e in bundle["entries"] if kind(e) == DEVICE_ENROLLED)


def check(bundle: Bundle | bytes, pinned: bytes | None = None,
          ca: bytes | None = None) -> BundleReport:
    raw = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    return verify_bundle(raw, pinned_node_key=pinned, pinned_ca=ca)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_untouched_bundles_verify(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, two, node_key = bundles
    for bundle in (one, two):
        for pins in ({"pinned": node_key}, {"ca": PKI.ca_cert}, {}):
            report = check(bundle, **pins)
            assert report.ok, describe(report)
    report = check(one)
    assert [p.reading.seq for p in report.readings["truck-1"]] == list(range(1, 9))
    assert [e["index"] for e in one["entries"]] == [0, 1, 3, 5, 6, 8, 9, 11, 12, 14]
    assert "NOT pinned" in describe(report)
    assert "trust: the fleet CA is pinned" in describe(check(one, ca=PKI.ca_cert))


# -- the twins: (mutation, reason of the first failure, words the explanation must contain) -----
# A mutation gets the bundle to change and, for twins that borrow from it, truck-2's bundle.

def _flip_entry_bit(b: Bundle, _: Bundle) -> None:
    readings(b)[2]["data"] = flip(readings(b)[2]["data"], byte=20)


def _flip_proof_bit(b: Bundle, _: Bundle) -> None:
    readings(b)[2]["proof"][1] = flip(readings(b)[2]["proof"][1], byte=7, bit=3)


def _flip_header_root_bit(b: Bundle, _: Bundle) -> None:
    b["head"]["header"] = flip_root(b["head"]["header"])


def _flip_header_structure_bit(b: Bundle, _: Bundle) -> None:
    b["head"]["header"] = flip(b["head"]["header"], byte=0)  # the map's length


def _flip_signature_bit(b: Bundle, _: Bundle) -> None:
    sig = b["head"]["signatures"][0]
    sig["sig"] = flip(sig["sig"], byte=10)


def _truncate_proof(b: Bundle, _: Bundle) -> None:
    readings(b)[2]["proof"].pop()


def _extend_proof(b: Bundle, _: Bundle) -> None:
    readings(b)[2]["proof"].append(readings(b)[2]["proof"][0])


def _change_entry_index(b: Bundle, _: Bundle) -> None:
    taken = {e["index"] for e in b["entries"]}
    entry = next(e for e in readings(b) if e["index"] + 1 not in taken)
    entry["index"] += 1


def _index_beyond_the_tree(b: Bundle, _: Bundle) -> None:
    b["entries"][-1]["index"] = 1000


def _head_signed_by_a_stranger(b: Bundle, _: Bundle) -> None:
    # v1 swapped the bundle's node key; v2 takes it from the genesis entry, which is proven
    header = base64.b64decode(b["head"]["header"])
    b["head"]["signatures"][0]["sig"] = b64(SoftwareSigner.generate().sign(header))


def _drop_signature(b: Bundle, _: Bundle) -> None:
    b["head"]["signatures"] = []


def _drop_genesis_entry(b: Bundle, _: Bundle) -> None:
    b["entries"] = b["entries"][1:]


def _drop_enrolment_entry(b: Bundle, _: Bundle) -> None:
    b["entries"].remove(enrolment(b))


def _swap_the_enrolment_for_another_key(b: Bundle, _: Bundle) -> None:
    # an enrolment of truck-1 for another key, signed by the real operator: not what was logged
    enrolment(b)["data"] = b64(PKI.enrol("truck-1", SoftwareSigner.generate()))


def _enrolment_of_another_device(b: Bundle, two: Bundle) -> None:
    # truck-2's real enrolment, with its valid proof, instead of truck-1's
    b["entries"][1] = copy.deepcopy(enrolment(two))


def _narrow_the_subject(b: Bundle, _: Bundle) -> None:
    b["subject"]["from"] = 1_763_700_000_003  # readings 1 and 2 are older


def _duplicate_an_entry(b: Bundle, _: Bundle) -> None:
    b["entries"].insert(1, copy.deepcopy(b["entries"][1]))


def _add_a_version_1_field(b: Bundle, _: Bundle) -> None:
    b["devices"] = []


def _non_canonical_base64(b: Bundle, _: Bundle) -> None:
    # same 32 bytes, but with a pad bit set: a second spelling of one value is refused
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    text = readings(b)[0]["proof"][0]
    readings(b)[0]["proof"][0] = text[:-2] + alphabet[alphabet.index(text[-2]) ^ 1] + "="


def _another_fleets_ca(b: Bundle, _: Bundle) -> None:
    b["certificates"]["ca"] = b64(OTHER.ca_cert)


def _a_ca_that_is_no_ca(b: Bundle, _: Bundle) -> None:
    b["certificates"]["ca"] = b64(PKI.operator_cert)


def _flip_block_header_bit(b: Bundle, _: Bundle) -> None:
    b["blocks"][0]["header"] = flip_root(b["blocks"][0]["header"])


def _truncate_block_consistency_proof(b: Bundle, _: Bundle) -> None:
    b["blocks"][0]["consistency"].pop()


def _node_certificate_from_another_ca(b: Bundle, _: Bundle) -> None:
    cert = OTHER.issue(SoftwareSigner.generate(), "node-1", "node")
    b["certificates"]["nodes"] = [{"node": "node-1", "cert": b64(cert)}]


TWINS: list[tuple[Callable[[Bundle, Bundle], None], str, list[str]]] = [
    (_flip_entry_bit, "bad_inclusion_proof", ["entries[4]", "signed header of block 4"]),
    (_flip_proof_bit, "bad_inclusion_proof", ["entries[4]", "recompute root"]),
    (_flip_header_root_bit, "bad_node_signature", ["head", "signature of node 'node-1'"]),
    (_flip_header_structure_bit, "bad_header", ["head.header", "block header is not CBOR"]),
    (_flip_signature_bit, "bad_node_signature", ["does not verify with the key in the doc"]),
    (_truncate_proof, "bad_inclusion_proof", ["proof has", "want"]),
    (_extend_proof, "bad_inclusion_proof", ["proof has", "want"]),
    (_change_entry_index, "bad_inclusion_proof", ["recompute root"]),
    (_index_beyond_the_tree, "index_out_of_range", ["index 1000", "has 15 entries"]),
    (_head_signed_by_a_stranger, "bad_node_signature", ["of node 'node-1' over block 4"]),
    (_drop_signature, "missing_signature", ["no signature by the block's proposer 'node-1'"]),
    (_drop_genesis_entry, "missing_genesis", ["the genesis entry (index 0)", "not in the b"]),
    (_drop_enrolment_entry, "missing_enrolment",
     ["device 'truck-1' (8 readings, index 3..14)", "no enrolment of 'truck-1' precedes"]),
    (_swap_the_enrolment_for_another_key, "bad_inclusion_proof", ["entries[1] (index 1)"]),
    (_enrolment_of_another_device, "missing_enrolment", ["device 'truck-1'"]),
    (_narrow_the_subject, "outside_range", ["'truck-1' seq 1", "outside the bundle's range"]),
    (_duplicate_an_entry, "bad_field", ["strictly increasing index order"]),
    (_add_a_version_1_field, "bad_field", ["unknown field(s): devices"]),
    (_non_canonical_base64, "bad_field", ["not canonical base64"]),
    (_another_fleets_ca, "ca_mismatch", ["entries[0] (index 0)", "names another fleet CA"]),
    (_a_ca_that_is_no_ca, "bad_ca", ["certificates.ca", "the fleet CA certificate is unusable"]),
    (_flip_block_header_bit, "bad_node_signature", ["blocks[0] (block 0)", "over block 0"]),
    (_truncate_block_consistency_proof, "bad_proof", ["blocks[0] (block 0)", "consistency"]),
    (_node_certificate_from_another_ca, "node_cert_chain",
     ["certificates.nodes[0] ('node-1')", "node certificate: cert_chain"]),
]


@pytest.mark.parametrize("mutate, reason, words", TWINS, ids=[t[0].__name__[1:] for t in TWINS])
def test_broken_twin_fails_with_a_named_reason(bundles: tuple[Bundle, Bundle, bytes],
                                               mutate: Callable[[Bundle, Bundle], None],
                                               reason: str, words: list[str]) -> None:
    twin = copy.deepcopy(bundles[0])
    mutate(twin, bundles[1])
    report = check(twin)
    assert not report.ok
    first = report.problems[0]
    assert first.reason == reason, describe(report)
    for w in words:
        assert w in str(first), describe(report)
    assert f"FAILED [{reason}]" in describe(report)


def test_a_readings_swapped_for_another_devices_is_refused(
        bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, two, _ = bundles
    twin = copy.deepcopy(one)
    stranger = readings(two)[0]  # truck-2's reading, with its own valid inclusion proof
    twin["entries"] = sorted([e for e in twin["entries"] if e is not readings(twin)[0]]
                             + [stranger], key=lambda e: e["index"])
    report = check(twin)
    assert [p.reason for p in report.problems] == ["missing_enrolment"], describe(report)
    assert report.problems[0].where == f"device 'truck-2' (index {stranger['index']})"
    # ...and with truck-2's enrolment smuggled in too, the subject still gives it away
    twin["entries"] = sorted(twin["entries"] + [enrolment(two)], key=lambda e: e["index"])
    report = check(twin)
    assert [p.reason for p in report.problems] == ["wrong_device"], describe(report)
    assert "the bundle is about 'truck-1'" in report.problems[0].detail
    assert "'truck-2' seq 1" in report.problems[0].where


def test_a_bundle_may_prove_several_devices(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, two, _ = bundles
    twin = copy.deepcopy(one)
    twin["subject"]["device"] = None
    twin["entries"] = sorted(twin["entries"] + [enrolment(two), readings(two)[0]],
                             key=lambda e: e["index"])
    report = check(twin)
    assert report.ok, describe(report)
    assert sorted(report.readings) == ["truck-1", "truck-2"]


@pytest.mark.parametrize("raw, reason, words", [
    (b"", "bad_json", "not valid JSON"),
    (b"{\"format\": ", "bad_json", "not valid JSON"),
    (b"\xff\xfe", "bad_json", "not UTF-8"),
    (b"[]", "not_a_bundle", "\"format\" field"),
    (b"{\"format\": \"something-else\"}", "not_a_bundle", "'something-else'"),
    (b"{\"format\": \"trustfleet-proof-bundle\", \"format\": 1}", "bad_json", "duplicate key"),
    (b"{\"format\": \"trustfleet-proof-bundle\", \"version\": NaN}", "bad_json", "NaN"),
])
def test_documents_that_are_not_bundles_are_named(raw: bytes, reason: str, words: str) -> None:
    report = check(raw)
    assert [p.reason for p in report.problems] == [reason]
    assert words in str(report.problems[0])


def test_trailing_garbage_and_wrong_versions_are_refused(
        bundles: tuple[Bundle, Bundle, bytes]) -> None:
    raw = json.dumps(bundles[0]).encode()
    for tail in (b"x", b"{}", b"\x00"):
        report = check(raw + tail)
        assert [p.reason for p in report.problems] == ["bad_json"]
        assert "Extra data" in report.problems[0].detail or "not valid" in str(report.problems[0])
    for version in (1, 3, 0, "2", True, None):
        twin = copy.deepcopy(bundles[0])
        twin["version"] = version
        report = check(twin)
        assert [p.reason for p in report.problems] == ["unsupported_version"]
        assert f"{version!r}; this verifier reads version 2 only" in report.problems[0].detail
    twin["version"] = 1
    assert "ask the node for a new bundle" in check(twin).problems[0].detail


def test_a_pinned_key_decides_who_signed(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, _, node_key = bundles
    assert check(one, node_key).key_source == "the pinned node key"
    report = check(one, SoftwareSigner.generate().public_key_der())
    assert [(p.reason, p.where) for p in report.problems] == [
        ("bad_node_signature", "head"), ("bad_node_signature", "blocks[0] (block 0)")]
    assert "does not verify with the pinned key" in report.problems[0].detail
    # a forger who re-signs the head cannot swap the node key: the genesis entry names it, and
    # the genesis entry is proven by the head's tree (a whole forged log: test_bundle_certs.py)
    forger = SoftwareSigner.generate()
    twin = copy.deepcopy(one)
    header = base64.b64decode(twin["head"]["header"])
    twin["head"]["signatures"][0]["sig"] = b64(forger.sign(header))
    assert [p.reason for p in check(twin).problems] == ["bad_node_signature"]


def test_a_pinned_ca_decides_which_fleet(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, _, _ = bundles
    report = check(one, ca=PKI.ca_cert)
    assert report.ok and report.ca_source == "the pinned fleet CA"
    report = check(one, ca=OTHER.ca_cert)
    assert [p.reason for p in report.problems] == ["wrong_ca"], describe(report)
    assert "is not the CA you pinned" in report.problems[0].detail
    # swapping the bundle's CA for the pinned one does not help: the genesis names the real one
    twin = copy.deepcopy(one)
    _another_fleets_ca(twin, one)
    reasons = [p.reason for p in check(twin, ca=OTHER.ca_cert).problems]
    assert reasons == ["ca_mismatch", "operator_cert_chain", "missing_enrolment"], reasons


def test_every_independent_failure_is_listed(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    twin = copy.deepcopy(bundles[0])
    _flip_proof_bit(twin, twin)
    _flip_signature_bit(twin, twin)
    _narrow_the_subject(twin, twin)
    reasons = [p.reason for p in check(twin).problems]
    assert reasons == ["bad_node_signature", "bad_inclusion_proof", "outside_range",
                       "outside_range"]


def test_gaps_and_broken_links_are_noted_not_failed(
        bundles: tuple[Bundle, Bundle, bytes], tmp_path: Path) -> None:
    twin = copy.deepcopy(bundles[0])
    twin["entries"] = [e for e in twin["entries"] if e is not readings(twin)[3]]  # seq 4
    report = check(twin)
    assert report.ok
    assert report.notes == ["truck-1: seq 4 not in the bundle"]
