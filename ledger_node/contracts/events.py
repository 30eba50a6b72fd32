"""Value types of the contract engine: what goes in (ReadingFact), what comes out
(ContractEvent), and what `contract list/show` print (ContractInfo). Re-exported by engine.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

EVENT_TYPE: Final = "contract_event"
CONTRACT_FAULT: Final = "contract_fault"


@dataclass(frozen=True)
class ReadingFact:
    """One accepted reading as block application sees it."""

    idx: int            # the reading's leaf index in the log (its entry id)
    dev: str
    seq: int
    t: int              # device time ms (untrusted, but what windows use)
    k: str              # kind: gps, temp, shock, door, rfid, hum, ...
    d: Mapping[str, Any]
    ledger_time: int    # the block's ledger time ms


@dataclass(frozen=True)
class ContractEvent:
    """A business event; `to_map()` is the body of its ledger entry."""

    contract: str
    version: int
    event: str
    shipment: str | None
    dev: str | None
    at: int                         # device time (reading events) or ledger time (timers)
    cause: tuple[int, ...]          # entry indexes of the readings that caused it, sorted
    state: str | None               # the shipment state this event moves it to, if any
    data: dict[str, Any]
    notify: tuple[str, ...]         # "mqtt" and/or "webhook:<name>"

    def to_map(self) -> dict[str, Any]:
        """Deterministic map for the event's ledger entry (CBOR)."""
        return {"type": EVENT_TYPE, "v": 1, "contract": self.contract, "version": self.version,
                "event": self.event, "shipment": self.shipment, "dev": self.dev, "at": self.at,
                "cause": list(self.cause), "state": self.state, "data": self.data,
                "notify": list(self.notify)}


@dataclass(frozen=True)
class ContractInfo:
    """One registered contract version, for `contract list` / `contract show`."""

    name: str
    version: int
    status: str                    # active | superseded | retired
    effective: int                 # ledger ms from which it applies
    retired: int | None            # ledger ms it stopped (upgrade or retire)
    applies_to: dict[str, Any]
    rules: tuple[str, ...]
    description: str

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "status": self.status,
                "effective": self.effective, "retired": self.retired,
                "applies_to": self.applies_to, "rules": list(self.rules),
                "description": self.description}
