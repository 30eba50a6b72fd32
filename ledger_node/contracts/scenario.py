"""Dry-run scenarios: a scripted or recorded stream replayed through one contract.

A scenario is a YAML or JSON map (docs/contracts.md, "Dry run"):

    start: 2026-03-01T08:00:00Z          # optional; needed for relative times "+15m"
    shipments:                           # optional; default: one shipment DRYRUN
      - shipment: SHP-1                  # the shipment_created fields (parties, units,
        devices: [truck-1]               #   route, geofences, deadline, contracts), plus
        state: in_transit                #   devices ([id] or [{dev, start, end}]) and state
    stream:
      - {dev: truck-1, t: "+0s", k: temp, d: {c: 4.1}}       # a reading (idx, seq,
      - {tick: "+30m"}                                       #   ledger_time optional)
      - {shipment: SHP-1, state: delivered, at: "+2h"}       # an operator state move

Times are ms since the epoch, ISO 8601 (UTC when no offset is given) or "+DURATION" after
`start`. The contract under test is attached to every shipment of the scenario. Readings get
idx = their position in the stream (1-based) and seq = a per-device counter unless given;
their ledger time is their device time unless given, never less than the one before (ledger
time does not go back). After each reading the runner calls on_time(ledger time), as block
application does after each block; a tick calls on_time alone.

A JSON-lines file (one reading object per line, as exported: dev, t, k, d, and optionally
idx, seq, ledger_time) is also accepted: every device seen serves one shipment DRYRUN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ruamel.yaml import YAML

from ledger_node.contracts.document import ContractDocument, parse_duration
from ledger_node.contracts.engine import ContractEngine, ContractEvent, ReadingFact
from ledger_node.contracts.errors import ScenarioError
from ledger_node.shipments import (
    CREATED,
    IN_TRANSIT,
    SHIPMENT_ASSIGNED,
    SHIPMENT_CREATED,
    SHIPMENT_STATE,
    ShipmentBook,
    ShipmentRejected,
)

MAX_SCENARIO_CHARS: Final = 64 * 1024 * 1024
MAX_STREAM: Final = 2_000_000
DRYRUN: Final = "DRYRUN"
_SHIPMENT_EXTRA: Final = ("devices", "state")
_READING_KEYS: Final = frozenset({"dev", "t", "k", "d", "idx", "seq", "ledger_time", "ts",
                                  "flags", "height"})


@dataclass
class Scenario:
    shipments: list[dict[str, Any]]
    stream: list[dict[str, Any]]
    start: int | None = None
    source: str = "<scenario>"


@dataclass
class RunResult:
    events: list[tuple[int, ContractEvent]] = field(default_factory=list)
    """(ledger time of the call that produced it, event), in order."""
    readings: int = 0
    ticks: int = 0


def parse_time(value: object, start: int | None, where: str) -> int:
    """ms since the epoch from an int, an ISO 8601 string or "+DURATION" after start."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**53:
            raise ScenarioError(where, f"time {value} out of range")
        return value
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value.startswith("+"):
        if start is None:
            raise ScenarioError(where, "a relative time needs `start`")
        if value in ("+0", "+0s", "+0m"):
            return start
        try:
            return start + parse_duration(value[1:])
        except ValueError as exc:
            raise ScenarioError(where, f"bad relative time {value!r}: {exc}") from None
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ScenarioError(where, f"bad time {value!r} (ms, ISO 8601 or +15m)") from None
    else:
        raise ScenarioError(where, f"bad time {value!r} (ms, ISO 8601 or +15m)")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def format_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{ms % 1000:03d}Z"


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str(x)
    return x


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """A scenario from YAML/JSON text, or from JSON lines; raises ScenarioError."""
    if len(text) > MAX_SCENARIO_CHARS:
        raise ScenarioError(source, f"larger than {MAX_SCENARIO_CHARS} characters")
    stripped = text.strip()
    if not stripped:
        raise ScenarioError(source, "empty")
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    if len(lines) > 1 and all(ln.lstrip().startswith("{") for ln in lines[:2]):
        return _json_lines(lines, source)
    try:
        doc = YAML(typ="safe").load(text)
    except Exception as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise ScenarioError(where, f"syntax error: {getattr(exc, 'problem', exc)}") from None
    if isinstance(doc, dict) and "k" in doc and "dev" in doc:
        return _json_lines([json.dumps(_plain(doc))], source)
    if not isinstance(doc, dict):
        raise ScenarioError(source, "a scenario is a map with `stream` (and `shipments`)")
    extra = set(doc) - {"start", "shipments", "stream"}
    if extra:
        raise ScenarioError(source, f"unknown keys {sorted(map(str, extra))}")
    start = parse_time(doc["start"], None, f"{source}: start") if "start" in doc else None
    shipments = doc.get("shipments")
    if shipments is None:
        shipments = []
    if not isinstance(shipments, list) or not all(isinstance(s, dict) for s in shipments):
        raise ScenarioError(source, "shipments must be a list of maps")
    stream = doc.get("stream")
    if not isinstance(stream, list) or not all(isinstance(x, dict) for x in stream):
        raise ScenarioError(source, "stream must be a list of maps")
    if len(stream) > MAX_STREAM:
        raise ScenarioError(source, f"more than {MAX_STREAM} stream items")
    return Scenario(_plain(shipments), _plain(stream), start, source)


def _json_lines(lines: list[str], source: str) -> Scenario:
    stream = []
    for n, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ScenarioError(f"{source}:{n}", f"not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise ScenarioError(f"{source}:{n}", "each line is one reading object")
        stream.append(item)
        if len(stream) > MAX_STREAM:
            raise ScenarioError(source, f"more than {MAX_STREAM} readings")
    return Scenario([], stream, None, source)


def _setup(scenario: Scenario, doc: ContractDocument, book: ShipmentBook) -> None:
    ships = scenario.shipments
    if not ships:
        devs = sorted({str(x["dev"]) for x in scenario.stream
                       if isinstance(x, dict) and isinstance(x.get("dev"), str)})
        ships = [{"shipment": DRYRUN, "devices": devs}]
    for i, spec in enumerate(ships):
        where = f"{scenario.source}: shipments[{i}]"
        body = {k: v for k, v in spec.items() if k not in _SHIPMENT_EXTRA}
        contracts = list(body.get("contracts") or [])
        if doc.name not in contracts:
            contracts.append(doc.name)
        body.update({"v": 1, "type": SHIPMENT_CREATED, "t": 0, "contracts": contracts})
        if body.get("deadline") is not None:
            body["deadline"] = parse_time(body["deadline"], scenario.start, f"{where}.deadline")
        at = scenario.start or 0
        try:
            book.apply(body, at)
            for j, dev in enumerate(spec.get("devices") or []):
                a = {"dev": dev} if isinstance(dev, str) else dev
                if not isinstance(a, dict):
                    raise ScenarioError(f"{where}.devices[{j}]", "a device id or {dev, start}")
                book.apply({"v": 1, "type": SHIPMENT_ASSIGNED, "t": 0,
                            "shipment": body["shipment"], "dev": a.get("dev"),
                            "start": parse_time(a.get("start", 0), scenario.start,
                                                f"{where}.devices[{j}].start"),
                            "end": None if a.get("end") is None else parse_time(
                                a["end"], scenario.start, f"{where}.devices[{j}].end")}, at)
            state = spec.get("state", IN_TRANSIT)
            if state != CREATED:
                book.apply({"v": 1, "type": SHIPMENT_STATE, "t": 0,
                            "shipment": body["shipment"], "state": state}, at)
        except ShipmentRejected as exc:
            raise ScenarioError(where, str(exc)) from None


def run_scenario(scenario: Scenario, doc: ContractDocument) -> RunResult:
    """Replay the scenario through a fresh engine with `doc` registered at time 0."""
    book = ShipmentBook()
    engine = ContractEngine(book)
    engine.register(doc, 0)
    _setup(scenario, doc, book)
    result = RunResult()
    seqs: dict[str, int] = {}
    ledger = scenario.start or 0

    def take(events: list[ContractEvent], at: int) -> None:
        for ev in events:
            book.apply_event(ev.to_map(), at)
            result.events.append((at, ev))

    for n, item in enumerate(scenario.stream, 1):
        where = f"{scenario.source}: stream[{n - 1}]"
        if "tick" in item:
            ledger = max(ledger, parse_time(item["tick"], scenario.start, where))
            take(engine.on_time(ledger), ledger)
            result.ticks += 1
        elif "state" in item and "k" not in item:
            at = max(ledger, parse_time(item.get("at", ledger), scenario.start, where))
            ledger = at
            sid = item.get("shipment", DRYRUN)
            try:
                book.apply({"v": 1, "type": SHIPMENT_STATE, "t": 0, "shipment": sid,
                            "state": item["state"]}, at)
            except ShipmentRejected as exc:
                raise ScenarioError(where, str(exc)) from None
            take(engine.on_shipment_change(str(sid), at), at)
        else:
            fact = _fact(item, n, seqs, scenario.start, where)
            ledger = max(ledger, fact.ledger_time)
            if fact.ledger_time != ledger:
                fact = ReadingFact(fact.idx, fact.dev, fact.seq, fact.t, fact.k, fact.d, ledger)
            take(engine.on_reading(fact), ledger)
            take(engine.on_time(ledger), ledger)
            result.readings += 1
    return result


def _fact(item: dict[str, Any], n: int, seqs: dict[str, int], start: int | None,
          where: str) -> ReadingFact:
    extra = set(item) - _READING_KEYS
    if extra:
        raise ScenarioError(where, f"unknown keys {sorted(extra)} (a reading has dev, t, k, d; "
                                   "or use tick, or shipment+state)")
    dev, k, d = item.get("dev"), item.get("k"), item.get("d")
    if not isinstance(dev, str) or not dev:
        raise ScenarioError(where, "a reading needs dev (a device id)")
    if not isinstance(k, str) or not k:
        raise ScenarioError(where, "a reading needs k (its kind: temp, gps, ...)")
    if not isinstance(d, dict):
        raise ScenarioError(where, "a reading needs d (a map of values)")
    t = parse_time(item.get("t"), start, where)
    seq = item.get("seq")
    if seq is None:
        seq = seqs.get(dev, 0) + 1
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ScenarioError(where, "seq must be an integer")
    seqs[dev] = seq
    idx = item.get("idx", n)
    if not isinstance(idx, int) or isinstance(idx, bool):
        raise ScenarioError(where, "idx must be an integer")
    ledger = parse_time(item["ledger_time"], start, where) if "ledger_time" in item else t
    return ReadingFact(idx, dev, seq, t, k, d, ledger)


def format_event(ev: ContractEvent) -> str:
    """One human-readable line."""
    parts = [format_time(ev.at), ev.event, f"{ev.contract}@{ev.version}",
             f"shipment={ev.shipment or '-'}", f"dev={ev.dev or '-'}"]
    if ev.state:
        parts.append(f"state->{ev.state}")
    if ev.cause:
        shown = ",".join(map(str, ev.cause[:8])) + ("..." if len(ev.cause) > 8 else "")
        parts.append(f"cause=[{shown}]")
    if ev.notify:
        parts.append("notify=" + ",".join(ev.notify))
    parts.append(json.dumps(ev.data, sort_keys=True, separators=(",", ":")))
    return "  ".join(parts)
