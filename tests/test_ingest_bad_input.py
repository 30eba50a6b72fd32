"""Bad input on the wire, through the real broker into a real node: quarantined with a reason,
and the good device keeps being committed meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from tests.chainkit import Device
from tests.fleet import start_node, write_enrollments
from tests.mqttkit import TestClient
from trustfleet import cbor
from trustfleet.procs import wait_for
from trustfleet.receipt import decode_receipt
from trustfleet.topics import encode_batch, receipt_topic

pytestmark = pytest.mark.slow


def test_hostile_messages_are_quarantined_by_reason_while_good_readings_commit(
        tmp_path: Path, broker: object, device_rig: object) -> None:
    port = broker.port  # type: ignore[attr-defined]
    good, victim = Device("good-1"), Device("victim-1")
    stranger = Device("stranger")
    enroll = write_enrollments(tmp_path / "enroll.json",
                               {d.dev: d.signer.public_key_der() for d in (good, victim)})
    node = start_node(tmp_path / "node", device_rig.directory, port, enroll)  # type: ignore[attr-defined]
    try:
        with TestClient(port, "attacker") as mq:
            mq.subscribe(receipt_topic("test", "good-1"))
            first = good.reading()
            forged = bytearray(good.reading())
            forged[-2] ^= 0x40
            good.seq -= 1  # the forged one did not count
            replay_base = victim.reading()
            hostile: list[tuple[str, bytes]] = [
                (good.topic, b"\x00\xffnot cbor at all"),
                (good.topic, cbor.dumps({"v": 1, "hello": "world"})),
                (good.topic, bytes(forged)),
                (stranger.topic, stranger.reading()),
                (good.topic, victim.reading()),  # another device's reading on good's topic
                (good.topic, os.urandom(1_200_000)),
                (good.topic, encode_batch([b"\x01\x02", b"\x03"])),
                (good.topic, cbor.dumps(cbor2.CBORTag(99, [1, 2]))),
                ("tf/v1/test/../up", first),
            ]
            mq.publish(good.topic, first)
            mq.publish(victim.topic, replay_base)
            for topic, payload in hostile:
                mq.publish(topic, payload)
                mq.publish(good.topic, good.reading())
            # a replay of victim's seq 1 with other bytes
            victim.seq, victim.prev = 0, bytes(32)
            mq.publish(victim.topic, victim.reading(values={"c": 42.0}))
            # and a duplicate, which is only acknowledged
            mq.publish(good.topic, first)
            # a flood of garbage, then more good readings
            for i in range(500):
                mq.publish(good.topic, b"\xff" + i.to_bytes(4, "big"))
            for _ in range(5):
                mq.publish(good.topic, good.reading())
            want = good.seq
            wait_for(lambda: any(d["id"] == "good-1" and d["contiguous_seq"] == want
                                 for d in node.get("/v1/devices")), 60, "good readings",
                     proc=node.proc, log_file=node.log)


            def flood_accounted() -> bool:  # garbage waits behind valid input, by design
                st = node.get("/v1/node/status")
                return bool(st["rejected"].get("bad_cbor", 0) + st["summarised_unexamined"]
                            >= 501)

            wait_for(flood_accounted, 60, "the flood examined or counted", proc=node.proc,
                     log_file=node.log)
            receipt = None
            while not mq.messages.empty():
                receipt = decode_receipt(bytes(mq.messages.get().payload))
        q = node.get("/v1/quarantine?limit=1000")
        counts = q["counts"]
        for reason in ("bad_cbor", "bad_envelope", "bad_signature", "unknown_device",
                       "topic_mismatch", "too_large", "replay_conflict"):
            assert counts.get(reason, 0) >= 1, (reason, counts)
        # the flood (and the first garbage message): each stored with its reason, or counted
        assert counts["bad_cbor"] + node.get("/v1/node/status")["summarised_unexamined"] >= 501
        assert any(item["reason"] == "bad_topic" for item in q["items"]) or \
            counts.get("bad_topic", 0) >= 1
        status = node.get("/v1/node/status")
        assert status["duplicates"] >= 1
        readings = node.get("/v1/devices/good-1/readings?limit=1000")["readings"]
        assert [r["seq"] for r in readings] == list(range(1, want + 1))
        assert receipt is not None and receipt.dev == "good-1" and receipt.seq <= want
        assert node.get("/healthz")["status"] == "ok"
    finally:
        node.stop()
