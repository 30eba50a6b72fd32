"""Replaying the log into what the node's derived tables should hold. Pure: no I/O.

`trustfleet verify` feeds every entry, in log order, to a `LogReplay` and compares the
`readings` and `devices` rows the node wrote with what the replay says they must be. This is
written from DESIGN.md §5-6 on its own, not shared with the code that writes the rows
(ledger_node.chain), so that a bug or a tampered row on one side shows up as a difference:

* a device's state starts at its enrolment entry (enrolled_height = that entry's block);
* each reading, in log order, is flagged `gap` if its seq is past last_seq + 1, `late` if it
  is at or below last_seq, and `prev_mismatch` if the chain hash of the same device's reading
  at seq - 1 (32 zero bytes for seq 1) is known and is not its `prev`. The chain hash is
  SHA-256 of the envelope, or of the payload for a batched reading (trustfleet.batch);
* then: readings + 1, last_seen = the block's ledger time, last_seq/last_t move to the
  highest seq, gaps/prev_mismatches count the flags, and contiguous_seq advances over every
  seq committed so far without a hole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ledger_node.validate import FLAG_CLOCK_SKEW, clock_skewed
from trustfleet.payload import GENESIS_PREV, Reading

GAP, PREV_MISMATCH, LATE = "gap", "prev_mismatch", "late"


@dataclass
class ReplayedDevice:
    dev: str
    fleet: str
    key: bytes
    kid: bytes
    enrolled_height: int
    revoked_height: int | None = None
    last_seq: int = 0
    contiguous_seq: int = 0
    last_seen: int | None = None
    last_t: int | None = None
    readings: int = 0
    gaps: int = 0
    prev_mismatches: int = 0
    hashes: dict[int, bytes] = field(default_factory=dict, repr=False)
    """seq -> chain hash of the reading committed for it."""

    @property
    def missing(self) -> int:
        """Sequence numbers below last_seq with no reading in the log."""
        return self.last_seq - len(self.hashes)

    def row(self) -> dict[str, Any]:
        """The `devices` row the node must hold for this device."""
        return {"dev": self.dev, "fleet": self.fleet, "key": self.key, "kid": self.kid,
                "enrolled_height": self.enrolled_height, "revoked_height": self.revoked_height,
                "last_seq": self.last_seq, "contiguous_seq": self.contiguous_seq,
                "last_seen": self.last_seen, "last_t": self.last_t, "readings": self.readings,
                "gaps": self.gaps, "prev_mismatches": self.prev_mismatches}


class ReplayError(ValueError):
    """The log breaks a rule the chain enforces (a seq committed twice, an unenrolled device)."""


class LogReplay:
    def __init__(self) -> None:
        self.devices: dict[str, ReplayedDevice] = {}

    def admin(self, dev: str, fleet: str, key: bytes, kid: bytes, enrolled_height: int,
              revoked_height: int | None) -> None:
        """What an administrative entry (enrol, rotate, revoke) leaves of a device's identity;
        the reading counters carry on."""
        state = self.devices.get(dev)
        if state is None:
            state = self.devices[dev] = ReplayedDevice(dev, fleet, key, kid, enrolled_height)
        state.fleet, state.key, state.kid = fleet, key, kid
        state.enrolled_height, state.revoked_height = enrolled_height, revoked_height

    def reading(self, idx: int, chain_hash: bytes, r: Reading, height: int,
                block_time: int) -> dict[str, Any]:
        """Apply one reading entry; return the `readings` row the node must hold for it."""
        state = self.devices.get(r.dev)
        if state is None:
            raise ReplayError(f"reading from {r.dev!r}, which is not enrolled before it")
        if r.seq in state.hashes:
            raise ReplayError(f"seq {r.seq} of {r.dev!r} is committed twice")
        flags: list[str] = []
        if r.seq > state.last_seq + 1:
            flags.append(GAP)
        elif r.seq <= state.last_seq:
            flags.append(LATE)
        expected = GENESIS_PREV if r.seq == 1 else state.hashes.get(r.seq - 1)
        if expected is not None and expected != r.prev:
            flags.append(PREV_MISMATCH)
        if clock_skewed(r.t, block_time):
            flags.append(FLAG_CLOCK_SKEW)
        digest = chain_hash
        state.hashes[r.seq] = digest
        state.readings += 1
        state.last_seen = block_time
        if r.seq > state.last_seq:
            state.last_seq, state.last_t = r.seq, r.t
        state.gaps += GAP in flags
        state.prev_mismatches += PREV_MISMATCH in flags
        while state.contiguous_seq + 1 in state.hashes:
            state.contiguous_seq += 1
        return {"idx": idx, "dev": r.dev, "seq": r.seq, "hash": digest, "t": r.t, "ts": r.ts,
                "k": r.k, "d": json.dumps(r.d, sort_keys=True), "flags": ",".join(flags),
                "height": height, "ledger_time": block_time}
