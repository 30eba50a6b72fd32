"""MQTT over TLS: the broker role and TLS files from the fleet CA (hsm.x509/ca/certcheck,
hsm.tlsfiles), the TLS broker's generated config, the clients' settings, `trustfleet up`'s
TLS preparation, and one end-to-end run through the real broker, ledger node and edge agent.
The broker's access control is tested in tests/test_broker_acl.py."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsm import FleetCA, SoftHsmRig, SoftwareSigner, check_certificate, make_csr
from hsm.errors import CertificateRejected
from hsm.tlsfiles import TlsIdentity, broker_identity, ensure_tls_files
from hsm.x509 import (
    CLIENT_AUTH_OID,
    ROLE_OIDS,
    SERVER_AUTH_OID,
    build_name,
    ext_authority_key_id,
    ext_basic_constraints,
    ext_extended_key_usage,
    ext_key_usage,
    ext_subject_key_id,
    key_identifier,
    pem_or_der_to_der,
)
from tests.fleet import NodeProcess, ca_path_for, cli, operator_token, spawn, write_enrollments
from tests.tlskit import TlsClient, TlsMaterial, make_material, start_tls_broker
from trustfleet.broker import BrokerTls, dynsec_config, write_config
from trustfleet.procs import free_port, stop_process, wait_for

NOW = 1_763_700_000_000
YEAR = 365 * 86_400_000


def _der(path: Path) -> bytes:
    return pem_or_der_to_der(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_material(tmp_path_factory.mktemp("tls"), ["truck-a"], ["node-1"])


# --- certificates ---------------------------------------------------------------------------


def test_the_broker_certificate_is_a_server_certificate_for_the_loopback(
        material: TlsMaterial) -> None:
    ca = _der(material.ca)
    der = _der(material.broker.cert)
    info = check_certificate(der, ca, expected_id="mqtt-broker", expected_role="broker",
                             at_ms=_now_ms())
    assert info.role == "broker"
    cert = x509.load_der_x509_certificate(der)
    eku = [o.dotted_string for o in cert.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value]
    assert eku == [ROLE_OIDS["broker"], SERVER_AUTH_OID]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    with pytest.raises(CertificateRejected) as exc:
        check_certificate(der, ca, expected_id=None, expected_role="device", at_ms=_now_ms())
    assert exc.value.reason == "cert_role"


def test_a_device_tls_certificate_is_an_ordinary_device_certificate_for_its_id(
        material: TlsMaterial) -> None:
    der = _der(material.files["truck-a"].cert)
    info = check_certificate(der, _der(material.ca), expected_id="truck-a",
                             expected_role="device", at_ms=_now_ms())
    assert info.subject_id == "truck-a"
    eku = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH not in eku


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def test_the_ca_names_hosts_only_in_broker_certificates() -> None:
    ca, ca_signer = FleetCA(), SoftwareSigner.generate()
    ca_cert = ca.create_ca_certificate(ca_signer, "Test CA", NOW, NOW + YEAR)
    key = SoftwareSigner.generate()

    def issue(role: str, **names: list[str]) -> bytes:
        return ca.issue(ca_signer, ca_cert, make_csr(key, "x-1"), role, NOW, NOW + 1000, 5,
                        **names)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="names no hosts"):
        issue("device", dns_names=["localhost"])
    with pytest.raises(ValueError, match="at least one DNS name or IP"):
        issue("broker")
    with pytest.raises(ValueError, match="not a DNS host name"):
        issue("broker", dns_names=["bad name"])
    with pytest.raises(ValueError):
        issue("broker", ip_addresses=["300.1.1.1"])
    der = issue("broker", dns_names=["mqtt.fleet.example"], ip_addresses=["::1", "10.0.0.7"])
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.fleet.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["::1", "10.0.0.7"]
    assert check_certificate(der, ca_cert, expected_id="x-1", expected_role="broker",
                             at_ms=NOW).role == "broker"


@pytest.mark.parametrize(("role", "purpose"), [("device", SERVER_AUTH_OID),
                                               ("broker", CLIENT_AUTH_OID)])
def test_a_certificate_with_another_roles_purpose_is_refused(role: str, purpose: str) -> None:
    ca_signer = SoftwareSigner.generate()
    ca_cert = FleetCA().create_ca_certificate(ca_signer, "Test CA", NOW, NOW + YEAR)
    from hsm.x509 import build_certificate

    spki = SoftwareSigner.generate().public_key_der()
    der = build_certificate(
        ca_signer, serial=9, issuer=build_name("Test CA"), subject=build_name("x-1"),
        spki_der=spki, not_before_ms=NOW, not_after_ms=NOW + 1000,
        extensions=[ext_basic_constraints(ca=False), ext_key_usage({"digital_signature"}),
                    ext_extended_key_usage([ROLE_OIDS[role], purpose]),  # type: ignore[index]
                    ext_subject_key_id(key_identifier(spki)),
                    ext_authority_key_id(key_identifier(ca_signer.public_key_der()))])
    with pytest.raises(CertificateRejected) as exc:
        check_certificate(der, ca_cert, expected_id=None, expected_role=role, at_ms=NOW)
    assert exc.value.reason == "cert_role"


# --- TLS files ------------------------------------------------------------------------------


def test_tls_files_are_made_once_kept_and_repaired(tmp_path: Path) -> None:
    rig = SoftHsmRig(tmp_path / "rig")
    ids = [broker_identity(tmp_path / "broker"), TlsIdentity("truck-a", "device",
                                                             tmp_path / "truck-a")]
    first = ensure_tls_files(rig, ids)
    a = first["truck-a"]
    assert a.ca == rig.directory / "ca.pem"
    assert _mode(a.key) == 0o600 and _mode(first["mqtt-broker"].key) == 0o600
    key, cert = a.key.read_bytes(), a.cert.read_bytes()

    again = ensure_tls_files(rig, ids)  # idempotent: nothing changes
    assert again == first and a.key.read_bytes() == key and a.cert.read_bytes() == cert

    a.key.chmod(0o644)
    a.cert.unlink()  # a lost certificate: a new one for the same key
    ensure_tls_files(rig, ids)
    assert _mode(a.key) == 0o600 and a.key.read_bytes() == key
    assert a.cert.read_bytes() != cert
    reissued = check_certificate(_der(a.cert), _der(a.ca), expected_id="truck-a",
                                 expected_role="device", at_ms=_now_ms())

    a.key.write_text("not a key")  # an unreadable key: a new key and a new certificate
    ensure_tls_files(rig, ids)
    assert a.key.read_bytes() != key and _mode(a.key) == 0o600
    fresh = check_certificate(_der(a.cert), _der(a.ca), expected_id="truck-a",
                              expected_role="device", at_ms=_now_ms())
    assert fresh.spki_der != reissued.spki_der

    moved = [broker_identity(tmp_path / "broker", dns_names=["mqtt.example.org"]), ids[1]]
    ensure_tls_files(rig, moved)  # other host names: a new broker certificate
    san = x509.load_der_x509_certificate(_der(first["mqtt-broker"].cert)).extensions
    assert san.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["mqtt.example.org"]


def test_tls_identities_are_checked_before_anything_is_made(tmp_path: Path) -> None:
    rig = SoftHsmRig(tmp_path / "rig")
    for bad in ([TlsIdentity("truck-a", "device", tmp_path, dns_names=("localhost",))],
                [TlsIdentity("b", "broker", tmp_path)],
                [TlsIdentity("bad id!", "device", tmp_path)],
                [TlsIdentity("x", "admin", tmp_path)],  # type: ignore[arg-type]
                [TlsIdentity("x", "device", tmp_path), TlsIdentity("x", "node", tmp_path)]):
        with pytest.raises(ValueError):
            ensure_tls_files(rig, bad)
    assert not (rig.directory / "ca.pem").exists()


# --- broker config --------------------------------------------------------------------------


def test_the_tls_broker_config_has_one_tls_listener_and_a_default_deny_acl(
        tmp_path: Path, material: TlsMaterial) -> None:
    own = material.broker
    tls = BrokerTls(own.ca, own.cert, own.key, devices={"demo": ("truck-1", "truck-2")},
                    nodes=("node-1",))
    conf = write_config(tmp_path / "b", 18883, tls=tls).read_text().splitlines()
    assert [line for line in conf if line.startswith("listener")] == ["listener 18883 127.0.0.1"]
    for line in ("require_certificate true", "use_identity_as_username true",
                 "use_username_as_clientid true", "allow_anonymous false",
                 f"cafile {own.ca.resolve()}", "tls_version tlsv1.2"):
        assert line in conf
    dynsec = tmp_path / "b" / "dynamic-security.json"
    assert _mode(dynsec) == 0o600
    assert json.loads(dynsec.read_text()) == dynsec_config(tls)
    acl = dynsec_config(tls)
    assert acl["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                       "subscribe": False, "unsubscribe": True}
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]}
             for r in acl["roles"]}
    assert roles["device:demo:truck-1"] == {
        ("publishClientSend", "tf/v1/demo/truck-1/up"),
        ("subscribeLiteral", "tf/v1/demo/truck-1/receipt"),
        ("publishClientReceive", "tf/v1/demo/truck-1/receipt")}
    assert ("subscribeLiteral", "$share/ledger/tf/v1/+/+/up") in roles["ledger-node"]
    assert {c["username"] for c in acl["clients"]} == {"truck-1", "truck-2", "node-1"}

    plain = write_config(tmp_path / "p", 1883).read_text()
    assert "allow_anonymous true" in plain and "cafile" not in plain


def test_a_device_id_cannot_also_be_a_node_or_listed_twice(material: TlsMaterial) -> None:
    own = material.broker
    with pytest.raises(ValueError, match="both a node and a device"):
        BrokerTls(own.ca, own.cert, own.key, devices={"demo": ("node-1",)}, nodes=("node-1",))
    with pytest.raises(ValueError, match="listed twice"):
        BrokerTls(own.ca, own.cert, own.key, devices={"a": ("t-1",), "b": ("t-1",)})
    with pytest.raises(ValueError):
        BrokerTls(own.ca, own.cert, own.key, devices={"demo": ("truck/#",)})


# --- clients' settings ----------------------------------------------------------------------


def test_clients_refuse_unusable_tls_settings(tmp_path: Path, material: TlsMaterial) -> None:
    from edge_agent.errors import AgentConfigError
    from edge_agent.uplink import Uplink
    from ledger_node.config import load_config
    from ledger_node.errors import ConfigError

    with pytest.raises(AgentConfigError, match="TLS files"):
        Uplink("demo", "truck-a", "127.0.0.1", 1883, tls_ca=tmp_path / "missing.pem",
               tls_cert=material.files["truck-a"].cert, tls_key=material.files["truck-a"].key)
    with pytest.raises(ConfigError, match="need tls_ca"):
        load_config(None, tls_cert=Path("c.pem"), tls_key=Path("k.pem"))
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, tls_ca=Path("ca.pem"), tls_cert=Path("c.pem"))
    toml = tmp_path / "node.toml"
    toml.write_text('[node]\ntls_ca = "ca.pem"\ntls_cert = "n.pem"\ntls_key = "n.key"\n')
    assert load_config(toml).tls_key == Path("n.key")


def test_up_prepares_tls_for_broker_node_and_trucks_and_keeps_it(tmp_path: Path) -> None:
    from edge_agent.config import load_agent_config
    from trustfleet.launcher import _agent_tls_config, prepare_tls

    broker, files = prepare_tls(tmp_path, ["truck-1", "truck-2"])
    assert broker.devices == {"demo": ("truck-1", "truck-2")} and broker.nodes == ("node-1",)
    assert broker.cert == tmp_path / "broker" / "tls" / "mqtt-broker.pem"
    assert files["truck-1"].key == tmp_path / "trucks" / "truck-1" / "tls" / "truck-1.key"
    assert files["node-1"].cert == tmp_path / "node-1" / "tls" / "node-1.pem"
    assert all(_mode(f.key) == 0o600 for f in files.values())
    before = {name: f.cert.read_bytes() for name, f in files.items()}
    _, again = prepare_tls(tmp_path, ["truck-1", "truck-2"])
    assert {name: f.cert.read_bytes() for name, f in again.items()} == before

    cfg = load_agent_config(_agent_tls_config(tmp_path / "trucks" / "truck-1", files["truck-1"]),
                            device_id="truck-1", w1_dir=tmp_path)
    assert (cfg.tls_ca, cfg.tls_cert, cfg.tls_key) == (files["truck-1"].ca,
                                                       files["truck-1"].cert,
                                                       files["truck-1"].key)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_readings_travel_over_tls_to_the_real_node_and_forgeries_never_reach_it(
        tmp_path: Path) -> None:
    rig = SoftHsmRig(tmp_path / "rig")
    rig.ensure_tokens(["truck-a", "node-1"])
    mat = make_material(tmp_path, ["truck-a", "truck-b"], ["node-1", "node-2"])
    broker = start_tls_broker(tmp_path / "broker", mat, {"test": ["truck-a", "truck-b"]},
                              ["node-1", "node-2"])
    enroll = write_enrollments(tmp_path / "enroll.json",
                               {"truck-a": rig.public_key_der("truck-a")})
    procs: list[subprocess.Popen[bytes]] = []
    node: NodeProcess | None = None
    try:
        observer = TlsClient(broker.port, mat.files["node-2"])  # node credentials, unshared
        assert observer.subscribe("tf/v1/+/+/up") == "Granted QoS 1"
        node = _start_tls_node(tmp_path / "node", rig.directory, broker.port, enroll, mat)
        procs.extend(_start_tls_truck(tmp_path, "truck-a", rig.directory, broker.port, mat))

        def committed() -> int:
            assert node is not None
            return sum(d["contiguous_seq"] for d in node.get("/v1/devices")
                       if d["id"] == "truck-a")

        wait_for(lambda: committed() >= 3, 90, "3 readings of truck-a committed over TLS",
                 proc=node.proc, log_file=node.log)
        # the receipt travels node -> broker -> agent after the commit: wait for it too
        wait_for(lambda: "receipt: seq" in (tmp_path / "truck-a.log").read_text(), 60,
                 "truck-a's receipt over TLS", proc=node.proc, log_file=tmp_path / "truck-a.log")
        assert "connected to mqtts://127.0.0.1:" in (tmp_path / "truck-a.log").read_text()

        # truck-b (a valid certificate) forges a message under truck-a's topic: the broker
        # refuses it; then a barrier on its own topic, which the node quarantines (truck-b is
        # not enrolled). The forgery, sent first, would have reached the node first.
        with TlsClient(broker.port, mat.files["truck-b"]) as b:
            assert b.publish("tf/v1/test/truck-a/up", b"\xff forged by truck-b") == \
                "Not authorized"
            assert b.publish("tf/v1/test/truck-b/up", b"\xff barrier") == "Success"
        wait_for(lambda: any(i["topic"] == "tf/v1/test/truck-b/up"
                             for i in node.get("/v1/quarantine")["items"]), 90,
                 "the barrier in the node's quarantine", proc=node.proc, log_file=node.log)
        items = node.get("/v1/quarantine")["items"]
        assert [i["topic"] for i in items] == ["tf/v1/test/truck-b/up"]
        seen = observer.messages_until(b"\xff barrier")
        assert b"\xff forged by truck-b" not in [m.payload for m in seen]
        assert {m.topic for m in seen} <= {"tf/v1/test/truck-a/up", "tf/v1/test/truck-b/up"}
        readings = node.get("/v1/devices/truck-a/readings")["readings"]
        assert [r["seq"] for r in readings] == list(range(1, len(readings) + 1))
        observer.close()
    finally:
        for p in reversed(procs):
            stop_process(p)
        if node is not None:
            assert node.stop() == 0
        stop_process(broker.proc)


def _start_tls_node(data: Path, rig_dir: Path, port: int, enroll: Path, mat: TlsMaterial
                    ) -> NodeProcess:
    api_port = free_port()
    own = mat.files["node-1"]
    log = data / "node.log"
    proc = spawn(cli("node", "run", "--data", str(data), "--rig", str(rig_dir), "--token",
                     "node-1", "--enroll", str(enroll), "--fleet-ca", str(ca_path_for(enroll)),
                     "--broker-port", str(port), "--api-port", str(api_port),
                     "--block-interval-ms", "100", "--tls-ca", str(own.ca), "--tls-cert",
                     str(own.cert), "--tls-key", str(own.key)), log)
    node = NodeProcess(proc, data, api_port, log, operator_token(data))
    wait_for(lambda: node.get("/v1/node/status")["broker_connected"], 60,
             "ledger node connected over TLS", proc=proc, log_file=log)
    return node


def _start_tls_truck(tmp: Path, name: str, rig_dir: Path, port: int, mat: TlsMaterial
                     ) -> list[subprocess.Popen[bytes]]:
    from trustfleet.launcher import _agent_tls_config

    truck_dir = tmp / name
    shim = spawn(cli("shim", "truck", "--dir", str(truck_dir), "--index", "1", "--interval",
                     "0.2"), tmp / f"{name}-shim.log")
    wait_for(lambda: (truck_dir / "gps.tty").exists(), 20, f"{name} shim", proc=shim,
             log_file=tmp / f"{name}-shim.log")
    config = _agent_tls_config(truck_dir, mat.files[name])
    agent = spawn(cli("agent", "run", "--config", str(config), "--device-id", name, "--fleet",
                      "test", "--data", str(truck_dir), "--gps-port", str(truck_dir / "gps.tty"),
                      "--w1-dir", str(truck_dir / "w1"), "--rig", str(rig_dir), "--broker-port",
                      str(port), "-v"), tmp / f"{name}.log")
    return [shim, agent]
