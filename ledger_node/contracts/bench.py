"""`python -m ledger_node.contracts.bench`: readings per second through the contract engine.

Feeds the same synthetic stream (a fleet of trucks, one shipment each, readings mixed like a
real truck: temperature, gps, shock, door, rfid) through a ContractEngine with no contract,
with the ten shipped-template-based contracts attached to every shipment (nine templates and
one custom CEL contract), and with ten CEL-only contracts, calling on_time once per block of
`--block` readings like block application does. Prints readings/s and µs per reading for
each. Only the engine is timed (the stream is built before); no ledger, no I/O.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from ledger_node.contracts import ContractEngine, ReadingFact, parse_contract, template_text
from ledger_node.shipments import ShipmentBook

TEMPLATES = ("cold-chain-2-8", "frozen", "shock", "geofence", "route-corridor",
             "late-delivery", "door-outside", "device-silent", "custody-transfer")
CUSTOM = """
name: humid-hot
version: 1
params: {rh: 90.0, c: 30.0}
rules:
  - id: hot-and-humid
    on: {reading: temp}
    when: "reading.d.c > params.c && shipment.state == 'in_transit'"
    emit: hot
"""
CEL_ONLY = """
name: cel-{n}
version: 1
params: {{high: {high}}}
rules:
  - id: warm
    on: {{reading: temp}}
    when: "reading.d.c > params.high"
    for: 15m
    emit: warm
"""
SSCC = "urn:epc:id:sscc:0614141.{:010d}"
MINUTE = 60_000


def _square(lon: float, lat: float, size: float) -> dict[str, object]:
    return {"type": "Polygon", "coordinates": [[[lon, lat], [lon + size, lat],
                                                [lon + size, lat + size], [lon, lat + size],
                                                [lon, lat]]]}


def build_book(trucks: int, contracts: Sequence[str]) -> ShipmentBook:
    book = ShipmentBook()
    for i in range(trucks):
        sid = f"SHP-{i:05d}"
        book.apply({"v": 1, "type": "shipment_created", "t": 0, "shipment": sid,
                    "parties": [{"org": "shipper-a", "role": "shipper"}],
                    "units": [SSCC.format(i)], "deadline": 10**13,
                    "route": {"type": "LineString", "coordinates": [[4.0, 50.0], [5.0, 51.0]]},
                    "geofences": {"origin": _square(3.99, 49.99, 0.02),
                                  "dest": _square(4.99, 50.99, 0.02)},
                    "contracts": list(contracts)}, 0)
        book.apply({"v": 1, "type": "shipment_assigned", "t": 0, "shipment": sid,
                    "dev": f"truck-{i:05d}", "start": 0}, 0)
        book.apply({"v": 1, "type": "shipment_state", "t": 0, "shipment": sid,
                    "state": "in_transit"}, 0)
    return book


def build_stream(trucks: int, readings: int) -> list[ReadingFact]:
    """Per truck, one reading every 6 s of device time: 6 temp, 3 gps, then one of
    shock / door / rfid in turn (60 % temp, 30 % gps, 10 % events)."""
    out: list[ReadingFact] = []
    step = 0
    while len(out) < readings:
        for i in range(trucks):
            t = step * 6_000
            slot = step % 10
            frac = (step % 600) / 600
            if slot < 6:
                k, d = "temp", {"c": 4.0 + 6.0 * ((step // 50) % 2), "probe": "p1"}
            elif slot < 9:
                k, d = "gps", {"lat": 50.0 + frac, "lon": 4.0 + frac + 0.001 * (step % 7),
                               "speed": 22.0}
            elif (step // 10) % 3 == 0:
                k, d = "shock", {"peak_g": 1.0 + (step % 9), "x": 0.1, "y": 0.2, "z": 0.9}
            elif (step // 10) % 3 == 1:
                k, d = "door", {"open": step % 4 == 1}
            else:
                k, d = "rfid", {"epc": SSCC.format(i), "antenna": 1, "rssi": -60}
            out.append(ReadingFact(len(out), f"truck-{i:05d}", step + 1, t, k, d, t + 500))
            if len(out) >= readings:
                break
        step += 1
    return out


def run(engine: ContractEngine, stream: Sequence[ReadingFact], block: int) -> tuple[float, int]:
    events = 0
    start = time.perf_counter()
    for n, fact in enumerate(stream, 1):
        events += len(engine.on_reading(fact))
        if n % block == 0:
            events += len(engine.on_time(fact.ledger_time))
    return time.perf_counter() - start, events


def measure(name: str, contracts: Sequence[str], docs: Sequence[str], trucks: int,
            stream: Sequence[ReadingFact], block: int) -> float:
    book = build_book(trucks, contracts)
    engine = ContractEngine(book)
    for text in docs:
        engine.register(parse_contract(text), 0)
    seconds, events = run(engine, stream, block)
    rate = len(stream) / seconds
    print(f"{name:<34} {rate:>10,.0f} readings/s  {1e6 * seconds / len(stream):6.2f} µs/reading"
          f"  {events:>6} events")
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ledger_node.contracts.bench",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--readings", type=int, default=100_000)
    p.add_argument("--trucks", type=int, default=100)
    p.add_argument("--block", type=int, default=200, help="readings per block (on_time call)")
    args = p.parse_args(argv)
    stream = build_stream(args.trucks, args.readings)
    print(f"{len(stream):,} readings, {args.trucks} trucks/shipments, on_time every "
          f"{args.block} readings")
    base = measure("0 contracts", [], [], args.trucks, stream, args.block)
    names = [*TEMPLATES, "humid-hot"]
    docs = [template_text(n) for n in TEMPLATES] + [CUSTOM]
    ten = measure("10 contracts (9 templates + 1 CEL)", names, docs, args.trucks, stream,
                  args.block)
    cel_docs = [CEL_ONLY.format(n=n, high=8.0 + n) for n in range(10)]
    cel = measure("10 CEL contracts (temp, for 15m)", [f"cel-{n}" for n in range(10)],
                  cel_docs, args.trucks, stream, args.block)
    print(f"engine cost per reading, 10 contracts: {1e6 / ten - 1e6 / base:.2f} µs "
          f"(templates), {1e6 / cel - 1e6 / base:.2f} µs (all CEL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
