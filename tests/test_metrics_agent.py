"""The edge agent's Prometheus endpoint: scraped over real HTTP from a running agent while its
readings go from the outbox to the ledger (real Mosquitto, real ledger node process), parsed
with prometheus_client's own text parser; and the server's answers to everything else.

The agent runs in this process with an in-memory P-256 key enrolled in the node (as in
test_agent_offline.py), so the test can feed it readings and watch its counters.
"""

from __future__ import annotations

import logging
import queue
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import EdgeAgent
from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.config import AgentConfig, load_agent_config
from edge_agent.errors import AgentConfigError
from edge_agent.metrics import MetricsServer, MetricsServerError, TimedSigner, serve_metrics
from hsm import SoftwareSigner, verify_es256
from trustfleet.procs import free_port, wait_for

pytestmark = pytest.mark.slow
DEV = "box-7"


class Feed:
    """A sensor the test hands readings to (thread-safe)."""

    def __init__(self) -> None:
        self.q: queue.Queue[Sample] = queue.Queue()

    def add(self, n: int) -> None:
        now = int(time.time() * 1000)
        for i in range(n):
            self.q.put(Sample("temp", {"c": 4.0 + i / 10, "probe": "28-000000000001"},
                              now - 5000 + i, "rtc"))

    def read_available(self) -> list[Sample]:
        out: list[Sample] = []
        while not self.q.empty():
            out.append(self.q.get_nowait())
        return out

    def close(self) -> None:
        pass


Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(port: int) -> Scrape:
    """name -> {sorted labels: value}, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(metrics: Scrape, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


@pytest.fixture
def agent_device() -> str:
    """The device conftest's `node_factory` enrols (under conftest's `signer`)."""
    return DEV


def agent_config(tmp_path: Path, broker_port: int, **extra: Any) -> AgentConfig:
    return AgentConfig(device_id=DEV, fleet="test", data_dir=tmp_path / DEV,
                       broker_port=broker_port, w1_dir=tmp_path / "w1", resend_after_s=1.0,
                       resend_max_s=2.0, reconnect_min_s=0.2, reconnect_max_s=1.0,
                       status_interval_s=0, **extra).validate()



def test_scraped_metrics_follow_readings_from_the_outbox_to_the_ledger_receipt(
        tmp_path: Path, broker: Any, signer: SoftwareSigner, node_factory: Any,
        run_agent: Any) -> None:
    port = free_port()
    cfg = agent_config(tmp_path, broker.port, metrics_port=port)
    feed = Feed()
    run = run_agent(EdgeAgent(cfg, signer, [feed], AgentClock()))
    try:
        wait_for(lambda: one(scrape(port), "trustfleet_agent_broker_connected") == 1, 30,
                 "agent metrics up, broker connected")
        first = scrape(port)
        assert one(first, "trustfleet_agent_info", device=DEV, fleet="test",
                   signing="per-reading") == 1
        assert one(first, "trustfleet_agent_readings_sealed_total") == 0
        assert one(first, "trustfleet_agent_outbox_depth", state="in_flight") == 0
        assert one(first, "trustfleet_agent_last_receipt_height") == -1
        assert "trustfleet_agent_last_receipt_age_seconds" not in first

        # No ledger yet: readings are sealed and published, and wait for a receipt.
        feed.add(12)
        wait_for(lambda: one(scrape(port), "trustfleet_agent_readings_published_total") >= 12,
                 30, "readings published")
        waiting = scrape(port)
        assert one(waiting, "trustfleet_agent_readings_sealed_total") == 12
        assert one(waiting, "trustfleet_agent_readings_receipted_total") == 0
        assert one(waiting, "trustfleet_agent_outbox_depth", state="in_flight") == 12
        assert one(waiting, "trustfleet_agent_outbox_depth", state="unsealed") == 0
        assert one(waiting, "trustfleet_agent_oldest_unreceipted_age_seconds") >= 5
        assert one(waiting, "trustfleet_agent_last_seq") == 12
        assert one(waiting, "trustfleet_agent_signer_latency_seconds_count") == 12
        assert one(waiting, "trustfleet_agent_signer_latency_seconds_bucket", le="+Inf") == 12
        assert one(waiting, "trustfleet_agent_signer_latency_seconds_sum") > 0
        assert one(waiting, "trustfleet_agent_outbox_bytes") > 0
        assert one(waiting, "trustfleet_agent_broker_connections_total") == 1
        assert one(waiting, "trustfleet_agent_broker_reconnects_total") == 0

        # The ledger comes: receipts release the readings.
        node_factory()
        wait_for(lambda: one(scrape(port), "trustfleet_agent_readings_receipted_total") == 12,
                 60, "readings receipted")
        done = scrape(port)
        assert one(done, "trustfleet_agent_outbox_depth", state="in_flight") == 0
        assert one(done, "trustfleet_agent_last_receipt_seq") == 12
        assert one(done, "trustfleet_agent_last_receipt_height") >= 1
        assert one(done, "trustfleet_agent_oldest_unreceipted_age_seconds") == 0
        assert 0 <= one(done, "trustfleet_agent_last_receipt_age_seconds") < 3600

        feed.add(5)
        wait_for(lambda: one(scrape(port), "trustfleet_agent_readings_receipted_total") == 17,
                 60, "more readings receipted")
        later = scrape(port)
        assert one(later, "trustfleet_agent_readings_sealed_total") == 17
        assert one(later, "trustfleet_agent_last_receipt_seq") == 17
        assert one(later, "trustfleet_agent_signer_latency_seconds_count") == 17
        assert one(later, "trustfleet_agent_uptime_seconds") > \
            one(first, "trustfleet_agent_uptime_seconds")
    finally:
        run.stop()
    with pytest.raises(urllib.error.URLError):  # the server went with the agent
        scrape(port)


def test_without_a_metrics_port_there_is_no_server_and_the_signer_is_untouched(
        tmp_path: Path, signer: SoftwareSigner) -> None:
    agent = EdgeAgent(agent_config(tmp_path, 1883), signer, [Feed()], AgentClock())
    try:
        assert serve_metrics(agent) is None
        assert agent.signer is signer
    finally:
        agent.outbox.close()


def test_a_taken_port_leaves_the_agent_running_without_metrics_and_says_so(
        tmp_path: Path, signer: SoftwareSigner, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = EdgeAgent(agent_config(tmp_path, 1883, metrics_port=port), signer, [Feed()],
                          AgentClock())
        try:
            with caplog.at_level(logging.ERROR, logger="trustfleet.agent"):
                assert serve_metrics(agent) is None
        finally:
            agent.outbox.close()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in caplog.text
    assert "running without metrics" in caplog.text
    with pytest.raises(MetricsServerError, match="cannot serve metrics"), \
            socket.socket() as again:
        again.bind(("127.0.0.1", 0))
        again.listen()
        MetricsServer(lambda: b"", again.getsockname()[1])


def test_the_timed_signer_signs_like_the_real_one_and_counts_each_signature(
        signer: SoftwareSigner) -> None:
    timed = TimedSigner(signer)
    assert timed.kid == signer.kid and timed.public_key_der() == signer.public_key_der()
    sig = timed.sign(b"payload")
    assert len(sig) == 64
    assert verify_es256(signer.public_key_der(), b"payload", sig)
    buckets, total, count = timed.snapshot()
    assert count == 1 and total > 0 and buckets[-1][1] <= 1


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_server_answers_only_get_metrics_and_survives_hostile_requests() -> None:
    calls = {"n": 0}

    def body() -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("outbox gone")
        return b"# TYPE up gauge\nup 1.0\n"

    server = MetricsServer(body, free_port())
    try:
        port = server.port
        ok = raw_request(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.0 200") and ok.endswith(b"up 1.0\n")
        assert raw_request(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 500")
        for request, status in (
                (b"GET / HTTP/1.0\r\n\r\n", b"404"),
                (b"GET /metrics/../etc/passwd HTTP/1.0\r\n\r\n", b"404"),
                (b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", b"501"),
                (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",
                 b"400"),
                (b"GET /metrics HTTP/1.0\r\n" + b"X-Junk: " + b"a" * 70_000 + b"\r\n\r\n",
                 b"431"),
                (b"GET /" + b"m" * 70_000 + b" HTTP/1.0\r\n\r\n", b"414")):
            answer = raw_request(port, request)
            # (bytes that are not HTTP get an HTTP/0.9 answer: the error page alone)
            assert answer.startswith(b"HTTP/1.0 " + status) or (
                not answer.startswith(b"HTTP") and b"Error code: " + status in answer), \
                (request[:40], answer[:80])
        # A client that connects and says nothing does not hold up a scrape.
        with socket.create_connection(("127.0.0.1", port)):
            ok = raw_request(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            assert ok.startswith(b"HTTP/1.0 200")
    finally:
        server.stop()


def test_metrics_port_is_read_from_the_agent_toml_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ngps_port = "/dev/x"\nmetrics_port = 9101\n')
    assert load_agent_config(path).metrics_port == 9101
    path.write_text('[agent]\ngps_port = "/dev/x"\n')
    assert load_agent_config(path).metrics_port == 0
    for value, message in (("70000", "metrics_port 70000 is not a port number"),
                           ("-1", "metrics_port -1 is not a port number"),
                           ('"9101"', "line 3: metrics_port must be int"),
                           ("true", "line 3: metrics_port must be int")):
        path.write_text(f'[agent]\ngps_port = "/dev/x"\nmetrics_port = {value}\n')
        with pytest.raises(AgentConfigError, match=message):
            load_agent_config(path)
