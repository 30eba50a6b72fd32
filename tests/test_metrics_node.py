"""The ledger node's Prometheus metrics (`ledger_node.metrics.metrics_endpoint`): over the real
status of a real node process fed real signed readings through a real broker, over a real
store's quarantine, a real BlockStats and a real InfluxMirror's status; and over status
dicts that are broken or hostile. Output is parsed with prometheus_client's own parser."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger_node.config import InfluxConfig
from ledger_node.influx_mirror import InfluxMirror
from ledger_node.metrics import (
    APPLY_BUCKETS,
    CONTENT_TYPE,
    MAX_LABEL,
    MAX_LABELLED,
    BlockStats,
    MetricsError,
    metrics_endpoint,
)
from ledger_node.quarantine import Tally
from ledger_node.store import BlockRecord, QuarantineRow, ReadingRow, Store
from tests.fleet import start_node, write_enrollments
from tests.mqttkit import TestClient
from trustfleet.procs import wait_for

Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(answer: tuple[bytes, str]) -> Scrape:
    body, content_type = answer
    assert content_type == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    out: Scrape = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(metrics: Scrape, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


@pytest.mark.slow
def test_metrics_follow_a_real_nodes_status_as_readings_arrive(
        tmp_path: Path, broker: Any, device_rig: Any) -> None:
    from tests.chainkit import Device

    dev = Device("truck-m")
    enroll = write_enrollments(tmp_path / "enroll.json", {dev.dev: dev.signer.public_key_der()})
    node = start_node(tmp_path / "node", device_rig.directory, broker.port, enroll)
    try:
        def status() -> dict[str, Any]:
            return dict(node.get("/v1/node/status"))

        db = node.data / "ledger.sqlite"
        before = parse(metrics_endpoint(status, db_path=db))
        assert one(before, "trustfleet_node_info", node="node-1", chain="main") == 1
        assert one(before, "trustfleet_node_readings_accepted_total") == 0
        assert one(before, "trustfleet_node_broker_connected") == 1
        assert one(before, "trustfleet_node_devices") == 1
        assert "trustfleet_node_rejected_total" not in before  # no reason yet: no sample

        with TestClient(broker.port, "metrics-test") as mq:
            envelopes = [dev.reading() for _ in range(3)]
            for envelope in envelopes:
                mq.publish(dev.topic, envelope)
            mq.publish(dev.topic, envelopes[0])  # a duplicate
            mq.publish(dev.topic, b"\xff\x00junk")  # bad CBOR
        wait_for(lambda: (lambda s: (s["accepted"], s["duplicates"], s["rejected"]))(status())
                 == (3, 1, {"bad_cbor": 1}), 30, "readings applied")

        st = status()
        after = parse(metrics_endpoint(status, db_path=db))
        assert one(after, "trustfleet_node_readings_accepted_total") == 3
        assert one(after, "trustfleet_node_readings_duplicate_total") == 1
        assert one(after, "trustfleet_node_rejected_total", reason="bad_cbor") == 1
        assert one(after, "trustfleet_node_quarantine_stored", reason="bad_cbor") == 1
        assert one(after, "trustfleet_node_messages_received_total") >= 5
        assert one(after, "trustfleet_node_chain_height") == st["height"] >= 1
        assert one(after, "trustfleet_node_blocks_committed_total") == st["height"] + 1
        assert one(after, "trustfleet_node_tree_size") == st["size"] > \
            one(before, "trustfleet_node_tree_size")
        assert one(after, "trustfleet_node_ingest_queue_depth", lane="device") >= 0
        assert one(after, "trustfleet_node_ingest_queue_depth", lane="suspect") >= 0
        assert one(after, "trustfleet_node_uptime_seconds") >= \
            one(before, "trustfleet_node_uptime_seconds")
    finally:
        node.stop()


# -- a real store, BlockStats and mirror status ------------------------------------------------

def store_with_readings(path: Path, n: int) -> Store:
    store = Store(path)
    entries = [("genesis", b"g")] + [("reading", b"r%d" % i) for i in range(n)]
    rows: list[ReadingRow] = [
        (i, "truck-a", i, hashlib.sha256(b"%d" % i).digest(), 1_763_700_000_000 + i, "gps",
         "temp", '{"c": 4.0}', "", 0, 1_763_700_000_000) for i in range(1, n + 1)]
    store.commit_block(BlockRecord(
        height=0, hash=b"h" * 32, header=b"hdr", time=1_763_700_000_000, first=0,
        count=len(entries), size=len(entries), frontier=b"", sigs=(), entries=entries,
        readings=rows, devices=(), quarantine=()))
    return store


def test_block_stats_mirror_lag_and_quarantine_counts_become_metrics(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    store = store_with_readings(db, 4)
    store.add_quarantine([QuarantineRow(1_763_700_000_000 + i, reason, "", "tf/v1/t/d/up", "d",
                                        3, bytes(32), b"xyz")
                          for i, reason in enumerate(["bad_cbor", "bad_cbor", "bad_signature"])])
    store.add_quarantine_summary([Tally("ingest_overload", "d", 40, 400, 1, 2)])
    blocks = BlockStats()
    for seconds, entries in ((0.004, 1), (0.03, 120), (0.2, 9000), (7.0, 60_000)):
        blocks.observe(seconds, entries)
    mirror = InfluxMirror(InfluxConfig(org="o", bucket="b"), db, tmp_path / "cursor.sqlite")

    def status() -> dict[str, Any]:
        return {"node": "node-1", "chain": "main", "height": 0, "size": 5, "queue": 7,
                "queue_suspect": 2, "accepted": 4, "rejected": {}, "verify_workers": 2,
                "blocks": blocks.snapshot(), "influx": mirror.status()}

    m = parse(metrics_endpoint(status, db_path=db))
    store.close()
    assert one(m, "trustfleet_node_ingest_queue_depth", lane="device") == 5
    assert one(m, "trustfleet_node_ingest_queue_depth", lane="suspect") == 2
    assert one(m, "trustfleet_node_verify_workers") == 2
    assert one(m, "trustfleet_node_quarantine_stored", reason="bad_cbor") == 2
    assert one(m, "trustfleet_node_quarantine_stored", reason="bad_signature") == 1
    assert one(m, "trustfleet_node_quarantine_summarised", reason="ingest_overload") == 40
    assert one(m, "trustfleet_node_block_apply_seconds_count") == 4
    assert one(m, "trustfleet_node_block_apply_seconds_bucket", le="0.005") == 1
    assert one(m, "trustfleet_node_block_apply_seconds_bucket", le="0.25") == 3
    assert one(m, "trustfleet_node_block_apply_seconds_bucket", le="5.0") == 3
    assert one(m, "trustfleet_node_block_apply_seconds_bucket", le="+Inf") == 4
    assert math.isclose(one(m, "trustfleet_node_block_apply_seconds_sum"), 7.234)
    assert len(m["trustfleet_node_block_apply_seconds_bucket"]) == len(APPLY_BUCKETS) + 1
    assert one(m, "trustfleet_node_block_entries_bucket", le="100.0") == 1
    assert one(m, "trustfleet_node_block_entries_bucket", le="10000.0") == 3
    assert one(m, "trustfleet_node_block_entries_sum") == 69_121
    # The mirror has not run: everything committed is lag, and the oldest is a year old.
    assert one(m, "trustfleet_influx_mirror_lag_entries") == 5
    assert one(m, "trustfleet_influx_mirror_cursor") == -1
    assert one(m, "trustfleet_influx_mirror_oldest_unmirrored_age_seconds") > 86_400
    assert one(m, "trustfleet_influx_mirror_points_written_total") == 0
    assert one(m, "trustfleet_influx_mirror_failing") == 0


def test_broken_and_hostile_status_values_are_left_out_and_the_rest_still_renders() -> None:
    hostile = {
        "node": "n\n1\"} evil", "chain": "x" * 10_000, "height": "12", "size": float("nan"),
        "accepted": 10 ** 400, "duplicates": -float("inf"), "received": None,
        "devices": [1, 2], "broker_connected": True, "queue": 5, "queue_suspect": "2",
        "rejected": {"bad_cbor": 2, "y" * 500: 1, "weird": "many", **{f"r{i}": i for i in
                                                                      range(1000)}},
        "blocks": {"apply_seconds": {"buckets": [[0.1, 5], [0.2, 3]], "sum": 1, "count": 5},
                   "entries": "nope"},
        "influx": {"lag": "far", "skipped_fields": ["list"], "written": 3},
    }
    m = parse(metrics_endpoint(lambda: hostile))
    (labels, value), = m["trustfleet_node_info"].items()
    assert value == 1 and dict(labels)["node"] == "n\n1\"} evil"
    assert len(dict(labels)["chain"]) == MAX_LABEL
    for name in ("chain_height", "tree_size", "readings_accepted_total",
                 "readings_duplicate_total", "messages_received_total", "devices",
                 "blocks_committed_total", "ingest_queue_depth", "block_apply_seconds_count",
                 "block_entries_count"):
        assert f"trustfleet_node_{name}" not in m
    assert one(m, "trustfleet_node_broker_connected") == 1
    rejected = m["trustfleet_node_rejected_total"]
    assert len(rejected) == MAX_LABELLED
    assert one(m, "trustfleet_node_rejected_total", reason="bad_cbor") == 2
    assert all(len(dict(k)["reason"]) <= MAX_LABEL for k in rejected)
    assert "trustfleet_influx_mirror_lag_entries" not in m
    assert one(m, "trustfleet_influx_mirror_points_written_total") == 3


def test_a_status_that_fails_or_is_not_a_dict_and_a_missing_store_are_metrics_errors(
        tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise ConnectionError("node API down")

    with pytest.raises(MetricsError, match="node status unavailable: node API down"):
        metrics_endpoint(broken)
    with pytest.raises(MetricsError, match="not a dict"):
        metrics_endpoint(lambda: [1, 2])  # type: ignore[arg-type, return-value]
    with pytest.raises(MetricsError, match="quarantine counts: no ledger store"):
        metrics_endpoint(dict, db_path=tmp_path / "none.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(MetricsError, match="quarantine counts"):
        metrics_endpoint(dict, db_path=tmp_path / "junk.sqlite")
