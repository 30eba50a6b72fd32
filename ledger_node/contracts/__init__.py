"""The contract engine (DESIGN.md §7): contract documents in, deterministic events out.

    doc = parse_contract(text)                 # registration: ContractDocumentError(line, col)
    engine = ContractEngine(book)              # book: ledger_node.shipments.ShipmentBook
    engine.register(doc, effective=block_time)
    events = engine.on_reading(ReadingFact(...))   # per accepted reading, in log order
    events += engine.on_time(block_time)           # once per block, after its readings
    for ev in events: book.apply_event(ev.to_map(), block_time)

docs/contracts.md is the reference of the document format, the events and the rules for
late readings.
"""

from __future__ import annotations

from importlib import resources

from ledger_node.contracts.document import AppliesTo, ContractDocument, Rule, parse_contract
from ledger_node.contracts.engine import (
    CONTRACT_FAULT,
    ContractEngine,
    ContractEvent,
    ContractInfo,
    ReadingFact,
)
from ledger_node.contracts.errors import (
    CelCompileError,
    CelEvalError,
    ContractDocumentError,
    ContractError,
    ContractRegistrationError,
    ScenarioError,
)


def template_names() -> list[str]:
    """Names of the shipped templates (ledger_node/contracts/templates/*.yaml), sorted."""
    root = resources.files("ledger_node.contracts") / "templates"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def template_text(name: str) -> str:
    """The text of a shipped template; raises KeyError for an unknown name."""
    if name not in template_names():
        raise KeyError(name)
    root = resources.files("ledger_node.contracts") / "templates"
    return (root / f"{name}.yaml").read_text(encoding="utf-8")


__all__ = [
    "CONTRACT_FAULT",
    "AppliesTo",
    "CelCompileError",
    "CelEvalError",
    "ContractDocument",
    "ContractDocumentError",
    "ContractEngine",
    "ContractError",
    "ContractEvent",
    "ContractInfo",
    "ContractRegistrationError",
    "ReadingFact",
    "Rule",
    "ScenarioError",
    "parse_contract",
    "template_names",
    "template_text",
]
