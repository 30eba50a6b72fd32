"""Prometheus metrics of a ledger node: the body of `GET /metrics` (text format 0.0.4).

Everything is read at scrape time and nothing is counted twice: the node keeps its counters
(`LedgerNode.status()`), this module only turns a status dict into metric families, so the
apply thread does no extra work per reading. `metrics_endpoint(status, db_path=...)` calls
`status()` once, reads the quarantine counters of the store through its own read-only
connection when `db_path` is given, and renders. docs/metrics.md lists every metric.

Status keys read (missing or malformed ones are left out of the output, never a failure):
  node, chain, height, size, devices, broker_connected, queue, queue_suspect, accepted,
  duplicates, rejected {reason: n}, received, summarised_unexamined, readings_per_s,
  uptime_s                                            (what LedgerNode.status() has today)
  verify_workers   int                                 (the resolved verify_processes)
  blocks           BlockStats.snapshot()               (block apply time and size)
  influx           InfluxMirror.status()               (ledger_node.influx_mirror)

Block apply time and size are not in the log; the node measures them with a `BlockStats`
(`observe(seconds, entries)` once per block, a few additions under an uncontended lock).

Errors: MetricsError (a LedgerError) when status() itself fails or the store cannot be read.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ledger_node.errors import LedgerError, StoreError
from ledger_node.store import open_reader

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
APPLY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ENTRY_BUCKETS: Final = (1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10_000.0, 50_000.0)
MAX_LABEL: Final = 128
MAX_LABELLED: Final = 256
"""Label values per labelled metric, at most (reasons are a short fixed list in practice)."""


class MetricsError(LedgerError):
    """The node's status or its store could not be read for a scrape."""


class Histogram:
    """Cumulative bucket counts, sum and count, for values observed one at a time."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """{"buckets": [[upper bound, cumulative count], ...], "sum": s, "count": n}: JSON-ready
        (the +Inf bucket is `count`)."""
        running, buckets = 0, []
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            buckets.append([bound, running])
        return {"buckets": buckets, "sum": self.sum, "count": sum(self.counts)}


class BlockStats:
    """How long applying each block took and how many entries it had. `observe` from the
    apply thread, `snapshot` from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apply = Histogram(APPLY_BUCKETS)
        self._entries = Histogram(ENTRY_BUCKETS)

    def observe(self, seconds: float, entries: int) -> None:
        with self._lock:
            self._apply.observe(seconds)
            self._entries.observe(float(entries))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"apply_seconds": self._apply.snapshot(), "entries": self._entries.snapshot()}


# -- status dict -> metric families (pure) ----------------------------------------------------

def _number(value: object) -> float | None:
    """A finite number (bools as 1/0), or None for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _label(value: object) -> str:
    return str(value)[:MAX_LABEL]


def _labelled(values: object) -> list[tuple[str, float]]:
    """(label, number) pairs of a {label: number} dict, malformed items left out."""
    if not isinstance(values, Mapping):
        return []
    out = [(_label(k), n) for k, v in values.items() if (n := _number(v)) is not None]
    return sorted(out)[:MAX_LABELLED]


def _histogram(name: str, doc: str, snap: object) -> Metric | None:
    """A histogram family from a Histogram.snapshot() dict (None if it is malformed)."""
    if not isinstance(snap, Mapping):
        return None
    count, total = _number(snap.get("count")), _number(snap.get("sum"))
    raw = snap.get("buckets")
    if count is None or total is None or not isinstance(raw, list):
        return None
    buckets: list[tuple[str, float]] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2:
            return None
        bound, n = _number(item[0]), _number(item[1])
        if bound is None or n is None or n > count or (buckets and n < buckets[-1][1]):
            return None
        buckets.append((repr(bound), n))
    return HistogramMetricFamily(name, doc, buckets=[*buckets, ("+Inf", count)],
                                 sum_value=total)


_NODE_SCALARS: Final = (
    ("readings_accepted", "counter", "accepted", "Readings accepted into blocks (this run)."),
    ("readings_duplicate", "counter", "duplicates",
     "Duplicate readings acknowledged and ignored (this run)."),
    ("messages_received", "counter", "received", "MQTT messages received on up topics."),
    ("messages_summarised_unexamined", "counter", "summarised_unexamined",
     "Messages ingest counted in the quarantine summary without examining (overload)."),
    ("readings_per_second", "gauge", "readings_per_s",
     "Readings accepted per second over the last 10 s."),
    ("chain_height", "gauge", "height", "Height of the newest block (-1: no block yet)."),
    ("tree_size", "gauge", "size", "Entries in the log (its Merkle tree size)."),
    ("devices", "gauge", "devices", "Devices in the chain's state (revoked ones included)."),
    ("broker_connected", "gauge", "broker_connected", "1 while connected to the MQTT broker."),
    ("uptime_seconds", "gauge", "uptime_s", "Seconds since the node started."),
    ("verify_workers", "gauge", "verify_workers",
     "Processes that open envelopes and check signatures (0: the apply thread does)."),
)

_MIRROR_SCALARS: Final = (
    ("lag_entries", "gauge", "lag",
     "Newest committed reading's log index minus the mirror's cursor."),
    ("oldest_unmirrored_age_seconds", "gauge", "oldest_unmirrored_age_s",
     "Seconds since the oldest reading not yet mirrored was committed (0: none)."),
    ("cursor", "gauge", "cursor", "Log index of the last reading the server acknowledged."),
    ("points_written", "counter", "written", "Points the server acknowledged (this run)."),
    ("batches_written", "counter", "batches", "Write batches acknowledged (this run)."),
    ("failed_attempts", "counter", "failed_attempts", "Write passes that failed (retried)."),
    ("failing", "gauge", "failing", "1 while writes fail and are being retried."),
)


def _scalars(prefix: str, table: Iterable[tuple[str, str, str, str]],
             status: Mapping[str, Any]) -> Iterator[Metric]:
    for name, kind, key, doc in table:
        value = _number(status.get(key, 0 if key == "oldest_unmirrored_age_s" else None))
        if value is None:
            continue
        family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        yield family(prefix + name, doc, value=value)


def _by_label(name: str, doc: str, label: str, values: object,
              kind: str = "counter") -> Metric:
    family: CounterMetricFamily | GaugeMetricFamily = \
        CounterMetricFamily(name, doc, labels=[label]) if kind == "counter" \
        else GaugeMetricFamily(name, doc, labels=[label])
    for key, value in _labelled(values):
        family.add_metric([key], value)
    return family


def node_families(status: Mapping[str, Any],
                  quarantine: Mapping[str, Mapping[str, int]] | None = None) -> list[Metric]:
    """The node's metric families from its status dict (see the module docstring) and, when
    given, the store's quarantine counts ({"stored": {reason: n}, "summarised": {...}})."""
    p = "trustfleet_node_"
    out: list[Metric] = []
    info = GaugeMetricFamily(p + "info", "The node and the chain it serves (always 1).",
                             labels=["node", "chain"])
    info.add_metric([_label(status.get("node", "")), _label(status.get("chain", ""))], 1.0)
    out.append(info)
    out.extend(_scalars(p, _NODE_SCALARS, status))
    height = _number(status.get("height"))
    if height is not None:
        out.append(CounterMetricFamily(p + "blocks_committed", "Blocks in the chain (height + 1).",
                                       value=max(0.0, height + 1)))
    out.append(_by_label(p + "rejected", "Input rejected into the quarantine, by reason "
                         "(this run).", "reason", status.get("rejected")))
    total, suspect = _number(status.get("queue")), _number(status.get("queue_suspect"))
    if total is not None and suspect is not None:
        out.append(_by_label(p + "ingest_queue_depth",
                             "Messages waiting for the apply thread, by lane.", "lane",
                             {"device": max(0.0, total - suspect), "suspect": suspect}, "gauge"))
    blocks = status.get("blocks")
    if isinstance(blocks, Mapping):
        for key, name, doc in (
                ("apply_seconds", "block_apply_seconds",
                 "Time to validate, sign and commit one block."),
                ("entries", "block_entries", "Entries per committed block.")):
            family = _histogram(p + name, doc, blocks.get(key))
            if family is not None:
                out.append(family)
    if quarantine is not None:
        out.append(_by_label(p + "quarantine_stored", "Rejected items stored with their raw "
                             "bytes, by reason.", "reason", quarantine.get("stored"), "gauge"))
        out.append(_by_label(p + "quarantine_summarised", "Rejected items only counted (beyond "
                             "the quarantine caps, or unexamined), by reason.", "reason",
                             quarantine.get("summarised"), "gauge"))
    mirror = status.get("influx")
    if isinstance(mirror, Mapping):
        out.extend(mirror_families(mirror))
    return out


def mirror_families(status: Mapping[str, Any]) -> list[Metric]:
    """Metric families of an InfluxMirror.status() dict."""
    p = "trustfleet_influx_mirror_"
    out = list(_scalars(p, _MIRROR_SCALARS, status))
    out.append(_by_label(p + "fields_skipped", "Reading values left out of points, by reason.",
                         "reason", status.get("skipped_fields")))
    out.append(_by_label(p + "readings_skipped", "Readings not mirrored at all, by reason.",
                         "reason", status.get("skipped_readings")))
    return out


# -- the I/O shell --------------------------------------------------------------------------

def quarantine_counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Stored and summarised quarantine items by reason (ledger_node.quarantine)."""
    stored = dict(conn.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"))
    try:
        summarised = dict(conn.execute(
            "SELECT reason, SUM(count) FROM quarantine_summary GROUP BY reason"))
    except sqlite3.OperationalError:  # a store no node of this version has opened yet
        summarised = {}
    return {"stored": stored, "summarised": summarised}


class _Families:
    """A collector over ready-made families (one scrape's worth)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def metrics_endpoint(status: Callable[[], Mapping[str, Any]], *,
                     db_path: Path | None = None) -> tuple[bytes, str]:
    """(body, content type) of one scrape: the node's status() and, with `db_path`, the
    quarantine counts of its store. Raises MetricsError when either cannot be read."""
    try:
        snapshot = status()
    except Exception as exc:  # whatever the status source raised: one typed error here
        raise MetricsError(f"node status unavailable: {exc}") from exc
    if not isinstance(snapshot, Mapping):
        raise MetricsError(f"node status is a {type(snapshot).__name__}, not a dict")
    quarantine = None
    if db_path is not None:
        try:
            conn = open_reader(db_path)
            try:
                quarantine = quarantine_counts(conn)
            finally:
                conn.close()
        except (StoreError, sqlite3.Error) as exc:
            raise MetricsError(f"cannot read the store's quarantine counts: {exc}") from exc
    return render(node_families(snapshot, quarantine)), CONTENT_TYPE
