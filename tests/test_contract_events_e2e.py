"""Contracts end to end: a real broker, a real node (block key in SoftHSM), operator entries
submitted over its API, devices publishing signed readings over MQTT — and the events the
contracts emit arriving on the ledger, over MQTT (tf/v1/{fleet}/events/{event}) and at an
HMAC-signed webhook, with a webhook that is down never holding the ledger up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hsm import SoftwareSigner
from hsm.x509 import der_to_pem
from ledger_node.admin import build_operator_entry
from ledger_node.softpki import SoftwareFleetPKI, write_enrolment_file
from tests.fleet import NodeProcess, cli, operator_token, spawn
from tests.mqttkit import TestClient
from trustfleet.cose import sign1
from trustfleet.payload import GENESIS_PREV, Reading, encode_payload
from trustfleet.procs import free_port, wait_for
from trustfleet.topics import up_topic

pytestmark = pytest.mark.slow

SECRET = "a-shared-secret-of-32-characters"
COLD_CHAIN = """
name: hot-goods
version: 1
rules:
  - id: critical
    on: {reading: temp}
    threshold: {field: c, above: 25.0}
    emit: excursion
    set_state: out_of_compliance
    notify: [mqtt, "webhook:insurer", "webhook:down"]
"""


class Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("R", (Receiver,), {"got": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()


def post_entry(api: str, entry: bytes) -> dict[str, Any]:
    req = urllib.request.Request(f"{api}/v1/admin/entries?wait=20", data=entry, method="POST",
                                 headers={"Content-Type": "application/cose"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_an_excursion_reaches_the_ledger_mqtt_and_a_signed_webhook(
        tmp_path: Path, broker: Any, device_rig: Any, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    pki = SoftwareFleetPKI()
    truck = SoftwareSigner.generate()
    (tmp_path / "ca.pem").write_text(der_to_pem(pki.ca_cert))
    enroll = write_enrolment_file(tmp_path / "enroll.json",
                                  [pki.enrol_entry("truck-9", "test", truck.public_key_der())])
    (tmp_path / "insurer.secret").write_text(SECRET)
    (tmp_path / "webhooks.toml").write_text(
        f'[webhooks.insurer]\nurl = "{url}"\nsecret_file = "insurer.secret"\n'
        f'[webhooks.down]\nurl = "http://127.0.0.1:{free_port()}/nobody"\n'
        f'secret_file = "insurer.secret"\ntimeout_s = 1\n')
    data, api_port = tmp_path / "node", free_port()
    proc = spawn(cli("node", "run", "--data", str(data), "--rig", str(device_rig.directory),
                     "--token", "node-1", "--enroll", str(enroll), "--fleet-ca",
                     str(tmp_path / "ca.pem"), "--broker-port", str(broker.port),
                     "--api-port", str(api_port), "--block-interval-ms", "50",
                     "--webhooks", str(tmp_path / "webhooks.toml")), tmp_path / "node.log")
    node = NodeProcess(proc, data, api_port, tmp_path / "node.log", operator_token(data))
    try:
        wait_for(lambda: node.get("/v1/node/status")["broker_connected"], 60, "ledger node",
                 proc=proc, log_file=node.log)
        now = time.time_ns() // 1_000_000

        def signed(body: dict[str, Any]) -> bytes:
            return build_operator_entry({**body, "t": now}, pki.operator, pki.operator_cert)

        for body in ({"type": "contract_registered", "name": "hot-goods", "version": 1,
                      "doc": COLD_CHAIN, "effective": None},
                     {"type": "shipment_created", "shipment": "SHP-9",
                      "parties": [{"org": "acme", "role": "shipper"}], "units": [],
                      "route": None, "geofences": {}, "deadline": None,
                      "contracts": ["hot-goods"]},
                     {"type": "shipment_assigned", "shipment": "SHP-9", "dev": "truck-9",
                      "start": now - 60_000, "end": None}):
            assert post_entry(node.api, signed(body))["status"] == "accepted"

        with TestClient(broker.port, "watcher") as watcher, \
                TestClient(broker.port, "truck-9") as device:
            watcher.subscribe("tf/v1/test/events/#")
            time.sleep(0.5)
            prev = GENESIS_PREV
            for seq, c in enumerate([5.0, 6.0, 31.5, 7.0], start=1):
                r = Reading(dev="truck-9", seq=seq, prev=prev, t=now + seq * 1000, ts="gps",
                            k="temp", d={"c": c, "probe": "p1"})
                env = sign1(encode_payload(r), truck.kid, truck.sign)
                prev = hashlib.sha256(env).digest()
                device.publish(up_topic("test", "truck-9"), env)
            msg = watcher.messages.get(timeout=30)
        assert msg.topic == "tf/v1/test/events/excursion"
        event = json.loads(msg.payload)
        assert event["shipment"] == "SHP-9" and event["state"] == "out_of_compliance"

        # on the ledger: the event entry cites the 31.5 °C reading, the shipment moved
        wait_for(lambda: node.get("/v1/shipments/SHP-9")["state"] == "out_of_compliance", 30,
                 "shipment state", proc=proc, log_file=node.log)
        cause = event["cause"]
        cited = node.get(f"/v1/entries/{cause[0]}")
        assert cited["kind"] == "reading"

        # the webhook got it, signed; the one that is down did not stop anything
        wait_for(lambda: len(handler.got) >= 1, 30, "webhook delivery", proc=proc,
                 log_file=node.log)
        headers, body = handler.got[0]
        stamp = headers["x-trustfleet-timestamp"]
        want = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert headers["x-trustfleet-signature"] == f"sha256={want}"
        assert json.loads(body)["event"]["event"] == "excursion"
        status = node.get("/v1/node/status")
        assert status["webhooks"]["down"]["last_error"]
        assert status["webhooks"]["insurer"]["delivered"] >= 1
    finally:
        assert node.stop() == 0
    verify = spawn(cli("verify", "--data", str(data), "-q"), tmp_path / "verify.log")
    assert verify.wait(120) == 0, (tmp_path / "verify.log").read_text()
