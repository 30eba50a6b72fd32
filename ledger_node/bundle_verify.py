"""Offline verification of a proof bundle (docs/proof-bundle.md): no store, no network.

``verify_bundle(raw)`` checks a version-2 bundle, and names by a stable reason code whatever
fails (the doc's "Verifying a bundle, step by step" is the specification):
  1. the document: strict JSON, ``format``, ``version`` 2, exactly the v2 fields; the fleet CA
     certificate is a usable CA;
  2. the anchors: the bundle's CA is the pinned CA (when one is given); the genesis entry is
     entry 0; node certificates (none are logged yet) are issued by the CA;
  3. the head: every signature verifies with the pinned node key, else a node certificate's
     key, else the node key the genesis entry names; the genesis entry names the head's chain
     and exactly the bundle's CA;
  4. ``blocks``: each header is signed like the head, of the same chain, and its tree is a
     prefix of the head's (consistency proof): its ledger time is then the time of the
     operator entries it committed;
  5. every entry: its inclusion proof recomputes the head's root for the head's size;
  6. operator entries, in log order: signed by an operator certificate that chains to the CA
     (role operator), device certificates chain to the CA with role device and CN = the
     device id (hsm.check_certificate, through ledger_node.admin), all checked at the ledger
     time of the block that holds the entry (else at each certificate's notBefore, noted);
     they build each device's key history (enrolment, rotations, revocation) with the rules
     the node applies (ledger_node.admin.apply_operator_entry);
  7. every reading (single envelope or batched): its kid is its device's key at that point of
     the log (put there by an enrolment or rotation that precedes it, not retired by a rotation
     that precedes it, the device not revoked before it), its ES256 signature verifies, and it
     is inside the bundle's subject (device, device-time range).
Structural failures (1.) stop the check; the others are all collected, so one run explains
everything that is wrong.

A consortium chain's genesis entry names its node set (ledger_node.quorum). Then steps 3 and 4
require a **quorum certificate** instead of the proposer's signature: more than two thirds of
the node set must have signed the head (and each block) with the keys of their node
certificates, which must chain to the bundle's fleet CA (role node, CN = the node id, checked
at the genesis entry's time); every signature in the document must be by a node of the set
and verify (`no_quorum`, `bad_node_signature`, `no_node_key`, `bad_node_set`). A solo chain's
node set is its genesis node, quorum 1: as before. The node set changes by `node_set_changed`
operator entries: the bundle carries each one up to its head with the header of its block,
and they are applied in log order with the node's rules (ledger_node.quorum: checked at that
block's ledger time, in force from the next block), so that the head and every block are
checked against the set in force at their height.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from hsm import check_certificate, verify_es256
from hsm.certcheck import describe_certificate, load_ca_anchor
from hsm.errors import CERT_REASONS, CaCertificateInvalid, CertificateRejected
from ledger_node import entries as entry_types
from ledger_node.admin import (
    ADMIN_TYPES,
    BUSINESS_TYPES,
    CONSORTIUM_TYPES,
    DEVICE_ENROLLED,
    DEVICE_REVOKED,
    DEVICE_ROTATED,
    HEADER_X5CHAIN,
    NODE_SET_CHANGED,
    NOT_OPERATOR,
    AdminRejected,
    apply_operator_entry,
    decode_operator_entry,
    decode_operator_entry_unchecked,
)
from ledger_node.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
from ledger_node.consortium.errors import QuorumError
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
    want,
)
from ledger_node.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger_node.quorum import (
    GENESIS_NODES,
    NodeSet,
    NodeSetHistory,
    check_qc,
    node_set_change,
    node_set_from_genesis,
)
from ledger_node.validate import BAD_SIGNATURE, REVOKED_DEVICE, UNKNOWN_DEVICE, DeviceState
from ledger_node.world import AUDIT, NODE_ENTRY_TYPES, check_audit_entry
from trustfleet import cbor
from trustfleet.batch import open_reading
from trustfleet.cose import decode_sign1
from trustfleet.errors import WireError
from trustfleet.payload import Reading

__all__ = ["BundleReport", "DeviceHistory", "ProvenReading", "describe", "verify_bundle"]

_FIELDS: Final = ("format", "version", "subject", "head", "certificates", "blocks", "entries")


@dataclass(frozen=True)
class _Entry:
    index: int
    data: bytes
    proof: tuple[bytes, ...]
    where: str


@dataclass(frozen=True)
class _Block:
    head: Head
    consistency: tuple[bytes, ...]
    where: str


@dataclass(frozen=True)
class _Span:
    """Entries [first, size) were committed by block ``height`` at ledger time ``time``."""

    first: int
    size: int
    time: int
    height: int


@dataclass(frozen=True)
class ProvenReading:
    """A reading whose inclusion, device key and device signature all verified."""

    index: int
    reading: Reading
    chain_hash: bytes
    """What the next reading's ``prev`` names: SHA-256 of the envelope, or of the payload for a
    batched reading (trustfleet.batch)."""
    batched: bool = False


@dataclass
class DeviceHistory:
    """A device's key history as the bundle's operator entries prove it (leaf indexes)."""

    dev: str
    steps: list[tuple[int, DeviceState]] = field(default_factory=list)
    enrolled: int | None = None
    rotations: list[int] = field(default_factory=list)
    revoked: int | None = None
    revoke_reason: str = ""
    introduced: dict[bytes, int] = field(default_factory=dict)
    retired_by: dict[bytes, int] = field(default_factory=dict)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def state_at(self, index: int) -> DeviceState | None:
        """The device's state just before leaf ``index``: after every step that precedes it."""
        at = bisect.bisect_left([i for i, _ in self.steps], index)
        return self.steps[at - 1][1] if at else None


@dataclass
class BundleReport:
    """What a bundle proved, or why it did not."""

    head: Head | None = None
    key_source: str = ""
    node_key_pinned: bool = False
    node_certified: bool = False
    ca_source: str = ""
    ca_pinned: bool = False
    ca_name: str = ""
    ca_fingerprint: str = ""
    signed_by: str = ""
    subject: dict[str, Any] = field(default_factory=dict)
    entries: int = 0
    operator_entries: int = 0
    node_entries: int = 0
    """Contract events and audit records (node-made entries) proven included."""
    devices: dict[str, DeviceHistory] = field(default_factory=dict)
    readings: dict[str, list[ProvenReading]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[CheckFailed] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(raw: bytes, *, pinned_node_key: bytes | None = None,
                  pinned_ca: bytes | None = None,
                  expect_device: str | None = None) -> BundleReport:
    """Check a bundle's bytes; never raises for bad input (failures land in ``problems``).

    ``pinned_node_key`` (SPKI DER) and ``pinned_ca`` (certificate DER) are what the caller
    trusts; without either, a bundle that verifies is only shown intact and self-consistent.
    """
    report = BundleReport()
    try:
        _Verifier(report, pinned_node_key, pinned_ca).run(raw, expect_device)
    except CheckFailed as exc:
        report.problems.append(exc)
    return report


class _Verifier:
    def __init__(self, report: BundleReport, pinned_key: bytes | None,
                 pinned_ca: bytes | None) -> None:
        self.report = report
        self.pinned_key = pinned_key
        self.pinned_ca = pinned_ca
        self.problems = report.problems
        self.node_set: NodeSet | None = None
        """A consortium chain's genesis node set (None: a solo chain)."""
        self.node_sets: NodeSetHistory | None = None
        """... changed by the bundle's `node_set_changed` entries (ledger_node.quorum)."""

    def fail(self, reason: str, where: str, detail: str) -> None:
        self.problems.append(CheckFailed(reason, where, detail))

    # -- 1. the document ------------------------------------------------------------------------

    def run(self, raw: bytes, expect_device: str | None) -> None:
        report = self.report
        doc = load_json(raw, "bundle")
        if not isinstance(doc, dict) or "format" not in doc:
            raise CheckFailed("not_a_bundle", "bundle", "a JSON object with a \"format\" field "
                              "was expected")
        if doc["format"] != BUNDLE_FORMAT:
            raise CheckFailed("not_a_bundle", "bundle.format", f"{doc['format']!r}, expected "
                              f"{BUNDLE_FORMAT!r}")
        version = doc.get("version")
        if version != BUNDLE_VERSION or isinstance(version, bool):
            hint = (" (version 1 bundles carry bare device keys vouched for by the node alone; "
                    "ask the node for a new bundle)" if version == 1
                    and not isinstance(version, bool) else "")
            raise CheckFailed("unsupported_version", "bundle.version", f"{version!r}; this "
                              f"verifier reads version {BUNDLE_VERSION} only{hint}")
        top = want(doc, "bundle", _FIELDS)
        subject = report.subject = _subject(top["subject"])
        head = report.head = parse_head(top["head"], "head", strict=True)
        ca, node_certs = _certificates(top["certificates"])
        blocks = _blocks(top["blocks"])
        entries = _entries(top["entries"])
        report.entries = len(entries)
        self._ca(ca)
        if expect_device is not None and subject["device"] != expect_device:
            self.fail("wrong_device", "subject", f"the bundle is about {subject['device']!r}, "
                      f"you asked for {expect_device!r}")

        inclusion: list[CheckFailed] = []
        proven: dict[int, _Entry] = {}
        for e in entries:
            try:
                _check_inclusion(e, head)
                proven[e.index] = e
            except CheckFailed as exc:
                inclusion.append(exc)
        genesis, against = self._genesis(entries, head, ca)
        keys = self._node_keys(genesis, node_certs, ca, head)
        self.node_set = self._consortium(genesis)
        self.node_sets = self._node_set_changes(entries, proven, blocks, head, ca)
        self._head(head, keys)
        self.problems.extend(against)  # what the genesis says against the (checked) head
        spans = self._blocks(blocks, head, keys)
        self.problems.extend(inclusion)

        devices = report.devices
        readings: list[_Entry] = []
        for e in entries:
            if e.index not in proven:
                continue  # already failed: what its bytes say is not evidence
            try:
                kind = entry_types.admin_kind(e.data)
            except ValueError as exc:  # WireError is a ValueError
                self.fail("bad_entry", e.where, f"does not decode: {exc}")
                continue
            if kind == entry_types.KIND_READING:
                readings.append(e)
            elif kind in CONSORTIUM_TYPES:  # its node set: _node_set_changes
                self._business_entry(e, ca, spans, kind)
            elif kind in ADMIN_TYPES:
                self._operator_entry(e, ca, spans, devices)
            elif kind in BUSINESS_TYPES:
                self._business_entry(e, ca, spans, kind)
            elif kind in NODE_ENTRY_TYPES:
                self._node_entry(e, kind)
            elif kind == entry_types.GENESIS:
                if e.index != 0:
                    self.fail("bad_genesis", e.where, "a genesis entry can only be entry 0")
            else:
                self.fail("unsupported_entry", e.where, f"an entry of kind {kind!r}, which a "
                          f"version-{BUNDLE_VERSION} bundle does not carry and this verifier "
                          f"cannot check")
        owners = {kid: (h.dev, i) for h in devices.values() for kid, i in h.introduced.items()}
        missing: dict[str, tuple[int, list[int]]] = {}
        for e in readings:
            self._reading(e, owners, subject, missing)
        for dev, (at, indexes) in missing.items():
            self.problems[at] = _missing_enrolment(devices.get(dev), dev, indexes)
        _note_histories(report)
        _note_sequences(report)

    def _ca(self, ca: bytes) -> None:
        report = self.report
        try:
            load_ca_anchor(ca)
            report.ca_name = str(describe_certificate(ca)["subject"])
        except (CaCertificateInvalid, CertificateRejected) as exc:
            raise CheckFailed("bad_ca", "certificates.ca", f"the fleet CA certificate is "
                              f"unusable: {exc}") from None
        report.ca_fingerprint = hashlib.sha256(ca).hexdigest()
        report.ca_pinned = self.pinned_ca is not None
        if self.pinned_ca is None and self.pinned_key is not None:
            report.ca_source = ("the CA the genesis entry names, in the log the pinned node key "
                                "signed")
        elif self.pinned_ca is None:
            report.ca_source = "the CA the genesis entry names (NOT pinned)"
        elif self.pinned_ca == ca:
            report.ca_source = "the pinned fleet CA"
        else:
            report.ca_source = "NOT the pinned fleet CA"
            self.fail("wrong_ca", "certificates.ca", f"the bundle's fleet CA (SHA-256 "
                      f"{report.ca_fingerprint[:16]}…, {report.ca_name}) is not the CA you "
                      f"pinned (SHA-256 {hashlib.sha256(self.pinned_ca).hexdigest()[:16]}…)")

    # -- 2. the genesis entry -------------------------------------------------------------------

    def _genesis(self, entries: list[_Entry], head: Head,
                 ca: bytes) -> tuple[dict[str, Any] | None, list[CheckFailed]]:
        """The genesis record, if the bundle has one (else the failure is recorded), and what
        in it disagrees with the head or the bundle's CA (to report after the head). Whether
        the log proves it is the inclusion check's business (step 5): if it does not, the
        bundle fails there, so its node key can serve meanwhile to check the head."""
        against: list[CheckFailed] = []
        first = entries[0] if entries else None
        if first is None or first.index != 0:
            self.fail("missing_genesis", "entries", "the genesis entry (index 0), which names "
                      "the fleet CA and the node key, is not in the bundle")
            return None, against
        try:
            rec = entry_types.decode_admin(first.data)
        except ValueError as exc:
            self.fail("bad_genesis", first.where, f"does not decode: {exc}")
            return None, against
        if rec.get("type") != entry_types.GENESIS or not isinstance(rec.get("node"), str) \
                or not isinstance(rec.get("node_key"), bytes):
            self.fail("bad_genesis", first.where, "entry 0 is not a genesis entry with node and "
                      "node_key")
            return None, against
        if rec.get("chain") != head.header.chain:
            against.append(CheckFailed(
                "chain_mismatch", first.where, f"the genesis entry starts chain "
                f"{rec.get('chain')!r}, the head is of chain {head.header.chain!r}"))
        if rec.get("ca") != ca:
            named = ("names no fleet CA" if rec.get("ca") is None else
                     "names another fleet CA")
            against.append(CheckFailed(
                "ca_mismatch", first.where, f"the genesis entry {named}; the bundle's "
                f"certificates.ca (SHA-256 {self.report.ca_fingerprint[:16]}…) is not the CA "
                f"of this chain"))
        return rec, against

    # -- 3. node keys and the head --------------------------------------------------------------

    def _node_keys(self, genesis: Mapping[str, Any] | None, certs: list[tuple[str, bytes]],
                   ca: bytes, head: Head) -> dict[str, bytes]:
        keys: dict[str, bytes] = {}
        if genesis is not None:
            keys[genesis["node"]] = genesis["node_key"]
        certified: set[str] = set()
        for i, (node, cert) in enumerate(certs):
            where = f"certificates.nodes[{i}] ({node!r})"
            try:
                info = check_certificate(cert, ca, expected_id=node, expected_role="node",
                                         at_ms=head.header.time)
            except CertificateRejected as exc:
                self.fail(f"node_{exc.reason}", where, f"node certificate: {exc}")
                continue
            keys[node] = info.spki_der  # issued by the CA: it vouches for the key
            certified.add(node)
        proposer = head.header.proposer
        report = self.report
        report.node_key_pinned = self.pinned_key is not None
        report.node_certified = proposer in certified
        if self.pinned_key is not None:
            report.key_source = "the pinned node key"
        elif proposer in certified:
            report.key_source = "the node certificate issued by the fleet CA"
        else:
            report.key_source = "the node key the genesis entry names (NOT pinned)"
        return keys

    def _consortium(self, genesis: Mapping[str, Any] | None) -> NodeSet | None:
        """The node set a consortium genesis entry names (None for a solo chain, or when the
        set does not check: that failure is recorded)."""
        if genesis is None or GENESIS_NODES not in genesis:
            return None
        at = genesis.get("time")
        try:
            ns = node_set_from_genesis(genesis, at if isinstance(at, int) else 0)
        except QuorumError as exc:
            reason = exc.reason if exc.reason.startswith("node_") else "bad_node_set"
            self.fail(reason, "entries[0] (index 0)", f"the genesis entry's node set: "
                      f"{exc.detail}")
            return None
        report = self.report
        report.node_certified = True
        report.key_source = (f"the quorum certificate of the genesis entry's node set "
                             f"({ns.quorum} of {ns.size}: {', '.join(sorted(ns.keys))}), "
                             f"whose certificates the fleet CA issued")
        return ns

    def _node_set_changes(self, entries: list[_Entry], proven: Mapping[int, _Entry],
                          blocks: list[_Block], head: Head, ca: bytes) -> NodeSetHistory | None:
        """The node set in force at each height: the genesis entry's, changed by the bundle's
        `node_set_changed` entries in log order, each checked at the ledger time of the block
        that holds it (whose header must be in the bundle) and in force from the next block.
        The headers' own signatures are checked after, with the set this gives for them."""
        if self.node_set is None:
            return None
        history = NodeSetHistory(((0, self.node_set),))
        headers = sorted([b.head.header for b in blocks] + [head.header],
                         key=lambda bh: bh.height)
        for e in entries:
            if e.index not in proven:
                continue
            try:
                if entry_types.admin_kind(e.data) != NODE_SET_CHANGED:
                    continue
                body = decode_operator_entry_unchecked(e.data)
            except ValueError:  # WireError is a ValueError; reported by the entry's check
                continue
            where = f"{e.where}, {NODE_SET_CHANGED}"
            holder = next((bh for bh in headers if bh.first <= e.index < bh.size), None)
            if holder is None:
                self.fail("bad_node_set", where, "the header of the block that logged it is "
                          "not in the bundle: the node set from then on cannot be known")
                continue
            try:
                ns = node_set_change(body, ca, holder.time)
                if holder.height + 1 == history.spans[-1][0]:  # several in one block
                    history = NodeSetHistory((*history.spans[:-1], (holder.height + 1, ns)))
                else:
                    history = history.changed(holder.height, ns)
            except QuorumError as exc:
                reason = exc.reason if exc.reason.startswith("node_") else "bad_node_set"
                self.fail(reason, where, exc.detail)
                continue
        at_head = history.at(head.header.height)
        if history.changes:
            report = self.report
            report.key_source = (f"the quorum certificate of the node set in force at the head "
                                 f"({at_head.quorum} of {at_head.size}: "
                                 f"{', '.join(sorted(at_head.keys))}; the genesis entry's, "
                                 f"changed in block(s) "
                                 f"{', '.join(str(h) for h in history.changes)}), whose "
                                 f"certificates the fleet CA issued")
        return history

    def _signed(self, head: Head, keys: Mapping[str, bytes], where: str) -> str:
        """Who signed a head: the proposer (solo chain) or a quorum of the node set in force
        at its height (consortium chain)."""
        if self.node_set is None:
            return check_head_signatures(head, keys, self.pinned_key, where)
        ns = self.node_sets.at(head.header.height) if self.node_sets else self.node_set
        try:
            qc = check_qc(ns, head.header_bytes, head.signatures, strict=True)
        except QuorumError as exc:
            raise CheckFailed(exc.reason, where, f"block {head.header.height}: "
                              f"{exc.detail}") from None
        return f"{', '.join(qc.signers)} (a quorum of {qc.quorum} of {ns.size})"

    def _head(self, head: Head, keys: Mapping[str, bytes]) -> None:
        try:
            self.report.signed_by = self._signed(head, keys, "head")
        except CheckFailed as exc:
            self.problems.append(exc)

    def _blocks(self, blocks: list[_Block], head: Head, keys: Mapping[str, bytes]
                ) -> list[_Span]:
        h = head.header
        spans = [_Span(h.first, h.size, h.time, h.height)]
        for b in blocks:
            bh = b.head.header
            try:
                if bh.chain != h.chain:
                    raise CheckFailed("chain_mismatch", b.where, f"block of chain "
                                      f"{bh.chain!r}, the head is of chain {h.chain!r}")
                if bh.height >= h.height or bh.size > h.size:
                    raise CheckFailed("wrong_head", b.where, f"block {bh.height} (tree size "
                                      f"{bh.size}) is not older than the head, block "
                                      f"{h.height} (tree size {h.size})")
                self._signed(b.head, keys, b.where)
                try:
                    verify_consistency(bh.size, h.size, b.consistency, bh.root, h.root)
                except RootMismatchError as exc:
                    raise CheckFailed("inconsistent", b.where, f"the head's tree does not "
                                      f"extend the tree of block {bh.height}: {exc}") from None
                except ProofError as exc:
                    raise CheckFailed("bad_proof", b.where, f"consistency proof: {exc}"
                                      ) from None
            except CheckFailed as exc:
                self.problems.append(exc)
                continue
            spans.append(_Span(bh.first, bh.size, bh.time, bh.height))
        return spans

    # -- 6. operator entries --------------------------------------------------------------------

    def _business_entry(self, e: _Entry, ca: bytes, spans: list[_Span], kind: str) -> None:
        """A shipment or contract entry: signed by an operator of the fleet CA at the ledger
        time of its block. What it did to the shipment is in the log the head commits to;
        `trustfleet verify` on a node's full log replays it (ledger_node.world_replay)."""
        span = next((s for s in spans if s.first <= e.index < s.size), None)
        at_op = span.time if span is not None else _not_before(_x5chain(e.data))
        try:
            decode_operator_entry(e.data, ca, at_op)
        except AdminRejected as exc:
            reason = (exc.reason if exc.reason == NOT_OPERATOR or
                      exc.reason.startswith("operator_") else
                      "bad_operator_signature" if exc.reason == BAD_SIGNATURE else
                      "bad_operator_entry")
            self.fail(reason, f"{e.where}, {kind}", exc.detail)
            return
        self.report.operator_entries += 1

    def _node_entry(self, e: _Entry, kind: str) -> None:
        """A contract event or an audit record: written by the node(s), vouched for by the
        signed head that includes it. A contract event's derivation from the readings it
        cites is re-checked by `trustfleet verify` on a full log, not here."""
        try:
            value = entry_types.decode_admin(e.data)
            if kind == AUDIT:
                check_audit_entry(value)
            elif not isinstance(value.get("cause"), list) or not all(
                    type(i) is int and 0 <= i < e.index for i in value["cause"]):
                raise ValueError("a contract event cites earlier entries by index")
        except ValueError as exc:
            self.fail("bad_node_entry", f"{e.where}, {kind}", str(exc))
            return
        self.report.node_entries += 1

    def _operator_entry(self, e: _Entry, ca: bytes, spans: list[_Span],
                        devices: dict[str, DeviceHistory]) -> None:
        span = next((s for s in spans if s.first <= e.index < s.size), None)
        at_op = span.time if span is not None else _not_before(_x5chain(e.data))
        try:
            op = decode_operator_entry(e.data, ca, at_op)
        except AdminRejected as exc:
            dev = _peek_dev(e.data)
            if dev is not None:
                devices.setdefault(dev, DeviceHistory(dev)).failed.append((e.index, exc.reason))
            reason = (exc.reason if exc.reason == NOT_OPERATOR or
                      exc.reason.startswith("operator_") else
                      "bad_operator_signature" if exc.reason == BAD_SIGNATURE else
                      "bad_operator_entry")
            self.fail(reason, e.where, exc.detail)
            return
        dev = op.body["dev"]
        where = f"{e.where}, {op.type} of {dev!r}"
        history = devices.setdefault(dev, DeviceHistory(dev))
        at_dev = at_op
        if span is None:
            at_dev = _not_before(op.body.get("cert"))
            self.report.notes.append(
                f"{where}: the header of the block that logged it is not in the bundle, so its "
                f"certificates were checked at their notBefore, not at the ledger time")
        current = history.state_at(e.index)
        try:
            applied = apply_operator_entry(op, {dev: current} if current else {}, ca, e.index,
                                           at_dev)
        except AdminRejected as exc:
            history.failed.append((e.index, exc.reason))
            reason = (f"device_{exc.reason}" if exc.reason in CERT_REASONS else
                      "missing_enrolment" if exc.reason == UNKNOWN_DEVICE else exc.reason)
            detail = exc.detail
            if exc.reason == UNKNOWN_DEVICE:
                detail = f"no enrolment of {dev!r} precedes this {op.type} in the bundle"
            self.fail(reason, where, detail)
            return
        self.report.operator_entries += 1
        if applied.duplicate:
            self.report.notes.append(f"{where}: repeats what the log already said (no change)")
            return
        state = applied.state
        history.steps.append((e.index, state))
        if op.type == DEVICE_ENROLLED:
            history.enrolled = e.index
        elif op.type == DEVICE_ROTATED:
            history.rotations.append(e.index)
            assert current is not None
            history.retired_by[current.kid] = e.index
        elif op.type == DEVICE_REVOKED:
            history.revoked = e.index
            history.revoke_reason = str(op.body.get("reason", ""))
        history.introduced.setdefault(state.kid, e.index)

    # -- 7. readings ----------------------------------------------------------------------------

    def _reading(self, e: _Entry, owners: Mapping[bytes, tuple[str, int]],
                 subject: Mapping[str, Any], missing: dict[str, tuple[int, list[int]]]) -> None:
        try:
            msg = open_reading(e.data)  # a batched reading: also its proof to the batch root
        except WireError as exc:
            self.fail("bad_entry", e.where, f"reading does not decode: {exc}")
            return
        reading = msg.reading
        dev = reading.dev
        what = f"{e.where}, {dev!r} seq {reading.seq}"
        history = self.report.devices.get(dev)
        state = history.state_at(e.index) if history is not None else None
        owner = owners.get(msg.kid)
        if owner is not None and owner[0] != dev:
            self.fail("device_mismatch", what, f"the payload names {dev!r}, but its key "
                      f"(kid {msg.kid.hex()[:16]}…) is {owner[0]!r}'s")
            return
        if state is None:
            if owner is not None and owner[1] > e.index:
                self.fail("enrolled_after_reading", what, f"its key is put on the log by the "
                          f"operator entry at index {owner[1]}, after the reading")
            elif dev in missing:
                missing[dev][1].append(e.index)
            else:
                missing[dev] = (len(self.problems), [e.index])
                self.problems.append(CheckFailed("missing_enrolment", what, ""))
            return
        assert history is not None
        if state.revoked_height is not None:
            self.fail(REVOKED_DEVICE, what, f"{dev!r} was revoked by the operator entry at "
                      f"index {state.revoked_height}, before this reading")
            return
        if msg.kid in state.retired_kids:
            self.fail("rotated_key", what, f"signed with a key that the rotation at index "
                      f"{history.retired_by.get(msg.kid, '?')} retired before this reading")
            return
        if msg.kid != state.kid:
            if owner is not None and owner[1] > e.index:
                self.fail("enrolled_after_reading", what, f"its key is put on the log by the "
                          f"operator entry at index {owner[1]}, after the reading")
            else:
                self.fail("unknown_device_key", what, f"signed with kid "
                          f"{msg.kid.hex()[:16]}…, which is not {dev!r}'s key at this point "
                          f"of the log (that is kid {state.kid.hex()[:16]}…)")
            return
        if not verify_es256(state.key, msg.to_be_signed, msg.signature):
            signed = "its batch's" if msg.batched else "the"
            self.fail("bad_device_signature", what, f"{signed} ES256 signature does not "
                      f"verify with {dev!r}'s key")
            return
        if subject["device"] is not None and dev != subject["device"]:
            self.fail("wrong_device", what, f"the bundle is about {subject['device']!r}")
            return
        lo, hi = subject["from"], subject["to"]
        if (lo is not None and reading.t < lo) or (hi is not None and reading.t >= hi):
            self.fail("outside_range", what, f"device time {reading.t} is outside the "
                      f"bundle's range [{lo}, {hi})")
            return
        self.report.readings.setdefault(dev, []).append(
            ProvenReading(e.index, reading, msg.chain_hash, msg.batched))


def _missing_enrolment(history: DeviceHistory | None, dev: str, indexes: list[int]
                       ) -> CheckFailed:
    which = (f"index {indexes[0]}" if len(indexes) == 1 else
             f"{len(indexes)} readings, index {indexes[0]}..{indexes[-1]}")
    if history is not None and history.failed:
        at, reason = history.failed[0]
        why = (f"the operator entry about {dev!r} at index {at} failed ({reason}) and no "
               f"enrolment that checks precedes them, so no key of the log proves them")
    else:
        why = (f"no enrolment of {dev!r} precedes them in the bundle, so no key of the log "
               f"proves them")
    return CheckFailed("missing_enrolment", f"device {dev!r} ({which})", why)


# -- parsing ------------------------------------------------------------------------------------

def _subject(value: Any) -> dict[str, Any]:
    s = want(value, "subject", ("device", "from", "to"))
    if s["device"] is not None and not isinstance(s["device"], str):
        raise CheckFailed("bad_field", "subject.device", "must be a string or null")
    for name in ("from", "to"):
        if s[name] is not None:
            int_field(s[name], f"subject.{name}")
    return dict(s)


def _certificates(value: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    c = want(value, "certificates", ("ca", "nodes"))
    ca = b64_field(c["ca"], "certificates.ca")
    if not isinstance(c["nodes"], list):
        raise CheckFailed("bad_field", "certificates.nodes", "must be an array")
    nodes: list[tuple[str, bytes]] = []
    for i, item in enumerate(c["nodes"]):
        where = f"certificates.nodes[{i}]"
        n = want(item, where, ("node", "cert"))
        if not isinstance(n["node"], str) or any(node == n["node"] for node, _ in nodes):
            raise CheckFailed("bad_field", f"{where}.node", "must be a node id listed once")
        nodes.append((n["node"], b64_field(n["cert"], f"{where}.cert")))
    return ca, nodes


def _blocks(value: Any) -> list[_Block]:
    if not isinstance(value, list):
        raise CheckFailed("bad_field", "blocks", "must be an array")
    out: list[_Block] = []
    for i, item in enumerate(value):
        where = f"blocks[{i}]"
        b = want(item, where, ("header", "signatures", "consistency"))
        head = parse_head({"header": b["header"], "signatures": b["signatures"]}, where,
                          strict=True)
        if not isinstance(b["consistency"], list):
            raise CheckFailed("bad_field", f"{where}.consistency", "must be an array")
        proof = tuple(b64_field(h, f"{where}.consistency[{j}]", HASH_SIZE)
                      for j, h in enumerate(b["consistency"]))
        out.append(_Block(head, proof, f"{where} (block {head.header.height})"))
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


def _x5chain(data: bytes) -> object:
    """The operator certificate an operator entry carries, unchecked (None if unreadable)."""
    try:
        header = cbor.loads_strict(decode_sign1(data).protected, max_size=8192)
    except WireError:
        return None
    return header.get(HEADER_X5CHAIN) if isinstance(header, dict) else None


def _peek_dev(data: bytes) -> str | None:
    try:
        body = cbor.loads_strict(decode_sign1(data).payload, max_size=16 * 1024)
    except WireError:
        return None
    dev = body.get("dev") if isinstance(body, dict) else None
    return dev if isinstance(dev, str) else None


def _not_before(cert: object) -> int:
    """A certificate's notBefore (ms), read without checking it; 0 if it cannot be read (the
    check that follows then names what is wrong with it)."""
    if not isinstance(cert, bytes):
        return 0
    try:
        return int(describe_certificate(cert)["not_before_ms"])
    except CertificateRejected:
        return 0


# -- notes and the summary ----------------------------------------------------------------------

def _note_histories(report: BundleReport) -> None:
    """Rotations and revocations are facts a reader of the bundle should see."""
    for dev, h in sorted(report.devices.items()):
        if h.rotations:
            report.notes.append(f"{dev}: key rotated by the operator entry at index "
                                f"{', '.join(map(str, h.rotations))}")
        if h.revoked is not None:
            reason = f" ({h.revoke_reason})" if h.revoke_reason else ""
            report.notes.append(f"{dev}: REVOKED by the operator entry at index "
                                f"{h.revoked}{reason}; readings logged before it stand")


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
            elif b.reading.prev != a.chain_hash:
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
    kinds = _operator_kinds(report)
    n_op = report.operator_entries
    lines = [f"OK: bundle about {about}, device time [{_bound(subject.get('from'))}, "
             f"{_bound(subject.get('to'))})",
             f"  head: block {h.height} of chain {h.chain!r}, tree size {h.size}, root "
             f"{h.root.hex()}, ledger time {h.time}",
             f"  signed by {report.signed_by}, checked with {report.key_source}",
             f"  fleet CA: {report.ca_name} (SHA-256 {report.ca_fingerprint[:16]}…), "
             f"{report.ca_source}",
             f"  {report.entries} entr{'y' if report.entries == 1 else 'ies'}, each included "
             f"in that tree: the genesis entry"
             + (f", {n_op} operator entr{'y' if n_op == 1 else 'ies'}{kinds}, each signed by "
                f"an operator certificate of the fleet CA" if n_op else "")
             + (f", {report.node_entries} contract event or audit entr"
                f"{'y' if report.node_entries == 1 else 'ies'} written by the node(s)"
                if report.node_entries else "")]
    for dev, proven in sorted(report.readings.items()):
        times = [p.reading.t for p in proven]
        lines.append(f"  {dev}: {len(proven)} reading(s), seq {proven[0].reading.seq}-"
                     f"{proven[-1].reading.seq}, device time {min(times)}..{max(times)}, "
                     f"every device signature verified with the key its certificate had at "
                     f"that point of the log")
    lines += [f"  note: {n}" for n in report.notes]
    lines += [f"  trust: {t}" for t in _trust(report)]
    return "\n".join(lines)


def _operator_kinds(report: BundleReport) -> str:
    counts = [(sum(h.enrolled is not None for h in report.devices.values()), "enrolment"),
              (sum(len(h.rotations) for h in report.devices.values()), "rotation"),
              (sum(h.revoked is not None for h in report.devices.values()), "revocation")]
    parts = [f"{n} {name}{'' if n == 1 else 's'}" for n, name in counts if n]
    return f" ({', '.join(parts)})" if parts else ""


def _trust(report: BundleReport) -> list[str]:
    """What the result rests on: a pinned node key, or a pinned CA (and how far that goes)."""
    if report.node_key_pinned:
        return []
    if report.ca_pinned and report.node_certified:
        return []
    if report.ca_pinned:
        return ["the fleet CA is pinned: every device key and operator entry above is "
                "certified by your CA, so the readings were signed by devices it certified. "
                "The order of the log and its ledger times rest on the node key the genesis "
                "entry names, which no certificate binds to your CA yet: pin that key too "
                "(--node-key) to make them evidence as well."]
    return ["NOT pinned: the fleet CA and the node key came from the bundle itself, so this "
            "shows the bundle is intact and self-consistent, not who signed it. Pin the fleet "
            "CA certificate (--ca) or the node's public key (--node-key), obtained from the "
            "consortium out of band, to make it evidence."]


def _bound(t: int | None) -> str:
    return "open" if t is None else str(t)

