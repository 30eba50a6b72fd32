"""`make bench`: what contracts cost block application, measured in one run.

The same pre-signed readings (D trucks, one shipment each; per truck a mix of temperature,
GPS and shock/door/RFID readings like the engine bench's, ledger_node.contracts.bench) are
applied to two fresh chains by `Chain.apply`, in blocks of B readings, with the node's
verification worker processes and a real SQLite store on disk (WAL, synchronous=FULL):

  * none: shipments exist, no contract is registered;
  * ten:  ten contracts attached to every shipment — nine shipped templates (cold chain,
          frozen, shock, geofence, route corridor, late delivery, door outside the geofences,
          device silent, custody transfer) and one custom CEL condition.

Each configuration runs `--runs` times, alternating, and the best run of each counts
(the machine is shared: the best run is the least disturbed one). Prints readings/s
committed for both, the contracts' cost as a share of throughput (target: at most 20 %),
the same by CPU time per reading (this process and its verification workers: less disturbed
by other load than wall time), and the contract events the ten contracts emitted.
Everything is checked as in production: every signature, every contract; nothing is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from hsm import SoftwareSigner
from ledger_node import entries
from ledger_node.admin import (
    CONTRACT_REGISTERED,
    SHIPMENT_ASSIGNED,
    SHIPMENT_CREATED,
    SHIPMENT_STATE,
    build_operator_entry,
)
from ledger_node.bench_rig import CpuClock
from ledger_node.chain import Chain, Message, OrderedBatch
from ledger_node.contracts import parse_contract, template_text
from ledger_node.contracts.bench import CUSTOM, SSCC, TEMPLATES, _square, build_stream
from ledger_node.softpki import SoftwareFleetPKI
from ledger_node.store import Store
from ledger_node.workers import start_verify_pool
from trustfleet.cose import sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.topics import up_topic

FLEET = "bench"
T0 = 1_763_700_000_000


def presign(trucks: int, readings: int) -> tuple[dict[str, SoftwareSigner], list[Message]]:
    """Device keys and the signed messages, in the engine bench's stream order."""
    signers = {f"truck-{i:05d}": SoftwareSigner.generate() for i in range(trucks)}
    prev = dict.fromkeys(signers, GENESIS_PREV)
    out: list[Message] = []
    for fact in build_stream(trucks, readings):
        r = Reading(dev=fact.dev, seq=fact.seq, prev=prev[fact.dev], t=T0 + fact.t, ts="gps",
                    k=fact.k, d=dict(fact.d))
        signer = signers[fact.dev]
        env = sign1(encode_payload(r), signer.kid, signer.sign)
        prev[fact.dev] = hashlib.sha256(env).digest()
        out.append(Message(up_topic(FLEET, fact.dev), env, 0))
    return signers, out


def setup_entries(pki: SoftwareFleetPKI, signers: dict[str, SoftwareSigner],
                  contracts: bool) -> list[bytes]:
    def signed(body: dict[str, object]) -> bytes:
        return build_operator_entry({**body, "t": T0}, pki.operator, pki.operator_cert)

    out = [pki.enrol_entry(dev, FLEET, s.public_key_der()) for dev, s in signers.items()]
    names: list[str] = []
    if contracts:
        for text in [*(template_text(n) for n in TEMPLATES), CUSTOM]:
            doc = parse_contract(text)
            names.append(doc.name)
            out.append(signed({"type": CONTRACT_REGISTERED, "name": doc.name,
                               "version": doc.version, "doc": text, "effective": None}))
    for i, dev in enumerate(signers):
        sid = f"SHP-{i:05d}"
        out.append(signed({
            "type": SHIPMENT_CREATED, "shipment": sid,
            "parties": [{"org": "shipper-a", "role": "shipper"}], "units": [SSCC.format(i)],
            "route": {"type": "LineString", "coordinates": [[4.0, 50.0], [5.0, 51.0]]},
            "geofences": {"origin": _square(3.99, 49.99, 0.02), "dest": _square(4.99, 50.99, 0.02)},
            "deadline": T0 + 10 * 86_400_000, "contracts": names}))
        out.append(signed({"type": SHIPMENT_ASSIGNED, "shipment": sid, "dev": dev,
                           "start": T0 - 60_000, "end": None}))
        out.append(signed({"type": SHIPMENT_STATE, "shipment": sid, "state": "in_transit"}))
    return out


def run_once(folder: Path, pki: SoftwareFleetPKI, signers: dict[str, SoftwareSigner],
             messages: list[Message], block: int, contracts: bool, workers: int
             ) -> tuple[float, int, float]:
    """(readings/s committed, contract events, CPU µs per reading of this process and its
    verification workers) for one fresh chain."""
    node = SoftwareSigner.generate()
    store = Store(folder / f"bench-{'ten' if contracts else 'none'}-{time.monotonic_ns()}.sqlite")
    chain = Chain(store, "bench", "node-1", node, executor=start_verify_pool(workers))
    now = T0
    chain.apply(OrderedBatch(now, "node-1", (entries.genesis("bench", "node-1",
                                                             node.public_key_der(), now,
                                                             pki.ca_cert),)))
    setup = setup_entries(pki, signers, contracts)
    for i in range(0, len(setup), 500):
        now += 1
        chain.apply(OrderedBatch(now, "node-1", tuple(setup[i:i + 500])))
    time.sleep(1.0)  # let the worker processes finish starting
    accepted = events = 0
    cpu0 = CpuClock.tree(os.getpid())  # this process and its live verification workers,
    # read from /proc: RUSAGE_CHILDREN would also count the workers' start-up (at reaping)
    start = time.perf_counter()
    for i in range(0, len(messages), block):
        now += 200
        result = chain.apply(OrderedBatch(now, "node-1", (), tuple(messages[i:i + block])))
        accepted += result.accepted
        events += len(result.events)
    seconds = time.perf_counter() - start
    if accepted != len(messages):
        raise SystemExit(f"bench: only {accepted} of {len(messages)} readings were accepted")
    cpu = CpuClock.tree(os.getpid()) - cpu0
    if chain.executor is not None:
        chain.executor.shutdown()  # type: ignore[attr-defined]
    store.close()
    cpu_us = 1e6 * cpu / accepted
    return accepted / seconds, events, cpu_us


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger_node.bench_contracts",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--trucks", type=int, default=100, help="trucks, one shipment each (100)")
    ap.add_argument("--readings", type=int, default=40_000, help="readings per run (40000)")
    ap.add_argument("--block", type=int, default=2000, help="readings per block (2000)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each configuration (3)")
    ap.add_argument("--workers", type=int, default=2, help="verification processes (2)")
    args = ap.parse_args(argv)
    print(f"contracts bench: {args.readings:,} readings from {args.trucks} trucks, blocks of "
          f"{args.block}, {args.workers} verification workers, best of {args.runs}",
          flush=True)
    pki = SoftwareFleetPKI(now_ms=T0)
    signers, messages = presign(args.trucks, args.readings)
    best = {False: 0.0, True: 0.0}
    cpu = {False: float("inf"), True: float("inf")}
    emitted = 0
    with tempfile.TemporaryDirectory(prefix="tf-bench-contracts-") as tmp:
        for run in range(args.runs):
            for contracts in (False, True):
                rate, events, cpu_us = run_once(Path(tmp), pki, signers, messages, args.block,
                                                contracts, args.workers)
                best[contracts] = max(best[contracts], rate)
                cpu[contracts] = min(cpu[contracts], cpu_us)
                emitted = events if contracts else emitted
                print(f"  run {run + 1}: {'10 contracts' if contracts else 'no contract '} "
                      f"{rate:>9,.0f} readings/s committed, {cpu_us:5.0f} CPU µs/reading"
                      + (f", {events} contract events" if contracts else ""), flush=True)
    cost = 1 - best[True] / best[False]
    cpu_cost = 1 - cpu[False] / cpu[True]
    print(f"contracts: none {best[False]:,.0f} readings/s, ten per shipment {best[True]:,.0f} "
          f"readings/s: cost {cost:.1%} of throughput (target <= 20%), {emitted} events")
    print(f"contracts, by CPU (robust to a busy machine): none {cpu[False]:.0f} µs/reading, ten "
          f"per shipment {cpu[True]:.0f} µs/reading: the node can commit {cpu_cost:.1%} fewer "
          f"readings per CPU second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
