"""MQTT topics and message framing (DESIGN.md §4).

    tf/v1/{fleet}/{device}/up        envelopes from a device
    tf/v1/{fleet}/{device}/receipt   the ledger's receipt for that device (retained)
    tf/v1/{fleet}/events/{kind}      contract events

An `up` message carries either one envelope (a COSE_Sign1, tagged or not) or a CBOR array
of byte strings, each holding one envelope's exact bytes. Wrapping each envelope in a
byte string keeps its bytes intact, so the ledger stores what the device signed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import cbor2

from trustfleet import cbor
from trustfleet.cose import is_plain_sign1
from trustfleet.errors import BAD_ENVELOPE, TOO_LARGE, WireError

PREFIX: Final = "tf/v1"
LEDGER_SHARE_GROUP: Final = "ledger"
UP_SUBSCRIPTION: Final = f"$share/{LEDGER_SHARE_GROUP}/{PREFIX}/+/+/up"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ENVELOPES_PER_MESSAGE: Final = 1000


@dataclass(frozen=True)
class DeviceTopic:
    """Fleet and device named by an `up` or `receipt` topic."""

    fleet: str
    device: str


def check_name(name: str, what: str) -> str:
    """Return `name` if it is a valid fleet or device id, else raise ValueError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be 1-64 characters of [A-Za-z0-9._-]")
    return name


def up_topic(fleet: str, device: str) -> str:
    return f"{PREFIX}/{check_name(fleet, 'fleet')}/{check_name(device, 'device')}/up"


def receipt_topic(fleet: str, device: str) -> str:
    return f"{PREFIX}/{check_name(fleet, 'fleet')}/{check_name(device, 'device')}/receipt"


def events_topic(fleet: str, event: str) -> str:
    """Where a node publishes contract events that ask for MQTT notification."""
    return f"{PREFIX}/{check_name(fleet, 'fleet')}/events/{check_name(event, 'event')}"


def event_topic(fleet: str, kind: str) -> str:
    return f"{PREFIX}/{check_name(fleet, 'fleet')}/events/{kind}"


def parse_up_topic(topic: str) -> DeviceTopic | None:
    """The fleet and device of an `up` topic, or None if `topic` is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[4] != "up":
        return None
    if not (_NAME_RE.fullmatch(parts[2]) and _NAME_RE.fullmatch(parts[3])):
        return None
    return DeviceTopic(fleet=parts[2], device=parts[3])


def encode_batch(envelopes: list[bytes]) -> bytes:
    """Frame several envelopes as one message (a CBOR array of bstr)."""
    return cbor.dumps(list(envelopes))


def split_message(payload: bytes, *, max_size: int = 1 << 20) -> list[bytes]:
    """The envelopes in one `up` message, each as its exact bytes.

    Raises WireError: too_large, bad_cbor, or bad_envelope (an array that holds anything but
    byte strings, or more than MAX_ENVELOPES_PER_MESSAGE of them).
    """
    if len(payload) > max_size:
        raise WireError(TOO_LARGE, f"message of {len(payload)} bytes, limit {max_size}")
    if is_plain_sign1(payload, max_size):
        return [payload]  # one envelope in the layout devices write, seen without decoding it
    item = cbor.loads_strict(payload, max_size=max_size)
    if isinstance(item, cbor2.CBORTag) or (
        isinstance(item, list) and len(item) == 4 and isinstance(item[0], bytes)
        and isinstance(item[1], dict)
    ):
        return [payload]
    if isinstance(item, list):
        if not item:
            raise WireError(BAD_ENVELOPE, "empty batch")
        if len(item) > MAX_ENVELOPES_PER_MESSAGE:
            raise WireError(TOO_LARGE, f"{len(item)} envelopes in one message")
        if not all(isinstance(x, bytes) for x in item):
            raise WireError(BAD_ENVELOPE, "a batch must be an array of byte strings")
        return list(item)
    raise WireError(BAD_ENVELOPE, f"a {type(item).__name__} is neither an envelope nor a batch")
