"""`make bench` (consortium part): readings/s final with 3 etcd members and 4 ledger nodes.

Pre-signs readings for D devices (software keys), then, on this machine, in the same run:

  1. single node: Mosquitto and one ledger node with solo ordering (bench_rig.running_node);
     N readings published at once (QoS 1, one per message); readings committed per second,
     as the devices see it (the receipt covering each reading);
  2. consortium: a 3-member etcd cluster, Mosquitto and 4 ledger nodes with
     `ordering = "etcd"` (ledger_node.consortium.rig); the same N readings published at once
     through the shared subscription; readings **final** per second (a consortium node sends
     a receipt only when a quorum has signed the block), and the ratio to (1);
  3. consortium, steady: readings at a fixed rate (`--steady-rate`, in small slices every
     2 ms); publish-to-final latency p50 and p99.

Every node of the consortium re-validates every reading (device signature included) and
writes every block, so on one machine the consortium does four times the single node's work
(plus etcd's): the ratio shows that cost. `--batch N` signs N readings per signature
(trustfleet.batch), which takes most of the verification cost away.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from ledger_node.bench import (
    FLEET,
    Chain,
    Workload,
    add_batch_argument,
    parse_bench_args,
    receipts,
)
from ledger_node.bench_rig import (
    CpuClock,
    Latencies,
    RawPublisher,
    Steady,
    percentile,
    running_node,
)
from ledger_node.consortium.rig import start_rig
from trustfleet.topics import up_topic

TARGET_RATE = 10_000
TARGET_P99_S = 1.0


def burst(port: int, items: Chain, timeout: float, lat: Latencies) -> tuple[int, float]:
    """Publish `items` at once; (readings receipted, seconds until the last receipt)."""
    pub = RawPublisher(port, f"bench-burst-{os.getpid()}")
    topics = {dev: up_topic(FLEET, dev) for dev, _, _ in items}
    packets = [pub.packet(topics[dev], env) for dev, _, env in items]
    start = time.perf_counter()
    with lat.lock:
        lat.sent.update(((dev, seq), start) for dev, seq, _ in items)
    pub.send(packets, timeout=timeout)
    pub.wait_acked(timeout)
    want = {dev: seq for dev, seq, _ in items}
    while time.perf_counter() - start < timeout:
        if all(lat.committed(dev) >= seq for dev, seq in want.items()):
            break
        time.sleep(0.02)
    pub.close()
    first: dict[str, int] = {}
    for dev, seq, _ in items:
        first[dev] = min(seq, first.get(dev, seq))
    committed = sum(max(0, min(lat.committed(dev), want[dev]) - first[dev] + 1) for dev in want)
    return committed, lat.last_commit - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger_node.bench_consortium",
                                 description="Consortium throughput and publish-to-final "
                                             "latency, against one node in the same run.")
    ap.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    ap.add_argument("--readings", type=int, default=20_000,
                    help="readings published at once in each throughput phase (20000)")
    ap.add_argument("--nodes", type=int, default=4, help="ledger nodes (4)")
    ap.add_argument("--etcd", type=int, default=3, help="etcd members (3)")
    ap.add_argument("--steady-rate", type=float, default=1000,
                    help="readings/s in the latency phase (1000; 0: none)")
    ap.add_argument("--steady-seconds", type=float, default=10, help="its length (10)")
    add_batch_argument(ap)
    ap.add_argument("--verify-workers", type=int, default=0,
                    help="verify_workers of every consortium node (0: in the apply thread; "
                         "four nodes already share this machine's cores)")
    ap.add_argument("--block-interval-ms", type=int, default=500,
                    help="block_interval_ms of every consortium node (500: fewer, larger "
                         "blocks; every block costs each node a commit, a signature, a post)")
    ap.add_argument("--timeout", type=float, default=600, help="give up after seconds (600)")
    args = parse_bench_args(ap, argv)
    work = Workload.from_args(args)
    total = work.total
    keys, (first,), steady = work.presign("bench-consortium")

    with tempfile.TemporaryDirectory(prefix="tf-bench-solo-") as tmp:
        print(f"bench-consortium: single node (solo ordering): {total} readings at once...",
              flush=True)
        with running_node(Path(tmp), keys, FLEET) as node:
            lat, sub = receipts(node.mqtt_port, "bench-receipts")
            time.sleep(0.5)
            solo_done, solo_s = burst(node.mqtt_port, first, args.timeout, lat)
            sub.disconnect()
    if solo_done < total:
        print(f"bench-consortium: the single node committed only {solo_done} of {total}",
              file=sys.stderr)
        return 1
    solo_rate = solo_done / solo_s

    with tempfile.TemporaryDirectory(prefix="tf-bench-consortium-") as tmp:
        print(f"bench-consortium: consortium: {args.etcd} etcd members, {args.nodes} ledger "
              f"nodes...", flush=True)
        rig = start_rig(Path(tmp), args.nodes, keys, fleet=FLEET, etcd_members=args.etcd,
                        settings={"verify_workers": args.verify_workers,
                                  "block_interval_ms": args.block_interval_ms,
                                  "heartbeat_ms": 10_000})
        try:
            lat, sub = receipts(rig.mqtt_port, "bench-final-receipts")
            time.sleep(0.5)
            pids = [n.proc.pid for n in rig.nodes.values() if n.proc is not None]
            etcd_pids = [m.proc.pid for m in rig.etcd.members if m.proc is not None]
            cpu0 = (sum(CpuClock.of(p) for p in pids), sum(CpuClock.of(p) for p in etcd_pids),
                    CpuClock.of(rig.broker.pid))
            print(f"bench-consortium: consortium: {total} readings at once...", flush=True)
            done, took = burst(rig.mqtt_port, first, args.timeout, lat)
            cpu1 = (sum(CpuClock.of(p) for p in pids), sum(CpuClock.of(p) for p in etcd_pids),
                    CpuClock.of(rig.broker.pid))
            if done < total:
                print(f"bench-consortium: only {done} of {total} readings final before the "
                      "timeout", file=sys.stderr)
                return 1
            lat_steady: list[float] = []
            if steady:
                print(f"bench-consortium: steady: {len(steady)} readings at "
                      f"{args.steady_rate:,.0f}/s...", flush=True)
                time.sleep(1.0)
                pub = RawPublisher(rig.mqtt_port, "bench-steady")
                items = [(dev, seq, pub.packet(up_topic(FLEET, dev), env))
                         for dev, seq, env in steady]
                spent = Steady(pub, lat).run(items, args.steady_rate)
                want = {dev: seq for dev, seq, _ in steady}
                deadline = time.perf_counter() + args.timeout
                while time.perf_counter() < deadline and not all(
                        lat.committed(d) >= s for d, s in want.items()):
                    time.sleep(0.02)
                pub.close()
                lat_steady = [lat.latency[(d, s)] for d, s, _ in steady
                              if (d, s) in lat.latency]
                if len(lat_steady) < len(steady):
                    print(f"bench-consortium: only {len(lat_steady)} of {len(steady)} steady "
                          "readings final before the timeout", file=sys.stderr)
                    return 1
            heights = rig.heights()
            sub.disconnect()
        finally:
            rig.stop()

    rate = done / took
    lat_burst = [lat.latency[(d, s)] for d, s, _ in first if (d, s) in lat.latency]
    node_cpu, etcd_cpu, broker_cpu = (b - a for a, b in zip(cpu0, cpu1, strict=True))
    cores = os.cpu_count() or 1
    print()
    print(f"single node (solo):           {solo_rate:,.0f} readings/s committed "
          f"({solo_done} in {solo_s:.2f} s)")
    print(f"consortium ({args.etcd} etcd, {args.nodes} nodes): {rate:,.0f} readings/s final "
          f"({done} in {took:.2f} s); ratio to the single node {rate / solo_rate:.2f}")
    print(f"publish->final (burst):       p50 {percentile(lat_burst, 50) * 1000:.0f} ms, "
          f"p99 {percentile(lat_burst, 99) * 1000:.0f} ms (everything published at once)")
    if lat_steady:
        print(f"publish->final (steady {args.steady_rate:,.0f}/s): p50 "
              f"{percentile(lat_steady, 50) * 1000:.0f} ms, p99 "
              f"{percentile(lat_steady, 99) * 1000:.0f} ms ({len(lat_steady)} readings in "
              f"{spent:.1f} s)")
    print(f"CPU during the burst:         nodes {node_cpu:.1f} s, etcd {etcd_cpu:.1f} s, "
          f"broker {broker_cpu:.1f} s of {took * cores:.1f} core-s ({cores} cores)")
    print(f"heights at the end:           {heights}")
    p99 = percentile(lat_steady, 99) if lat_steady else None
    verdict = "met" if rate >= TARGET_RATE and p99 is not None and p99 < TARGET_P99_S \
        else "NOT met"
    print(f"target ({TARGET_RATE:,} readings/s final, p99 < {TARGET_P99_S:.0f} s): {verdict} "
          "on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
