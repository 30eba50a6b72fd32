"""`make bench-history`: one device's history over one day, in a chain of 10 million entries.

Building the chain by signing and applying 10M readings would take hours and measure block
application, not the query. So this benchmark creates the node's real schema (Store), then
writes the rows directly in large transactions: `entries` with envelope-sized blobs (213
bytes, what a temperature reading's COSE_Sign1 weighs), `readings` rows as block application
writes them, `devices`, and `blocks` (one per 1000 entries). Entries interleave the devices in
time order, as a fleet's do, so one device's rows are spread over the whole table. Nothing is
signed and `merkle_nodes` is left empty: neither is read by the query. It says so in the
output.

It then prints SQLite's plan for the query (EXPLAIN QUERY PLAN) and times, over many random
(device, day) pairs, the same SQL the API runs for `GET /v1/devices/{id}/readings?from=&to=`
(ledger_node.history), all pages of the day (the API returns at most 1000 readings a page),
and the whole API request through the real FastAPI app, p50 and p99 against the 50 ms target.
The file has just been written, so the OS page cache is warm; say so when quoting figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledger_node.bench_rig import percentile
from ledger_node.history import readings_query
from ledger_node.store import _SCHEMA, Store

T0 = 1_763_000_000_000
DAY_MS = 86_400_000
ENVELOPE_BYTES = 213
BLOCK_ENTRIES = 1000
TARGET_MS = 50.0
PAGE = 1000


def build(path: Path, entries: int, devices: int, interval_s: int) -> None:
    """Write `entries` readings from `devices` devices, one every `interval_s` each."""
    Store(path).close()  # the node's own schema
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    # Secondary indexes are built once at the end (a sort), as CREATE INDEX does best; the
    # statements are the schema's own, run again below.
    conn.execute("DROP INDEX readings_dev_t")
    rnd = random.Random(5)
    names = [f"truck-{i:05d}" for i in range(devices)]
    jitter = [rnd.randrange(interval_s * 1000) for _ in range(devices)]
    blob = os.urandom(ENVELOPE_BYTES * 64)
    start, chunk = time.perf_counter(), 200_000

    def rows(first: int, n: int) -> Iterator[tuple[Any, ...]]:
        for idx in range(first, first + n):
            step, d = divmod(idx, devices)
            t = T0 + step * interval_s * 1000 + jitter[d]
            off = (idx * 7) % (len(blob) - ENVELOPE_BYTES)
            yield idx, names[d], step + 1, blob[off:off + 32], t, idx // BLOCK_ENTRIES, \
                blob[off:off + ENVELOPE_BYTES], f'{{"c": {4 + (idx % 50) / 10}}}'

    for first in range(0, entries, chunk):
        n = min(chunk, entries - first)
        batch = list(rows(first, n))
        with conn:
            conn.executemany("INSERT INTO entries VALUES (?, ?, 'reading', ?)",
                             [(r[0], r[5], r[6]) for r in batch])
            conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, 'gps', 'temp', ?, '', "
                             "?, ?)", [(r[0], r[1], r[2], r[3], r[4], r[7], r[5],
                                        T0 + r[5] * 1000) for r in batch])
        done = first + n
        rate = done / (time.perf_counter() - start)
        print(f"\rbench-history: wrote {done:,} of {entries:,} entries ({rate:,.0f}/s)",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    per_device = entries // devices
    with conn:
        conn.executemany(
            "INSERT INTO devices VALUES (?, 'bench', x'00', ?, 0, NULL, ?, ?, ?, ?, ?, 0, 0)",
            [(name, i.to_bytes(4, "big"), per_device, per_device, T0, T0, per_device)
             for i, name in enumerate(names)])
        conn.executemany("INSERT INTO blocks VALUES (?, ?, x'00', ?, ?, ?, ?, x'00')",
                         [(h, h.to_bytes(8, "big"), T0 + h * 1000, h * BLOCK_ENTRIES,
                           BLOCK_ENTRIES, (h + 1) * BLOCK_ENTRIES)
                          for h in range((entries + BLOCK_ENTRIES - 1) // BLOCK_ENTRIES)])
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('bench_history', ?)",
                     (json.dumps([entries, devices, interval_s]).encode(),))
    print("bench-history: building the readings index (dev, t)...",
          file=sys.stderr, flush=True)
    conn.executescript(_SCHEMA)  # CREATE INDEX IF NOT EXISTS: the dropped ones, as defined
    conn.close()


def time_queries(conn: sqlite3.Connection, days: list[tuple[str, int]]) -> list[float]:
    """ms to read each device-day through every page, with the API's SQL."""
    out: list[float] = []
    for dev, since in days:
        start = time.perf_counter()
        after = 0
        while True:
            sql, args = readings_query(dev, since, since + DAY_MS, None, after, PAGE)
            rows = conn.execute(sql, args).fetchall()
            if len(rows) < PAGE:
                break
            after = rows[-1][1]
        out.append((time.perf_counter() - start) * 1000)
    return out


def time_api(path: Path, days: list[tuple[str, int]]) -> list[float] | None:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fastapi.testclient import TestClient
    except ImportError:  # httpx (a dev extra) is not installed
        return None
    from ledger_node.api import create_app
    from ledger_node.auth import local_token

    client = TestClient(create_app(path), headers={
        "Authorization": f"Bearer {local_token(path.parent, prefix='bench')}"})
    client.get("/healthz")  # start the app's worker thread before timing
    gc.collect()
    gc.freeze()  # as `trustfleet node run` does once it has started (ledger_node.cli.serve)
    out: list[float] = []
    for dev, since in days:
        start = time.perf_counter()
        after = 0
        while after is not None:
            got = client.get(f"/v1/devices/{dev}/readings", params={
                "from": since, "to": since + DAY_MS, "after_seq": after, "limit": PAGE}).json()
            after = got["next_after_seq"]
        out.append((time.perf_counter() - start) * 1000)
    return out


def _report(name: str, ms: list[float]) -> None:
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    verdict = "meets" if p99 <= TARGET_MS else "MISSES"
    print(f"  {name:<44} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   ({verdict} the "
          f"{TARGET_MS:.0f} ms target at p99)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger_node.bench_history",
                                 description="History of one device over one day in a large "
                                             "chain (rows written directly, not signed).")
    ap.add_argument("--entries", type=int, default=10_000_000, help="chain size (10000000)")
    ap.add_argument("--devices", type=int, default=1000, help="devices (1000)")
    ap.add_argument("--interval-s", type=int, default=60,
                    help="seconds between two readings of a device (60)")
    ap.add_argument("--queries", type=int, default=300, help="device-days timed (300)")
    ap.add_argument("--db", type=Path, help="keep the chain in this file (reused if it was "
                    "built with the same sizes); default: a temporary folder")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tf-history-", dir=None) as tmp:
        path = args.db or Path(tmp) / "ledger.sqlite"
        return run(path, args)


def run(path: Path, args: argparse.Namespace) -> int:
    shape = [args.entries, args.devices, args.interval_s]
    if not _built(path, shape):
        path.unlink(missing_ok=True)
        print(f"bench-history: writing {args.entries:,} reading entries of {args.devices:,} "
              f"devices straight into SQLite (not signed: rows as block application writes "
              f"them, {ENVELOPE_BYTES}-byte envelopes) at {path}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        build(path, *shape)
        print(f"bench-history: built in {time.perf_counter() - start:.0f} s, "
              f"{path.stat().st_size / 2**30:.2f} GiB", file=sys.stderr)
    per_device = args.entries // args.devices
    span_days = per_device * args.interval_s * 1000 // DAY_MS
    if span_days < 1:
        print("bench-history: each device needs at least a day of readings", file=sys.stderr)
        return 2
    rnd = random.Random(11)
    days = [(f"truck-{rnd.randrange(args.devices):05d}", T0 + rnd.randrange(span_days) * DAY_MS)
            for _ in range(args.queries)]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    sql, qargs = readings_query(days[0][0], days[0][1], days[0][1] + DAY_MS, None, 0, PAGE)
    plan = conn.execute("EXPLAIN QUERY PLAN " + sql, qargs).fetchall()
    per_day = DAY_MS // (args.interval_s * 1000)
    print()
    print(f"chain: {args.entries:,} entries, {args.devices:,} devices x {per_device:,} readings "
          f"({span_days} days at one per {args.interval_s} s); rows written directly, "
          "not signed; OS page cache warm")
    print(f"query (ledger_node.history, as GET /v1/devices/{{id}}/readings?from=&to=):\n  {sql}")
    print("plan:\n" + "\n".join(f"  {row[-1]}" for row in plan))
    time_queries(conn, days[:20])  # first touches
    print(f"one device, one day (~{per_day} readings, {-(-per_day // PAGE)} pages of <= "
          f"{PAGE}), {len(days)} random device-days:")
    _report("SQL, every page of the day", time_queries(conn, days))
    api = time_api(path, days)
    if api is not None:
        _report("API request(s) through FastAPI, every page", api)
    conn.close()
    return 0


def _built(path: Path, shape: list[int]) -> bool:
    if not path.exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'bench_history'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and json.loads(bytes(row[0])) == shape


if __name__ == "__main__":
    sys.exit(main())
