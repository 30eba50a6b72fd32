"""Build chains in-process for tests: real SQLite store, software keys (no HSM needed here)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from hsm import SoftwareSigner
from ledger_node import entries
from ledger_node.chain import ApplyResult, Chain, Message, OrderedBatch
from ledger_node.store import Store
from tests.pki import SoftPKI
from trustfleet.cose import sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.topics import up_topic

FLEET = "test"
MINUTE = 60_000


class Device:
    """A device that signs a proper chain of readings (seq, prev) with a software key."""

    def __init__(self, dev: str) -> None:
        self.dev = dev
        self.signer = SoftwareSigner.generate()
        self.seq = 0
        self.prev = GENESIS_PREV
        self.topic = up_topic(FLEET, dev)

    def reading(self, t: int = 1_763_700_000_000, kind: str = "temp",
                values: dict[str, object] | None = None) -> bytes:
        """The next reading, at device time t + its seq."""
        seq = self.seq + 1
        return self.at(t + seq, kind, values if values is not None else {"c": 4.0 + seq / 100})

    def at(self, t: int, kind: str, values: dict[str, object]) -> bytes:
        """The next reading, at exactly device time `t`."""
        self.seq += 1
        r = Reading(dev=self.dev, seq=self.seq, prev=self.prev, t=t, ts="gps", k=kind, d=values)
        env = sign1(encode_payload(r), self.signer.kid, self.signer.sign)
        self.prev = hashlib.sha256(env).digest()
        return env

    def temps(self, start: int, values: list[float], step: int = MINUTE) -> list[bytes]:
        """Temperature readings (probe p1) `step` apart from device time `start`."""
        return [self.at(start + i * step, "temp", {"c": c, "probe": "p1"})
                for i, c in enumerate(values)]

    def message(self, data: bytes, topic: str | None = None) -> Message:
        return Message(topic or self.topic, data, 0)


class ChainUnderTest:
    """A chain whose genesis names a (software) fleet CA, with devices enrolled by operator
    entries, on a real SQLite file."""

    def __init__(self, path: Path, devices: list[Device], pki: SoftPKI | None = None) -> None:
        self.pki = pki or SoftPKI()
        self.node = SoftwareSigner.generate()
        self.store = Store(path)
        self.chain = Chain(self.store, "main", "node-1", self.node)
        self.time = 1_763_700_000_000
        admin = [entries.genesis("main", "node-1", self.node.public_key_der(), self.time,
                                 self.pki.ca_cert)]
        admin += [self.pki.enrol(d.dev, d.signer, FLEET) for d in devices]
        result = self.apply(admin=admin)
        assert all(a.status == "accepted" for a in result.admin), result.admin

    def apply(self, messages: list[Message] | None = None,
              admin: list[bytes] | None = None) -> ApplyResult:
        self.time += 1000
        return self.chain.apply(OrderedBatch(self.time, "node-1", tuple(admin or ()),
                                             tuple(messages or ())))

    def contract_entry(self, text: str, kind: str = "contract_registered") -> bytes:
        """An operator entry registering (or upgrading) the contract document `text`."""
        import yaml

        doc = yaml.safe_load(text)
        return self.pki.signed({"type": kind, "name": doc["name"], "version": doc["version"],
                                "doc": text, "effective": None})

    def shipment_entries(self, sid: str, dev: str, contracts: Sequence[str], *, start: int,
                         parties: Sequence[tuple[str, str]] = (("acme-pharma", "shipper"),
                                                               ("fastfreight", "carrier")),
                         deadline: int | None = None) -> list[bytes]:
        """Operator entries creating shipment `sid` (one pallet) and assigning `dev` to it
        from device time `start` on."""
        return [
            self.pki.signed({"type": "shipment_created", "shipment": sid,
                             "parties": [{"org": o, "role": r} for o, r in parties],
                             "units": ["urn:epc:id:sscc:0614141.1234567890"], "route": None,
                             "geofences": {}, "deadline": deadline,
                             "contracts": list(contracts)}),
            self.pki.signed({"type": "shipment_assigned", "shipment": sid, "dev": dev,
                             "start": start, "end": None}),
        ]
