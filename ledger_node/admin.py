"""Operator-signed administrative entries: enrol, revoke and rotate devices (DESIGN.md §5).

An operator entry is a COSE_Sign1 (ES256) whose protected header carries the operator's
certificate (x5chain, label 33, one DER certificate) next to `alg` and `kid`:

    payload = deterministic CBOR
      {"v": 1, "type": "device_enrolled", "dev": str, "fleet": str, "cert": cert DER, "t": ms}
      {"v": 1, "type": "device_revoked",  "dev": str, "reason": str, "t": ms}
      {"v": 1, "type": "device_rotated",  "dev": str, "cert": new cert DER,
       "replaces": kid of the key it retires, "t": ms}
    and the business entries, applied by ledger_node.world (shipments: ledger_node.shipments,
    contracts: docs/contracts.md):
      {"v": 1, "type": "shipment_created", "shipment": str, "parties": [{"org", "role"}],
       "units": [SSCC URI], "route": GeoJSON LineString | null, "geofences": {name: Polygon},
       "deadline": ms | null, "contracts": [name], "t": ms}
      {"v": 1, "type": "shipment_assigned", "shipment": str, "dev": str, "start": ms,
       "end": ms | null, "t": ms}
      {"v": 1, "type": "shipment_state", "shipment": str, "state": str, "t": ms}
      {"v": 1, "type": "contract_registered" | "contract_upgraded", "name": str,
       "version": int, "doc": YAML or JSON text, "effective": ms | null, "t": ms}
      {"v": 1, "type": "contract_retired", "name": str, "t": ms}
    and the consortium's node set (ledger_node.quorum, docs/consortium.md), in force from the
    block after the one that carries it:
      {"v": 1, "type": "node_set_changed", "nodes": [{"node": id, "cert": node cert DER}],
       "t": ms}

`t` is the operator's clock, recorded and never trusted. Everything is checked at the ledger
time of the block that carries the entry: the operator certificate chains to the fleet CA
(from the genesis entry) with role `operator` and is valid then; the signature verifies with
its key; a device certificate chains to the same CA with role `device`, CN = `dev`, valid then.
A rotation names the key it replaces, so replaying an old rotation cannot roll a key back.
Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import cbor2

from hsm import Signer, check_certificate, verify_es256
from hsm.errors import CaCertificateInvalid, CertificateRejected
from ledger_node.consortium.errors import QuorumError
from ledger_node.quorum import NODE_SET_CHANGED, NodeSet, node_set_change
from ledger_node.validate import BAD_SIGNATURE, REVOKED_DEVICE, UNKNOWN_DEVICE, DeviceState
from trustfleet import cbor
from trustfleet.cose import (
    ALG_ES256,
    COSE_SIGN1_TAG,
    HEADER_ALG,
    HEADER_KID,
    Sign1,
    is_low_s,
    low_s,
    sig_structure,
    sign1_from_item,
)
from trustfleet.errors import BAD_PAYLOAD, WireError
from trustfleet.topics import check_name

HEADER_X5CHAIN: Final = 33
DEVICE_ENROLLED: Final = "device_enrolled"
DEVICE_REVOKED: Final = "device_revoked"
DEVICE_ROTATED: Final = "device_rotated"
DEVICE_TYPES: Final = frozenset({DEVICE_ENROLLED, DEVICE_REVOKED, DEVICE_ROTATED})
"""Operator entries about devices (applied here, to the device states)."""
CONSORTIUM_TYPES: Final = frozenset({NODE_SET_CHANGED})
"""Operator entries about the consortium's node set (check_node_set_change, ledger_node.quorum)."""
ADMIN_TYPES: Final = DEVICE_TYPES | CONSORTIUM_TYPES
"""Operator entries that are not business entries (never routed to ledger_node.world)."""
SHIPMENT_CREATED: Final = "shipment_created"
SHIPMENT_ASSIGNED: Final = "shipment_assigned"
SHIPMENT_STATE: Final = "shipment_state"
CONTRACT_REGISTERED: Final = "contract_registered"
CONTRACT_UPGRADED: Final = "contract_upgraded"
CONTRACT_RETIRED: Final = "contract_retired"
BUSINESS_TYPES: Final = frozenset({SHIPMENT_CREATED, SHIPMENT_ASSIGNED, SHIPMENT_STATE,
                                   CONTRACT_REGISTERED, CONTRACT_UPGRADED, CONTRACT_RETIRED})
"""Operator entries about shipments and contracts (applied by ledger_node.world)."""
OPERATOR_TYPES: Final = ADMIN_TYPES | BUSINESS_TYPES
MAX_CONTRACT_DOC: Final = 32 * 1024
MAX_OPERATOR_PAYLOAD: Final = 48 * 1024
"""An operator entry, certificate and signature included, must fit the 64 KiB entry limit."""

NOT_OPERATOR: Final = "not_operator"
ALREADY_ENROLLED: Final = "already_enrolled"
STALE_ROTATION: Final = "stale_rotation"
NO_FLEET_CA: Final = "no_fleet_ca"
BAD_NODE_SET: Final = "bad_node_set"

_FIELDS: Final = {
    DEVICE_ENROLLED: {"v", "type", "dev", "fleet", "cert", "t"},
    DEVICE_REVOKED: {"v", "type", "dev", "reason", "t"},
    DEVICE_ROTATED: {"v", "type", "dev", "cert", "replaces", "t"},
    SHIPMENT_CREATED: {"v", "type", "shipment", "parties", "units", "route", "geofences",
                       "deadline", "contracts", "t"},
    SHIPMENT_ASSIGNED: {"v", "type", "shipment", "dev", "start", "end", "t"},
    SHIPMENT_STATE: {"v", "type", "shipment", "state", "t"},
    CONTRACT_REGISTERED: {"v", "type", "name", "version", "doc", "effective", "t"},
    CONTRACT_UPGRADED: {"v", "type", "name", "version", "doc", "effective", "t"},
    CONTRACT_RETIRED: {"v", "type", "name", "t"},
    NODE_SET_CHANGED: {"v", "type", "nodes", "t"},
}


class AdminRejected(Exception):
    """An administrative entry the ledger refuses; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class OperatorEntry:
    """A decoded, signature-checked operator entry."""

    type: str
    body: dict[str, Any]
    operator: str
    operator_kid: bytes


@dataclass(frozen=True)
class AdminApplied:
    """The device state after the entry; `duplicate` when it changed nothing."""

    state: DeviceState
    duplicate: bool = False


def build_operator_entry(body: Mapping[str, Any], signer: Signer, operator_cert: bytes) -> bytes:
    """Sign an administrative payload as an operator entry (the operator CLI uses this)."""
    payload = cbor.dumps({"v": 1, **body})
    protected = cbor.dumps({HEADER_ALG: ALG_ES256, HEADER_KID: signer.kid,
                            HEADER_X5CHAIN: operator_cert})
    signature = low_s(signer.sign(sig_structure(protected, payload)))
    return cbor.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def is_operator_entry(data: bytes) -> bool:
    """True if `data` is a COSE_Sign1 whose protected header carries an x5chain."""
    try:
        item = cbor.loads_strict(data, max_size=64 * 1024)
        msg = sign1_from_item(item)
        header = cbor.loads_strict(msg.protected, max_size=4096)
    except WireError:
        return False
    return isinstance(header, dict) and HEADER_X5CHAIN in header


def decode_operator_entry_unchecked(data: bytes) -> dict[str, Any]:
    """The payload of an operator entry WITHOUT any check: for display and bookkeeping."""
    body = cbor.loads_strict(sign1_from_item(cbor.loads_strict(data, max_size=64 * 1024))
                             .payload, max_size=MAX_OPERATOR_PAYLOAD)
    if not isinstance(body, dict):
        raise WireError(BAD_PAYLOAD, "operator entry payload is not a map")
    return body


def operator_entry_type(data: bytes) -> str:
    """The `type` of an operator entry's payload, unchecked ("operator_entry" if unreadable)."""
    try:
        msg = sign1_from_item(cbor.loads_strict(data, max_size=64 * 1024))
        body = cbor.loads_strict(msg.payload, max_size=MAX_OPERATOR_PAYLOAD)
    except WireError:
        return "operator_entry"
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if kind in OPERATOR_TYPES else "operator_entry"


def decode_operator_entry(data: bytes, ca_cert: bytes | None, at_ms: int) -> OperatorEntry:
    """Check an operator entry at ledger time `at_ms`. Raises AdminRejected."""
    if ca_cert is None:
        raise AdminRejected(NO_FLEET_CA, "this chain has no fleet CA in its genesis entry")
    try:
        msg = sign1_from_item(cbor.loads_strict(data, max_size=64 * 1024))
        header = cbor.loads_strict(msg.protected, max_size=8192)
        body = cbor.loads_strict(msg.payload, max_size=MAX_OPERATOR_PAYLOAD)
    except WireError as exc:
        raise AdminRejected(exc.reason, exc.detail) from None
    cert = header.get(HEADER_X5CHAIN) if isinstance(header, dict) else None
    if not isinstance(cert, bytes):
        raise AdminRejected(NOT_OPERATOR, "no operator certificate (x5chain) in the header")
    try:
        info = check_certificate(cert, ca_cert, expected_id=None, expected_role="operator",
                                 at_ms=at_ms)
    except CaCertificateInvalid as exc:
        raise AdminRejected(NO_FLEET_CA, f"the chain's fleet CA is unusable: {exc}") from None
    except CertificateRejected as exc:
        reason = NOT_OPERATOR if exc.reason == "cert_role" else f"operator_{exc.reason}"
        raise AdminRejected(reason, f"operator certificate: {exc}") from None
    if msg.kid != info.kid:
        raise AdminRejected(BAD_SIGNATURE, "kid is not the operator certificate's key")
    if not is_low_s(msg.signature) or not verify_es256(info.spki_der, msg.to_be_signed(),
                                                       msg.signature):
        raise AdminRejected(BAD_SIGNATURE, f"signature of operator {info.subject_id!r} fails")
    _check_body(body, msg)
    return OperatorEntry(type=body["type"], body=body, operator=info.subject_id,
                         operator_kid=info.kid)


def _check_body(body: object, msg: Sign1) -> None:
    if not isinstance(body, dict) or body.get("type") not in OPERATOR_TYPES:
        raise AdminRejected(BAD_PAYLOAD, f"type must be one of {sorted(OPERATOR_TYPES)}")
    if cbor.dumps(body) != msg.payload:
        raise AdminRejected("non_deterministic_cbor", "payload is not deterministic CBOR")
    want = _FIELDS[body["type"]]
    if set(body) != want:
        raise AdminRejected(BAD_PAYLOAD, f"{body['type']} needs exactly {sorted(want)}")
    if body["v"] != 1 or not isinstance(body["t"], int):
        raise AdminRejected(BAD_PAYLOAD, "v must be 1 and t an integer (ms)")
    try:
        for key in ("dev", "fleet", "shipment", "name"):
            if key in body:
                check_name(body[key], key)
    except (ValueError, TypeError) as exc:
        raise AdminRejected(BAD_PAYLOAD, str(exc)) from None
    if "version" in body and (type(body["version"]) is not int or not 1 <= body["version"]
                              < 1 << 31):
        raise AdminRejected(BAD_PAYLOAD, "version must be an integer from 1")
    if "doc" in body and (not isinstance(body["doc"], str)
                          or len(body["doc"].encode()) > MAX_CONTRACT_DOC):
        raise AdminRejected(BAD_PAYLOAD, f"doc must be text of at most {MAX_CONTRACT_DOC} bytes")
    for key in ("effective", "start", "end", "deadline"):
        if body.get(key) is not None and (type(body[key]) is not int or body[key] < 0):
            raise AdminRejected(BAD_PAYLOAD, f"{key} must be null or ms since the epoch")
    for key in ("cert", "replaces"):
        if key in body and not isinstance(body[key], bytes):
            raise AdminRejected(BAD_PAYLOAD, f"{key} must be bytes")
    if "reason" in body and (not isinstance(body["reason"], str) or len(body["reason"]) > 200):
        raise AdminRejected(BAD_PAYLOAD, "reason must be a short string")
    if "nodes" in body and (not isinstance(body["nodes"], list) or not body["nodes"]):
        raise AdminRejected(BAD_NODE_SET, "nodes must be a non-empty list of {node, cert}")


def check_node_set_change(entry: OperatorEntry, genesis: Mapping[str, Any] | None,
                          at_ms: int) -> NodeSet:
    """The node set a checked `node_set_changed` entry names, its node certificates checked
    against the genesis entry's fleet CA at ledger time `at_ms` (role `node`, CN = id).
    Raises AdminRejected (`bad_node_set`, `node_<reason>`): also on a chain whose genesis
    entry names no node set (a solo chain) or before there is a genesis entry."""
    if entry.type != NODE_SET_CHANGED:
        raise AdminRejected(BAD_NODE_SET, f"not a {NODE_SET_CHANGED} entry")
    ca = genesis.get("ca") if genesis is not None else None
    if genesis is None or genesis.get("nodes") is None or not isinstance(ca, bytes):
        raise AdminRejected(BAD_NODE_SET, "the node set can only change on a consortium "
                            "chain (a genesis entry with nodes)")
    try:
        return node_set_change(entry.body, ca, at_ms)
    except QuorumError as exc:
        raise AdminRejected(exc.reason, exc.detail) from None


def _device_cert(entry: OperatorEntry, ca_cert: bytes, at_ms: int) -> tuple[bytes, bytes, int,
                                                                             int]:
    try:
        info = check_certificate(entry.body["cert"], ca_cert, expected_id=entry.body["dev"],
                                 expected_role="device", at_ms=at_ms)
    except CaCertificateInvalid as exc:
        raise AdminRejected(NO_FLEET_CA, f"the chain's fleet CA is unusable: {exc}") from None
    except CertificateRejected as exc:
        raise AdminRejected(exc.reason, f"device certificate: {exc}") from None
    return info.spki_der, info.kid, info.not_before_ms, info.not_after_ms


def apply_operator_entry(entry: OperatorEntry, devices: Mapping[str, DeviceState],
                         ca_cert: bytes, height: int, at_ms: int) -> AdminApplied:
    """The device state a device operator entry leads to. Raises AdminRejected."""
    if entry.type not in DEVICE_TYPES:
        raise AdminRejected(BAD_PAYLOAD, f"{entry.type} is not about a device")
    dev = entry.body["dev"]
    state = devices.get(dev)
    if entry.type == DEVICE_ENROLLED:
        key, kid, not_before, not_after = _device_cert(entry, ca_cert, at_ms)
        if state is not None:
            if state.kid == kid and state.fleet == entry.body["fleet"]:
                return AdminApplied(state, duplicate=True)
            raise AdminRejected(ALREADY_ENROLLED, f"{dev!r} is enrolled with another key; "
                                "rotate its key instead")
        return AdminApplied(DeviceState(dev=dev, fleet=entry.body["fleet"], key=key, kid=kid,
                                        enrolled_height=height, cert_not_before=not_before,
                                        cert_not_after=not_after))
    if state is None:
        raise AdminRejected(UNKNOWN_DEVICE, f"device {dev!r} is not enrolled")
    if entry.type == DEVICE_REVOKED:
        if state.revoked_height is not None:
            return AdminApplied(state, duplicate=True)
        return AdminApplied(replace(state, revoked_height=height, revoked_time=at_ms))
    if state.revoked_height is not None:
        raise AdminRejected(REVOKED_DEVICE, f"device {dev!r} was revoked; it cannot rotate")
    key, kid, not_before, not_after = _device_cert(entry, ca_cert, at_ms)
    if kid == state.kid:
        return AdminApplied(state, duplicate=True)
    if entry.body["replaces"] != state.kid:
        raise AdminRejected(STALE_ROTATION, "the rotation does not replace the current key")
    if kid in state.retired_kids:
        raise AdminRejected(STALE_ROTATION, "the new key was already retired")
    return AdminApplied(replace(state, key=key, kid=kid, cert_not_before=not_before,
                                cert_not_after=not_after,
                                retired_kids=state.retired_kids | {state.kid}))
