"""Broken twins of a good proof bundle: each one fails offline verification with a named reason.

As transparency-dev/merkle's test data does for proofs, every twin changes one thing (a flipped
bit, a truncated proof, a swapped key or reading, ...) and the verifier must name that thing.
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
from ledger_node.bundle import bundle_for_device
from ledger_node.bundle_verify import BundleReport, describe, verify_bundle
from ledger_node.store import open_reader
from tests.chainkit import ChainUnderTest, Device

Bundle = dict[str, Any]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle, bytes]:
    """(truck-1's bundle, truck-2's bundle, node key), both bundles against the same head."""
    db = tmp_path_factory.mktemp("tamper") / "ledger.sqlite"
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(db, [a, b])
    for _ in range(4):
        tc.apply([a.message(a.reading()), b.message(b.reading()), a.message(a.reading())])
    tc.store.close()
    conn = open_reader(db)
    one, two = bundle_for_device(conn, "truck-1"), bundle_for_device(conn, "truck-2")
    conn.close()
    return one, two, tc.node.public_key_der()


def flip(b64: str, byte: int = -1, bit: int = 0) -> str:
    data = bytearray(base64.b64decode(b64))
    data[byte] ^= 1 << bit
    return base64.b64encode(bytes(data)).decode()


def readings(bundle: Bundle) -> list[dict[str, Any]]:
    enrolments = {d["enrolment"] for d in bundle["devices"]}
    return [e for e in bundle["entries"] if e["index"] not in enrolments]


def check(bundle: Bundle | bytes, pinned: bytes | None = None) -> BundleReport:
    raw = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    return verify_bundle(raw, pinned_node_key=pinned)


def test_the_untouched_bundles_verify(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, two, node_key = bundles
    for bundle in (one, two):
        report = check(bundle, node_key)
        assert report.ok, describe(report)
    report = check(one)
    assert [p.reading.seq for p in report.readings["truck-1"]] == list(range(1, 9))
    assert "NOT pinned" in describe(report)


# -- the twins: (mutation, reason of the first failure, words the explanation must contain) -----

def _flip_entry_bit(b: Bundle) -> None:
    readings(b)[2]["data"] = flip(readings(b)[2]["data"], byte=20)


def _flip_proof_bit(b: Bundle) -> None:
    readings(b)[2]["proof"][1] = flip(readings(b)[2]["proof"][1], byte=7, bit=3)


def _flip_header_root_bit(b: Bundle) -> None:
    b["head"]["header"] = flip(b["head"]["header"], byte=-40)  # inside the "root" value


def _flip_header_structure_bit(b: Bundle) -> None:
    b["head"]["header"] = flip(b["head"]["header"], byte=0)  # the map's length


def _flip_signature_bit(b: Bundle) -> None:
    sig = b["head"]["signatures"][0]
    sig["sig"] = flip(sig["sig"], byte=10)


def _truncate_proof(b: Bundle) -> None:
    readings(b)[2]["proof"].pop()


def _extend_proof(b: Bundle) -> None:
    readings(b)[2]["proof"].append(readings(b)[2]["proof"][0])


def _change_entry_index(b: Bundle) -> None:
    taken = {e["index"] for e in b["entries"]}
    entry = next(e for e in readings(b) if e["index"] + 1 not in taken)
    entry["index"] += 1


def _index_beyond_the_tree(b: Bundle) -> None:
    b["entries"][-1]["index"] = 1000


def _swap_node_key(b: Bundle) -> None:
    b["node_keys"][0]["spki"] = base64.b64encode(SoftwareSigner.generate().public_key_der()
                                                 ).decode()


def _drop_signature(b: Bundle) -> None:
    b["head"]["signatures"] = []


def _drop_enrolment_entry(b: Bundle) -> None:
    b["entries"] = [e for e in b["entries"] if e["index"] != b["devices"][0]["enrolment"]]


def _swap_device_key(b: Bundle) -> None:
    b["devices"][0]["spki"] = base64.b64encode(SoftwareSigner.generate().public_key_der()
                                               ).decode()


def _point_device_at_another_entry(b: Bundle) -> None:
    b["devices"][0]["enrolment"] = readings(b)[0]["index"]


def _narrow_the_subject(b: Bundle) -> None:
    b["subject"]["from"] = 1_763_700_000_003  # readings 1 and 2 are older


def _duplicate_an_entry(b: Bundle) -> None:
    b["entries"].insert(1, copy.deepcopy(b["entries"][1]))


def _add_certificates(b: Bundle) -> None:
    b["certificates"] = []


def _non_canonical_base64(b: Bundle) -> None:
    # same 32 bytes, but with a pad bit set: a second spelling of one value is refused
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    text = readings(b)[0]["proof"][0]
    readings(b)[0]["proof"][0] = text[:-2] + alphabet[alphabet.index(text[-2]) ^ 1] + "="


TWINS: list[tuple[Callable[[Bundle], None], str, list[str]]] = [
    (_flip_entry_bit, "bad_inclusion_proof", ["entries[3]", "signed header of block 4"]),
    (_flip_proof_bit, "bad_inclusion_proof", ["entries[3]", "recompute root"]),
    (_flip_header_root_bit, "bad_node_signature", ["head", "signature of node 'node-1'"]),
    (_flip_header_structure_bit, "bad_header", ["head.header", "block header is not CBOR"]),
    (_flip_signature_bit, "bad_node_signature", ["does not verify with the key in the doc"]),
    (_truncate_proof, "bad_inclusion_proof", ["proof has", "want"]),
    (_extend_proof, "bad_inclusion_proof", ["proof has", "want"]),
    (_change_entry_index, "bad_inclusion_proof", ["recompute root"]),
    (_index_beyond_the_tree, "index_out_of_range", ["index 1000", "has 15 entries"]),
    (_swap_node_key, "bad_node_signature", ["signature of node 'node-1' over block 4"]),
    (_drop_signature, "missing_signature", ["no signature by the block's proposer 'node-1'"]),
    (_drop_enrolment_entry, "missing_enrolment", ["device 'truck-1'", "is not in the bundle"]),
    (_swap_device_key, "enrolment_mismatch", ["device 'truck-1'", "not the key enrolment"]),
    (_point_device_at_another_entry, "enrolment_mismatch", ["is not the enrolment of"]),
    (_narrow_the_subject, "outside_range", ["'truck-1' seq 1", "outside the bundle's range"]),
    (_duplicate_an_entry, "bad_field", ["strictly increasing index order"]),
    (_add_certificates, "bad_field", ["unknown field(s): certificates"]),
    (_non_canonical_base64, "bad_field", ["not canonical base64"]),
]


@pytest.mark.parametrize("mutate, reason, words", TWINS, ids=[t[0].__name__[1:] for t in TWINS])
def test_broken_twin_fails_with_a_named_reason(bundles: tuple[Bundle, Bundle, bytes],
                                               mutate: Callable[[Bundle], None], reason: str,
                                               words: list[str]) -> None:
    twin = copy.deepcopy(bundles[0])
    mutate(twin)
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
    assert [p.reason for p in report.problems] == ["unknown_device_key"], describe(report)
    assert "'truck-2' seq 1" in report.problems[0].where
    # ...and with truck-2's key and enrolment smuggled in too, the subject still gives it away
    twin["devices"] += two["devices"]
    twin["entries"] = sorted(twin["entries"] + [e for e in two["entries"]
                                                if e["index"] == two["devices"][0]["enrolment"]],
                             key=lambda e: e["index"])
    report = check(twin)
    assert [p.reason for p in report.problems] == ["wrong_device"], describe(report)
    assert "the bundle is about 'truck-1'" in report.problems[0].detail


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
    for version in (2, 0, "1", True, None):
        twin = copy.deepcopy(bundles[0])
        twin["version"] = version
        report = check(twin)
        assert [p.reason for p in report.problems] == ["unsupported_version"]
        assert f"{version!r}; this verifier reads version 1 only" in report.problems[0].detail


def test_a_pinned_key_decides_who_signed(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    one, _, node_key = bundles
    assert check(one, node_key).key_source == "the pinned node key"
    report = check(one, SoftwareSigner.generate().public_key_der())
    assert [p.reason for p in report.problems] == ["bad_node_signature"]
    assert "does not verify with the pinned key" in report.problems[0].detail
    # a forger who swaps the bundle's key and re-signs the head still fails against the pin
    forger = SoftwareSigner.generate()
    twin = copy.deepcopy(one)
    header = base64.b64decode(twin["head"]["header"])
    twin["head"]["signatures"][0]["sig"] = base64.b64encode(forger.sign(header)).decode()
    twin["node_keys"][0]["spki"] = base64.b64encode(forger.public_key_der()).decode()
    assert check(twin).ok  # internally consistent...
    assert not check(twin, node_key).ok  # ...but not signed by the node you trust


def test_every_independent_failure_is_listed(bundles: tuple[Bundle, Bundle, bytes]) -> None:
    twin = copy.deepcopy(bundles[0])
    _flip_proof_bit(twin)
    _flip_signature_bit(twin)
    _narrow_the_subject(twin)
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
