"""Offline verification of a proof bundle (docs/proof-bundle.md): no store, no network.

``verify_bundle(raw)`` checks, and names by a stable reason code whatever fails:
  1. the document: strict JSON, ``format``, ``version`` 1, exactly the v1 fields;
  2. the head: the header decodes (deterministic CBOR v1), the proposer's ES256 signature
     verifies with the pinned node key, or else with the key the bundle carries;
  3. every entry: its inclusion proof recomputes the header's root for the header's size;
  4. every device key: its enrolment entry is in the bundle (so proven by 3.) and names that
     device and exactly that key;
  5. every reading: a COSE_Sign1 whose kid is a bundled device key (kid = SHA-256 of the
     SPKI), whose payload names that device, whose ES256 signature verifies, enrolled before
     it in the log, and inside the bundle's subject (device, device-time range).
Structural failures (1., a head that does not decode, a malformed field) stop the check;
the others are all collected, so one run explains everything that is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hsm import load_public_key, verify_es256
from hsm.errors import HsmError
from ledger_node import entries as entry_types
from ledger_node.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
from ledger_node.errors import ProofError, RootMismatchError
from ledger_node.heads import (
    HASH_SIZE,
    CheckFailed,
    Head,
    b64_field,
    check_head_signatures,
    int_field,
    load_json,
    parse_head,
    parse_node_keys,
    want,
)
from ledger_node.merkle import leaf_hash, verify_inclusion
from trustfleet.cose import Sign1, decode_sign1
from trustfleet.payload import Reading, decode_payload

__all__ = ["BundleReport", "ProvenReading", "verify_bundle"]

_FIELDS = ("format", "version", "subject", "head", "node_keys", "devices", "entries")


@dataclass(frozen=True)
class _Entry:
    index: int
    data: bytes
    proof: tuple[bytes, ...]
    where: str


@dataclass(frozen=True)
class _Device:
    dev: str
    spki: bytes
    enrolment: int
    where: str


@dataclass(frozen=True)
class ProvenReading:
    """A reading whose inclusion, device key and device signature all verified."""

    index: int
    reading: Reading
    envelope_hash: bytes


@dataclass
class BundleReport:
    """What a bundle proved, or why it did not."""

    head: Head | None = None
    key_source: str = ""
    signed_by: str = ""
    subject: dict[str, Any] = field(default_factory=dict)
    entries: int = 0
    enrolments: int = 0
    readings: dict[str, list[ProvenReading]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[CheckFailed] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(raw: bytes, *, pinned_node_key: bytes | None = None,
                  expect_device: str | None = None) -> BundleReport:
    """Check a bundle's bytes; never raises for bad input (failures land in ``problems``)."""
    report = BundleReport()
    try:
        _verify(raw, pinned_node_key, expect_device, report)
    except CheckFailed as exc:
        report.problems.append(exc)
    return report


def _verify(raw: bytes, pinned: bytes | None, expect_device: str | None,
            report: BundleReport) -> None:
    doc = load_json(raw, "bundle")
    if not isinstance(doc, dict) or "format" not in doc:
        raise CheckFailed("not_a_bundle", "bundle", "a JSON object with a \"format\" field "
                          "was expected")
    if doc["format"] != BUNDLE_FORMAT:
        raise CheckFailed("not_a_bundle", "bundle.format", f"{doc['format']!r}, expected "
                          f"{BUNDLE_FORMAT!r}")
    version = doc.get("version")
    if version != BUNDLE_VERSION or isinstance(version, bool):
        raise CheckFailed("unsupported_version", "bundle.version", f"{version!r}; this "
                          f"verifier reads version {BUNDLE_VERSION} only")
    top = want(doc, "bundle", _FIELDS)
    subject = _subject(top["subject"])
    report.subject = subject
    head = report.head = parse_head(top["head"], "head", strict=True)
    node_keys = parse_node_keys(top["node_keys"], "node_keys")
    devices = _devices(top["devices"])
    entries = _entries(top["entries"])
    if expect_device is not None and subject["device"] != expect_device:
        report.problems.append(CheckFailed("wrong_device", "subject", f"the bundle is about "
                                           f"{subject['device']!r}, you asked for "
                                           f"{expect_device!r}"))
    report.key_source = ("the pinned node key" if pinned is not None else
                         "the node key carried in the bundle (NOT pinned)")
    try:
        report.signed_by = check_head_signatures(head, node_keys, pinned, "head")
    except CheckFailed as exc:
        report.problems.append(exc)

    proven: dict[int, _Entry] = {}
    for e in entries:
        try:
            _check_inclusion(e, head)
            proven[e.index] = e
        except CheckFailed as exc:
            report.problems.append(exc)
    report.entries = len(entries)
    by_index = {e.index: e for e in entries}
    keys = _check_devices(devices, by_index, proven, report)
    for e in entries:
        if e.index not in proven:
            continue  # already failed: what its bytes say is not evidence
        try:
            kind = entry_types.admin_kind(e.data)
        except ValueError as exc:  # WireError is a ValueError
            report.problems.append(CheckFailed("bad_entry", e.where, f"administrative entry "
                                               f"does not decode: {exc}"))
            continue
        if kind == entry_types.KIND_READING:
            _check_reading(e, keys, subject, report)
    _note_sequences(report)


def _subject(value: Any) -> dict[str, Any]:
    s = want(value, "subject", ("device", "from", "to"))
    if s["device"] is not None and not isinstance(s["device"], str):
        raise CheckFailed("bad_field", "subject.device", "must be a string or null")
    for name in ("from", "to"):
        if s[name] is not None:
            int_field(s[name], f"subject.{name}")
    return dict(s)


def _devices(value: Any) -> list[_Device]:
    if not isinstance(value, list):
        raise CheckFailed("bad_field", "devices", "must be an array")
    out: list[_Device] = []
    for i, item in enumerate(value):
        where = f"devices[{i}]"
        d = want(item, where, ("dev", "spki", "enrolment"))
        if not isinstance(d["dev"], str) or any(x.dev == d["dev"] for x in out):
            raise CheckFailed("bad_field", f"{where}.dev", "must be a device id listed once")
        out.append(_Device(d["dev"], b64_field(d["spki"], f"{where}.spki"),
                           int_field(d["enrolment"], f"{where}.enrolment"),
                           f"device {d['dev']!r}"))
    return out


def _entries(value: Any) -> list[_Entry]:
    if not isinstance(value, list):
        raise CheckFailed("bad_field", "entries", "must be an array")
    out: list[_Entry] = []
    for i, item in enumerate(value):
        at = f"entries[{i}]"
        e = want(item, at, ("index", "data", "proof"))
        index = int_field(e["index"], f"{at}.index")
        if out and index <= out[-1].index:
            raise CheckFailed("bad_field", f"{at}.index", f"{index} after {out[-1].index}: "
                              f"entries must be in strictly increasing index order")
        if not isinstance(e["proof"], list):
            raise CheckFailed("bad_field", f"{at}.proof", "must be an array")
        proof = tuple(b64_field(h, f"{at}.proof[{j}]", HASH_SIZE)
                      for j, h in enumerate(e["proof"]))
        out.append(_Entry(index, b64_field(e["data"], f"{at}.data"), proof,
                          f"entries[{i}] (index {index})"))
    return out


def _check_inclusion(e: _Entry, head: Head) -> None:
    size, root = head.header.size, head.header.root
    if e.index >= size:
        raise CheckFailed("index_out_of_range", e.where, f"the head's tree has {size} entries")
    try:
        verify_inclusion(leaf_hash(e.data), e.index, size, e.proof, root)
    except RootMismatchError as exc:
        raise CheckFailed("bad_inclusion_proof", e.where, f"entry and proof recompute root "
                          f"{exc.calculated_root.hex()}, but the signed header of block "
                          f"{head.header.height} has {root.hex()} (the entry, its index or "
                          f"the proof was changed)") from None
    except ProofError as exc:
        raise CheckFailed("bad_inclusion_proof", e.where, f"malformed for tree size {size}: "
                          f"{exc}") from None


def _check_devices(devices: list[_Device], by_index: Mapping[int, _Entry],
                   proven: Mapping[int, _Entry], report: BundleReport) -> dict[bytes, _Device]:
    """kid -> device for every device key the log proves; failures go to the report."""
    keys: dict[bytes, _Device] = {}
    for d in devices:
        enrolment = by_index.get(d.enrolment)
        try:
            if enrolment is None:
                raise CheckFailed("missing_enrolment", d.where, f"its enrolment entry (index "
                                  f"{d.enrolment}) is not in the bundle, so the log does not "
                                  f"prove its key")
            if d.enrolment not in proven:
                raise CheckFailed("missing_enrolment", d.where, f"its enrolment entry (index "
                                  f"{d.enrolment}) failed its inclusion proof")
            try:
                rec = entry_types.decode_admin(enrolment.data)
            except ValueError:
                rec = {}
            if rec.get("type") != entry_types.DEVICE_ENROLLED or rec.get("dev") != d.dev:
                raise CheckFailed("enrolment_mismatch", d.where, f"entry {d.enrolment} is not "
                                  f"the enrolment of {d.dev!r}")
            if rec.get("key") != d.spki:
                raise CheckFailed("enrolment_mismatch", d.where, f"the key listed is not the "
                                  f"key enrolment entry {d.enrolment} put on the log")
            try:
                load_public_key(d.spki)
            except HsmError as exc:
                raise CheckFailed("bad_device_key", d.where, str(exc)) from None
        except CheckFailed as exc:
            report.problems.append(exc)
            continue
        keys[hashlib.sha256(d.spki).digest()] = d
        report.enrolments += 1
    return keys


def _check_reading(e: _Entry, keys: Mapping[bytes, _Device], subject: Mapping[str, Any],
                   report: BundleReport) -> None:
    try:
        msg: Sign1 = decode_sign1(e.data)
        reading = decode_payload(msg.payload)
    except ValueError as exc:
        report.problems.append(CheckFailed("bad_entry", e.where, f"reading does not decode: "
                                           f"{exc}"))
        return
    what = f"{e.where}, {reading.dev!r} seq {reading.seq}"
    device = keys.get(msg.kid)
    problems = report.problems
    if device is None:
        problems.append(CheckFailed("unknown_device_key", what, f"signed with kid "
                                    f"{msg.kid.hex()[:16]}…, which is no device key the "
                                    f"bundle proves"))
        return
    if reading.dev != device.dev:
        problems.append(CheckFailed("device_mismatch", what, f"the payload names "
                                    f"{reading.dev!r}, but its key is enrolled for "
                                    f"{device.dev!r}"))
        return
    if not verify_es256(device.spki, msg.to_be_signed(), msg.signature):
        problems.append(CheckFailed("bad_device_signature", what, f"the ES256 signature does "
                                    f"not verify with {device.dev!r}'s enrolled key"))
        return
    if device.enrolment > e.index:
        problems.append(CheckFailed("enrolled_after_reading", what, f"the device's enrolment "
                                    f"(index {device.enrolment}) comes after it in the log"))
        return
    if subject["device"] is not None and reading.dev != subject["device"]:
        problems.append(CheckFailed("wrong_device", what, f"the bundle is about "
                                    f"{subject['device']!r}"))
        return
    lo, hi = subject["from"], subject["to"]
    if (lo is not None and reading.t < lo) or (hi is not None and reading.t >= hi):
        problems.append(CheckFailed("outside_range", what, f"device time {reading.t} is "
                                    f"outside the bundle's range [{lo}, {hi})"))
        return
    report.readings.setdefault(reading.dev, []).append(
        ProvenReading(e.index, reading, hashlib.sha256(e.data).digest()))


def _note_sequences(report: BundleReport) -> None:
    """Gaps and broken ``prev`` links between the bundle's readings are facts, not failures (the
    ledger accepts and flags them); they are noted so that an omission is visible."""
    for dev, proven in sorted(report.readings.items()):
        proven.sort(key=lambda p: p.reading.seq)
        gaps: list[str] = []
        unlinked: list[str] = []
        for a, b in pairwise(proven):
            sa, sb = a.reading.seq, b.reading.seq
            if sb - sa > 1:
                gaps.append(str(sa + 1) if sb - sa == 2 else f"{sa + 1}-{sb - 1}")
            elif b.reading.prev != a.envelope_hash:
                unlinked.append(str(sb))
        if gaps:
            report.notes.append(f"{dev}: seq {', '.join(gaps)} not in the bundle")
        if unlinked:
            report.notes.append(f"{dev}: the prev of seq {', '.join(unlinked)} is not the hash "
                                f"of the reading before it (the ledger flags prev_mismatch)")


def describe(report: BundleReport) -> str:
    """Human-readable result: every failure with its reason code, or what was proven."""
    if not report.ok:
        lines = [f"FAILED [{p.reason}] {p.where}: {p.detail}" for p in report.problems]
        lines.append(f"bundle NOT verified: {len(report.problems)} problem(s)")
        return "\n".join(lines)
    assert report.head is not None
    h = report.head.header
    subject = report.subject
    about = f"device {subject['device']!r}" if subject.get("device") else "the entries"
    lines = [f"OK: bundle about {about}, device time [{_bound(subject.get('from'))}, "
             f"{_bound(subject.get('to'))})",
             f"  head: block {h.height} of chain {h.chain!r}, tree size {h.size}, root "
             f"{h.root.hex()}, ledger time {h.time}",
             f"  signed by {report.signed_by}, checked with {report.key_source}",
             f"  {report.entries} entries, each included in that tree; {report.enrolments} "
             f"device key(s), each proven by its enrolment entry"]
    for dev, proven in sorted(report.readings.items()):
        times = [p.reading.t for p in proven]
        lines.append(f"  {dev}: {len(proven)} reading(s), seq {proven[0].reading.seq}-"
                     f"{proven[-1].reading.seq}, device time {min(times)}..{max(times)}, "
                     f"every device signature verified")
    lines += [f"  note: {n}" for n in report.notes]
    if "NOT pinned" in report.key_source:
        lines.append("  trust: the node key came from the bundle itself, so this shows the "
                     "bundle is intact and self-consistent, not who signed it. Pin the node's "
                     "public key (--node-key) obtained from its operator to make it evidence.")
    return "\n".join(lines)


def _bound(t: int | None) -> str:
    return "open" if t is None else str(t)
