"""Prometheus metrics of an edge agent, served at http://127.0.0.1:{metrics_port}/metrics.

Off unless the agent config sets `metrics_port` (1..65535). The server is stdlib
`http.server` on a daemon thread, bound to the loopback address only: whoever runs the
terminal can scrape it (node_exporter's textfile collector, a local Prometheus agent), the
truck's network cannot. Only `GET /metrics` answers 200; any other path is 404 and other
methods get 501; a request that does not finish within REQUEST_TIMEOUT_S is dropped.

Everything is read at scrape time without touching the agent loop's objects: the outbox
through a read-only connection of its own (WAL, as `trustfleet agent status` does), the
agent's plain counters (AgentStats, the uplink's connection counts), and the signature
times of a `TimedSigner` that `serve_metrics` puts around the agent's signer. docs/metrics.md
lists every metric.

Ages (`oldest_unsent_age_seconds`, `last_receipt_age_seconds`) are on the agent's own clock
(edge_agent.clock: GPS time while there is a fix, else the host clock), the clock readings
are stamped with; a clock that jumped back shows as 0, never as a negative age.

Concurrency: `TimedSigner.sign` runs on the agent's thread; the histogram it feeds is read
by the server's threads under a lock. Counters are read without locks (single attribute
reads of ints).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from edge_agent.errors import EdgeAgentError, OutboxError
from edge_agent.outbox import Outbox

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent
    from hsm import Signer

log = logging.getLogger("trustfleet.agent")

HOST: Final = "127.0.0.1"
PATH: Final = "/metrics"
REQUEST_TIMEOUT_S: Final = 10.0
SIGN_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5)


class MetricsServerError(EdgeAgentError):
    """The metrics server could not start (the port is taken, or not ours to bind)."""


class TimedSigner:
    """The agent's signer, timing each signature; everything else is passed through."""

    def __init__(self, inner: Signer) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._counts = [0] * (len(SIGN_BUCKETS) + 1)
        self._sum = 0.0

    @property
    def kid(self) -> bytes:
        return self.inner.kid

    def public_key_der(self) -> bytes:
        return self.inner.public_key_der()

    def sign(self, message: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return self.inner.sign(message)
        finally:
            took = time.perf_counter() - start
            slot = next((i for i, b in enumerate(SIGN_BUCKETS) if took <= b), len(SIGN_BUCKETS))
            with self._lock:
                self._counts[slot] += 1
                self._sum += took

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative buckets, sum of seconds, count) of the signatures so far."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        running, buckets = 0, []
        for bound, n in zip(SIGN_BUCKETS, counts, strict=False):
            running += n
            buckets.append((bound, running))
        return buckets, total, sum(counts)


# -- what one scrape reads ----------------------------------------------------------------

def outbox_snapshot(agent: EdgeAgent) -> dict[str, Any] | None:
    """The outbox's state, read through a read-only connection (None if it cannot be read)."""
    try:
        box = Outbox(agent.cfg.outbox_path, readonly=True)
    except OutboxError:
        return None
    try:
        st = box.stats()
        oldest = box.conn.execute("SELECT t FROM outbox ORDER BY id LIMIT 1").fetchone()
        unsent = box.conn.execute("SELECT t FROM outbox WHERE seq IS NULL OR sent_at IS NULL "
                                  "ORDER BY id LIMIT 1").fetchone()
    except Exception as exc:  # sqlite3.Error, or a file that is not an outbox
        log.warning("%s: metrics: cannot read the outbox: %s", agent.cfg.device_id, exc)
        return None
    finally:
        box.close()
    return {"unsealed": st.unsealed, "in_flight": st.unreceipted, "last_seq": st.last_seq,
            "receipt_seq": st.receipt_seq, "receipt_height": st.receipt_height,
            "receipt_at_ms": st.receipt_at_ms or None, "thinned": st.thinned,
            "dropped": st.dropped, "bytes": st.used_bytes,
            "oldest_t_ms": oldest[0] if oldest else None,
            "oldest_unsent_t_ms": unsent[0] if unsent else None}


def agent_families(agent: EdgeAgent, outbox: Mapping[str, Any] | None) -> list[Metric]:
    """The agent's metric families: its counters, uplink, signer, and the outbox snapshot."""
    p = "trustfleet_agent_"
    cfg, stats, uplink = agent.cfg, agent.stats, agent.uplink
    now_ms = agent.clock.now()[0]
    out: list[Metric] = []
    info = GaugeMetricFamily(p + "info", "The device and how it signs (always 1).",
                             labels=["device", "fleet", "signing"])
    info.add_metric([cfg.device_id, cfg.fleet, cfg.signing], 1.0)
    out.append(info)
    for name, value, doc in (
            ("readings_collected", stats.collected, "Readings read from sensors (this run)."),
            ("readings_sealed", stats.sealed, "Readings given a seq and signed (this run)."),
            ("readings_published", stats.published,
             "Readings published to the broker, resends included (this run)."),
            ("readings_receipted", stats.receipted,
             "Readings released from the outbox by ledger receipts (this run)."),
            ("batches_signed", stats.batches, "Batch signatures made (signing = batch)."),
            ("collector_errors", stats.collector_errors, "Collector errors (this run)."),
            ("gap_resends", stats.gap_resends,
             "Resends started because a receipt showed a gap (this run)."),
            ("broker_connections", uplink.sessions,
             "Connections the broker accepted (this run)."),
            ("broker_reconnects", max(0, uplink.sessions - 1),
             "Connections accepted after the first (this run)."),
            ("bad_receipts", uplink.bad_receipts, "Receipts ignored as malformed (this run).")):
        out.append(CounterMetricFamily(p + name, doc, value=float(value)))
    out.append(GaugeMetricFamily(p + "broker_connected", "1 while connected to the broker.",
                                 value=1.0 if uplink.connected.is_set() else 0.0))
    out.append(GaugeMetricFamily(p + "uptime_seconds", "Seconds since the agent started.",
                                 value=time.monotonic() - agent.started))
    if isinstance(agent.signer, TimedSigner):
        buckets, total, count = agent.signer.snapshot()
        out.append(HistogramMetricFamily(
            p + "signer_latency_seconds", "Time of one HSM signature (a reading or a batch).",
            buckets=[*((repr(b), float(n)) for b, n in buckets), ("+Inf", float(count))],
            sum_value=total))
    if outbox is not None:
        out.extend(_outbox_families(p, outbox, now_ms, cfg.outbox_max_bytes))
    return out


def _age_s(now_ms: int, t_ms: object) -> float:
    return max(0.0, (now_ms - t_ms) / 1000) if isinstance(t_ms, int) else 0.0


def _outbox_families(p: str, box: Mapping[str, Any], now_ms: int,
                     budget: int) -> Iterator[Metric]:
    depth = GaugeMetricFamily(p + "outbox_depth", "Readings in the outbox not yet covered by "
                              "a receipt, by state.", labels=["state"])
    depth.add_metric(["unsealed"], float(box["unsealed"]))
    depth.add_metric(["in_flight"], float(box["in_flight"]))
    yield depth
    yield GaugeMetricFamily(p + "outbox_bytes", "Live bytes of the outbox file.",
                            value=float(box["bytes"]))
    yield GaugeMetricFamily(p + "outbox_budget_bytes", "The outbox's disk budget.",
                            value=float(budget))
    yield GaugeMetricFamily(p + "oldest_unsent_age_seconds", "Age of the oldest reading not "
                            "yet published (0: none).", value=_age_s(now_ms,
                                                                     box["oldest_unsent_t_ms"]))
    yield GaugeMetricFamily(p + "oldest_unreceipted_age_seconds", "Age of the oldest reading "
                            "not yet covered by a receipt (0: none).",
                            value=_age_s(now_ms, box["oldest_t_ms"]))
    yield GaugeMetricFamily(p + "last_seq", "Highest seq sealed.", value=float(box["last_seq"]))
    yield GaugeMetricFamily(p + "last_receipt_seq", "Highest contiguous seq the ledger "
                            "receipted.", value=float(box["receipt_seq"]))
    yield GaugeMetricFamily(p + "last_receipt_height", "Block height of the last receipt "
                            "(-1: none).", value=float(box["receipt_height"]))
    if box["receipt_at_ms"] is not None:
        yield GaugeMetricFamily(p + "last_receipt_age_seconds", "Seconds since the last "
                                "receipt was applied.", value=_age_s(now_ms,
                                                                     box["receipt_at_ms"]))
    yield CounterMetricFamily(p + "readings_thinned", "Readings thinned under the disk budget "
                              "(ever).", value=float(box["thinned"]))
    yield CounterMetricFamily(p + "readings_dropped", "Readings given up because the outbox was "
                              "full or failing (ever).", value=float(box["dropped"]))


class _Scrape:
    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        return iter(agent_families(self.agent, outbox_snapshot(self.agent)))


def render(agent: EdgeAgent) -> bytes:
    """One scrape's body, in the Prometheus text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(agent))
    return generate_latest(registry)


# -- the HTTP server -------------------------------------------------------------------------

class MetricsServer:
    """`GET /metrics` on HOST:port in a daemon thread; `stop()` closes the socket."""

    def __init__(self, body: Callable[[], bytes], port: int, host: str = HOST) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != PATH:
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    data = body()
                except Exception as exc:  # a broken scrape must not take the server down
                    log.warning("metrics: scrape failed: %s", exc)
                    self.send_error(500, "metrics unavailable")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MetricsServerError(f"cannot serve metrics on {host}:{port}: "
                                     f"{exc.strerror or exc}") from exc
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(agent: EdgeAgent) -> MetricsServer | None:
    """Start the agent's metrics server if its config has a `metrics_port`, timing its signer
    from now on. A port that cannot be bound is logged, and the agent runs without metrics
    (delivering readings matters more than being watched)."""
    port = agent.cfg.metrics_port
    if not port:
        return None
    if not isinstance(agent.signer, TimedSigner):
        agent.signer = TimedSigner(agent.signer)
    try:
        server = MetricsServer(lambda: render(agent), port)
    except MetricsServerError as exc:
        log.error("%s: %s; running without metrics", agent.cfg.device_id, exc)
        return None
    log.info("%s: metrics on http://%s:%d%s", agent.cfg.device_id, HOST, server.port, PATH)
    return server
