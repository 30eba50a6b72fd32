"""Mirror committed readings to InfluxDB 2 for long-range analytics (DESIGN.md §9).

The mirror never stands in the way of a commit, by construction: it is a thread of its own
that tails the store's `readings` table by `idx` through its own read-only connection
(`ledger_node.store.open_reader`; WAL lets it read while the apply thread writes, and the
apply thread never reads or waits for anything of the mirror). Its cursor — the last `idx`
the server acknowledged — lives in its own small SQLite file, never in the ledger's store.
A slow or absent server only makes the lag grow: `status()` and the node's /metrics show it
(`lag` = newest committed reading idx - cursor; `oldest_unmirrored_age_s` = wall time since
the ledger committed the oldest reading not yet mirrored).

Delivery: at least once. Each pass reads up to `batch_size` readings after the cursor,
writes them with influxdb-client's synchronous write API, and moves the cursor only after the
server acknowledged. A write that fails for a reason that may pass (no connection, timeout,
HTTP 429 / 5xx, 401 / 403 / 404) is retried, the same batch again, after an exponential
backoff with jitter capped at `max_retry_backoff_s`. Every point has a deterministic
timestamp (the device time `t`, ms), so a re-written point lands on the same series and
timestamp: InfluxDB overwrites it, an idempotent re-write. A batch the server refuses as
data (HTTP 400, 413, 422) is split in halves until the refused points are isolated; those
are skipped, counted under `server_rejected`, and the rest is written.

Point mapping (docs/metrics.md has the full table), one point per reading:
  measurement  `measurement` (default "reading")
  tags         dev, kind, time_source; and `probe` when d has one (two temperature probes
               read in the same millisecond must not overwrite each other)
  fields       from d: numbers as floats, bools as bools, strings only for the keys in
               STRING_FIELDS (at most MAX_STRING characters); and seq, idx, block
               (integers) to trace a point to its ledger entry
  time         t, ms precision
A field that cannot be mirrored faithfully (NaN or infinity, a number beyond float range,
a string not allowed or too long, a list, a map, null, a key InfluxDB reserves) is left out
and counted by reason in `skipped_fields`; a reading that cannot be placed at all (time
outside InfluxDB's range, values that do not decode, bad tag values) is skipped and counted
in `skipped_readings`. The cursor moves past both: nothing is retried forever.

Errors:

    LedgerError (ledger_node.errors)
     └── MirrorError            the mirror could not do its job
          ├── ServerUnavailable   the server cannot take writes now (retried)
          └── PointsRejected      the server refused the data itself (split, then skipped)

Concurrency: `start()`/`stop()` from the node's main thread; the mirror thread alone uses the
influx client, the cursor file and its reader connection; `status()` may be called from any
thread (it opens its own short-lived read-only connection).
"""

from __future__ import annotations

import json
import logging
import math
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import urllib3
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from ledger_node.config import InfluxConfig, NodeConfig
from ledger_node.errors import LedgerError, StoreError
from ledger_node.store import open_reader

log = logging.getLogger("trustfleet.influx")

CURSOR_FILE: Final = "influx-mirror.sqlite"
TAG_KEYS: Final = frozenset({"probe"})
STRING_FIELDS: Final = frozenset({"epc", "hex", "scheme", "clock"})
RESERVED: Final = frozenset({"seq", "idx", "block", "dev", "kind", "time_source", "time"})
MAX_STRING: Final = 256
MAX_NAME: Final = 64
MAX_TIME_MS: Final = (2**63 - 1) // 1_000_000
"""InfluxDB stores nanoseconds in an int64: device times beyond this (year 2262) do not fit."""
FIRST_RETRY_S: Final = 0.5
REJECTED_BY_SERVER: Final = "server_rejected"

FieldValue = float | bool | str | int
P = TypeVar("P")


class MirrorError(LedgerError):
    """The InfluxDB mirror could not do its job."""


class ServerUnavailable(MirrorError):
    """The server cannot take writes now; the same batch is retried after a backoff."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PointsRejected(MirrorError):
    """The server refused the data of a write (HTTP 400, 413 or 422)."""


# -- the pure part: rows -> points, splitting refused batches, backoff ---------------------

@dataclass(frozen=True)
class Committed:
    """One row of the store's `readings` table, as the mirror reads it."""

    idx: int
    dev: str
    seq: int
    t: int
    ts: str
    k: str
    d: str
    """the values, as the store keeps them: JSON text"""
    height: int
    ledger_time: int


@dataclass(frozen=True)
class PointData:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ms: int


@dataclass(frozen=True)
class Mapped:
    """What became of one reading: its point, or the reason it was skipped; and the reasons
    of the fields left out of it."""

    idx: int
    point: PointData | None
    skipped: str | None = None
    skipped_fields: tuple[str, ...] = ()


def _name_ok(text: object) -> bool:
    """Usable as a tag value or field key: short, printable, nothing line protocol mangles."""
    return isinstance(text, str) and 0 < len(text) <= MAX_NAME and text.isprintable() \
        and "\\" not in text


def field_value(key: str, value: object) -> tuple[FieldValue | None, str | None]:
    """The field value a d entry becomes, or None and the reason it is left out."""
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None, "out_of_range"
        return (number, None) if math.isfinite(number) else (None, "not_finite")
    if isinstance(value, str):
        if key not in STRING_FIELDS:
            return None, "string_not_mirrored"
        if len(value) > MAX_STRING:
            return None, "string_too_long"
        return (value, None) if value.isprintable() else (None, "string_not_printable")
    if value is None:
        return None, "null"
    return None, "list" if isinstance(value, list) else "map" if isinstance(value, dict) \
        else "unsupported"


def map_reading(row: Committed, measurement: str) -> Mapped:
    """The point for one committed reading (see the module docstring). Pure."""
    if not isinstance(row.t, int) or not 0 <= row.t <= MAX_TIME_MS:
        return Mapped(row.idx, None, "time_out_of_range")
    tags = [("dev", row.dev), ("kind", row.k), ("time_source", row.ts)]
    if not all(_name_ok(v) for _, v in tags):
        return Mapped(row.idx, None, "bad_tags")
    try:
        d = json.loads(row.d)
    except (TypeError, ValueError, RecursionError):
        return Mapped(row.idx, None, "bad_values")
    if not isinstance(d, dict):
        return Mapped(row.idx, None, "bad_values")
    fields: list[tuple[str, FieldValue]] = []
    skipped: list[str] = []
    for key in sorted(d):
        value = d[key]
        if key in TAG_KEYS:
            if _name_ok(value):
                tags.append((key, value))
            else:
                skipped.append("bad_tag")
        elif key in RESERVED or key.startswith("_") or not _name_ok(key):
            skipped.append("reserved_key")
        else:
            mapped, why = field_value(key, value)
            if mapped is None:
                skipped.append(why or "unsupported")
            else:
                fields.append((key, mapped))
    fields += [("seq", row.seq), ("idx", row.idx), ("block", row.height)]
    point = PointData(measurement, tuple(sorted(tags)), tuple(fields), row.t)
    return Mapped(row.idx, point, None, tuple(skipped))


def write_split(items: Sequence[P], write: Callable[[Sequence[P]], None]) -> list[tuple[P, str]]:
    """Write `items`; when the server refuses a batch as data (PointsRejected), write each
    half on its own, down to single items. Returns the refused items with the server's
    reason. ServerUnavailable propagates: the caller retries the whole batch later (points
    written before that are written again, which overwrites them with themselves)."""
    if not items:
        return []
    try:
        write(items)
        return []
    except PointsRejected as exc:
        if len(items) == 1:
            return [(items[0], str(exc))]
    half = len(items) // 2
    return write_split(items[:half], write) + write_split(items[half:], write)


def retry_delay(failures: int, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after the n-th consecutive failure (n >= 1): FIRST_RETRY_S doubling up to
    `maximum`, times a jitter in [0.5, 1)."""
    step = min(maximum, FIRST_RETRY_S * 2.0 ** min(max(failures, 1) - 1, 30))
    return step * (0.5 + 0.5 * rand())


def to_point(p: PointData) -> Point:
    point = Point(p.measurement)
    for key, tag in p.tags:
        point.tag(key, tag)
    for key, value in p.fields:
        point.field(key, value)
    return point.time(p.time_ms, WritePrecision.MS)


# -- the I/O shell: cursor file, reader, server ---------------------------------------------

class CursorFile:
    """The mirror's cursor, per target (url, org, bucket, measurement) and per chain (the
    genesis block's hash): pointing the mirror at another server, or the node at a new
    chain, mirrors from the start. One thread at a time."""

    def __init__(self, path: Path, target: str) -> None:
        self.target = target
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
            with self.conn:
                self.conn.execute("CREATE TABLE IF NOT EXISTS cursor (target TEXT PRIMARY KEY, "
                                  "chain TEXT NOT NULL, idx INTEGER NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise MirrorError(f"cannot open the mirror's cursor file {path}: {exc}") from exc

    def load(self, chain: str) -> int:
        row = self.conn.execute("SELECT chain, idx FROM cursor WHERE target = ?",
                                (self.target,)).fetchone()
        return int(row[1]) if row is not None and row[0] == chain else -1

    def save(self, chain: str, idx: int) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?, ?)",
                              (self.target, chain, idx))

    def close(self) -> None:
        self.conn.close()


_COLUMNS = "idx, dev, seq, t, ts, k, d, height, ledger_time"


def read_after(conn: sqlite3.Connection, cursor: int, limit: int) -> list[Committed]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM readings WHERE idx > ? ORDER BY idx LIMIT ?",
                        (cursor, limit)).fetchall()
    return [Committed(*tuple(r)) for r in rows]


def chain_id(conn: sqlite3.Connection) -> str | None:
    """The genesis block's hash (hex), naming the chain; None before genesis."""
    row = conn.execute("SELECT hash FROM blocks WHERE height = 0").fetchone()
    return None if row is None else bytes(row[0]).hex()


def _server_error(exc: ApiException) -> MirrorError:
    """Translate influxdb-client's HTTP error, once, into ours."""
    detail = str(getattr(exc, "message", None) or exc.reason or exc.body or "")[:300]
    message = f"HTTP {exc.status}: {detail}"
    if exc.status in (400, 413, 422):
        return PointsRejected(message)
    retry_after = getattr(exc, "retry_after", None)
    try:
        wait = float(retry_after) if retry_after is not None else None
    except (TypeError, ValueError):
        wait = None
    return ServerUnavailable(message, wait)


class _Tail:
    """What the mirror thread holds open between passes."""

    def __init__(self) -> None:
        self.cursors: CursorFile | None = None
        self.reader: sqlite3.Connection | None = None
        self.chain: str | None = None

    def close_reader(self) -> None:
        """After a failure: the next pass opens a fresh connection (the store may be back)."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def close(self) -> None:
        self.close_reader()
        if self.cursors is not None:
            self.cursors.close()


class InfluxMirror:
    """Tails the store at `db_path` into InfluxDB. `start()` once, `stop()` at shutdown."""

    def __init__(self, cfg: InfluxConfig, db_path: Path, cursor_path: Path) -> None:
        self.cfg = cfg.validate()
        self.db_path = db_path
        self.cursor_path = cursor_path
        self._token = cfg.read_token()  # a missing token file fails at start, not later
        self._target = f"{cfg.url} {cfg.org} {cfg.bucket} {cfg.measurement}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._cursor = -1
        self._written = 0
        self._batches = 0
        self._failed_attempts = 0
        self._failing = False
        self._last_error: str | None = None
        self._last_write_ms: int | None = None
        self._skipped_fields: Counter[str] = Counter()
        self._skipped_readings: Counter[str] = Counter()

    @classmethod
    def for_node(cls, node: NodeConfig) -> InfluxMirror | None:
        """The mirror a node's config asks for (None when it has no [influx] table)."""
        if node.influx is None:
            return None
        return cls(node.influx, node.db_path, node.data_dir / CURSOR_FILE)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise MirrorError("the mirror is already started")
        self._cursor = self._saved_cursor()
        self._thread = threading.Thread(target=self._run, name="influx-mirror", daemon=True)
        self._thread.start()
        log.info("mirroring readings to %s (org %s, bucket %s)", self.cfg.url, self.cfg.org,
                 self.cfg.bucket)

    def stop(self) -> None:
        """Stop after the write in progress (at most `timeout_s`); the cursor is kept."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.timeout_s + 5)
            if self._thread.is_alive():
                log.warning("mirror thread still busy at shutdown; it is a daemon thread")

    def _saved_cursor(self) -> int:
        """The persisted cursor for this store's chain (-1: nothing mirrored yet), so that
        status() shows the true lag from the start."""
        try:
            cursors = CursorFile(self.cursor_path, self._target)
            try:
                conn = open_reader(self.db_path)
                try:
                    chain = chain_id(conn)
                finally:
                    conn.close()
                return -1 if chain is None else cursors.load(chain)
            finally:
                cursors.close()
        except (MirrorError, StoreError, sqlite3.Error):
            return -1

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Progress and lag, for /v1/node/status and /metrics (ledger_node.metrics)."""
        cursor = self._cursor
        committed: int | None = None
        oldest_age: float | None = None
        try:
            conn = open_reader(self.db_path)
            try:
                committed = conn.execute("SELECT MAX(idx) FROM readings").fetchone()[0]
                row = conn.execute("SELECT ledger_time FROM readings WHERE idx > ? "
                                   "ORDER BY idx LIMIT 1", (cursor,)).fetchone()
            finally:
                conn.close()
            if row is not None:
                oldest_age = max(0.0, round(time.time() - row[0] / 1000, 3))
        except (StoreError, sqlite3.Error):
            pass
        with self._lock:
            return {
                "url": self.cfg.url, "org": self.cfg.org, "bucket": self.cfg.bucket,
                "running": self._thread is not None and self._thread.is_alive(),
                "cursor": cursor, "committed": committed,
                "lag": max(0, committed - cursor) if committed is not None else 0,
                "oldest_unmirrored_age_s": oldest_age,
                "written": self._written, "batches": self._batches,
                "failed_attempts": self._failed_attempts, "failing": self._failing,
                "last_error": self._last_error, "last_write_ms": self._last_write_ms,
                "skipped_fields": dict(self._skipped_fields),
                "skipped_readings": dict(self._skipped_readings),
            }

    # -- the mirror thread ----------------------------------------------------------------
    def _run(self) -> None:
        client = InfluxDBClient(url=self.cfg.url, token=self._token, org=self.cfg.org,
                                timeout=int(self.cfg.timeout_s * 1000), retries=False)
        api = client.write_api(write_options=SYNCHRONOUS)

        def write(points: Sequence[PointData]) -> None:
            try:
                api.write(self.cfg.bucket, self.cfg.org, [to_point(p) for p in points],
                          write_precision=WritePrecision.MS)  # type: ignore[arg-type]
            except ApiException as exc:
                raise _server_error(exc) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ServerUnavailable(f"{type(exc).__name__}: {exc}") from None

        state = _Tail()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._pass(state, write)
                except Exception as exc:  # the thread must outlive any failure, even a bug
                    if not isinstance(exc, MirrorError | StoreError | sqlite3.Error):
                        log.exception("mirror pass failed unexpectedly")
                    state.close_reader()
                    failures += 1
                    self._failed(exc, failures)
                    wait = retry_delay(failures, self.cfg.max_retry_backoff_s)
                    if isinstance(exc, ServerUnavailable) and exc.retry_after_s:
                        wait = min(max(wait, exc.retry_after_s), self.cfg.max_retry_backoff_s)
                    self._stop.wait(wait)
                    continue
                if failures:
                    log.info("mirror to %s: writing again after %d failed attempt(s)",
                             self.cfg.url, failures)
                    failures = 0
                    with self._lock:
                        self._failing = False
                self._stop.wait(self.cfg.flush_interval_s)
        finally:
            state.close()
            api.close()
            client.close()

    def _pass(self, state: _Tail, write: Callable[[Sequence[PointData]], None]) -> None:
        if state.cursors is None:
            state.cursors = CursorFile(self.cursor_path, self._target)
        if state.reader is None:
            state.reader = open_reader(self.db_path)
        found = chain_id(state.reader)
        if found is None:
            return  # no genesis block yet
        if found != state.chain:
            state.chain, self._cursor = found, state.cursors.load(found)
        self._drain(state.reader, state.cursors, found, write)

    def _drain(self, reader: sqlite3.Connection, cursors: CursorFile, chain: str,
               write: Callable[[Sequence[PointData]], None]) -> None:
        """Write what is committed after the cursor, batch by batch, moving the cursor after
        each acknowledged batch. Raises ServerUnavailable (nothing after the last
        acknowledged batch counts as written)."""
        size = self.cfg.batch_size
        while not self._stop.is_set():
            rows = read_after(reader, self._cursor, size)
            if not rows:
                return
            mapped = [map_reading(r, self.cfg.measurement) for r in rows]
            refused = write_split([m.point for m in mapped if m.point is not None], write)
            cursors.save(chain, rows[-1].idx)
            with self._lock:
                self._cursor = rows[-1].idx
                self._batches += 1
                self._written += sum(m.point is not None for m in mapped) - len(refused)
                self._last_write_ms = int(time.time() * 1000)
                for m in mapped:
                    self._skipped_fields.update(m.skipped_fields)
                    if m.skipped is not None:
                        if m.skipped not in self._skipped_readings:
                            log.warning("reading at log index %d not mirrored: %s (further "
                                        "ones are only counted)", m.idx, m.skipped)
                        self._skipped_readings[m.skipped] += 1
                if refused:
                    self._skipped_readings[REJECTED_BY_SERVER] += len(refused)
            for point, reason in refused[:3]:
                log.warning("InfluxDB refused the point of %s at %d ms (%s); skipped",
                            dict(point.tags).get("dev"), point.time_ms, reason)
            if len(rows) < size:
                return

    def _failed(self, exc: Exception, failures: int) -> None:
        with self._lock:
            self._failed_attempts += 1
            self._failing = True
            self._last_error = str(exc)[:300]
        if failures == 1:
            log.warning("mirror to %s: %s; retrying with backoff (readings stay in the "
                        "ledger; the lag grows until it is back)", self.cfg.url, exc)
