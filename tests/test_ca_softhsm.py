"""The fleet CA against real SoftHSM2 tokens: keys stay inside, certificates are standard.

The CA key lives in the rig's token "fleet-ca"; device, node and operator tokens sign their own
CSRs. SoftHSM reads SOFTHSM2_CONF once per process, so this test process never loads the module:
hsm.certstore signs in child processes, and so does `in_rig` below. check_certificate is pure
and runs here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hsm import (
    SoftHsmRig,
    check_certificate,
    ensure_ca,
    ensure_certificates,
    load_ca_certificate,
)
from hsm.certstore import DAY_MS, ca_certificate_path, certificate_path
from hsm.cli import main as cli_main
from hsm.errors import CERT_REASONS, CertificateRejected
from hsm.rig import DEFAULT_MODULE_PATH
from hsm.x509 import der_to_pem, der_to_raw_signature, raw_to_der_signature

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"truck-1": "device", "node-1": "node", "op-1": "operator"}

pytestmark = pytest.mark.skipif(
    not (os.path.isfile(DEFAULT_MODULE_PATH) and shutil.which("softhsm2-util")
         and shutil.which("openssl")),
    reason="needs SoftHSM2 (apt-get install softhsm2) and openssl",
)

PRELUDE = """
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from asn1crypto import x509 as ax
from hsm import FleetCA, SoftHsmRig, open_signer, make_csr
from hsm.errors import CsrRejected
from hsm.x509 import *
params = json.load(sys.stdin)
rig = SoftHsmRig(params["dir"])
def emit(obj):
    print(json.dumps(obj))
"""


def in_rig(rig: SoftHsmRig, body: str, **params: Any) -> Any:
    """Run `body` in a fresh interpreter configured for `rig`; return what it emit()s."""
    env = {**os.environ, **rig.env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        input=json.dumps({"dir": str(rig.directory), **params}),
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@dataclass(frozen=True)
class Fleet:
    rig: SoftHsmRig
    ca: bytes
    certs: dict[str, bytes]
    now: int


def _fleet(directory: Path) -> Fleet:
    rig = SoftHsmRig(directory)
    now = int(time.time() * 1000)
    certs = ensure_certificates(rig, LABELS, now_ms=now)
    return Fleet(rig, load_ca_certificate(rig), certs, now)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return _fleet(tmp_path_factory.mktemp("rig"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Another rig: its own fleet-ca token, and a CA certificate with the same name."""
    return _fleet(tmp_path_factory.mktemp("other-rig"))


def _reason(fleet: Fleet, cert: bytes, label: str = "truck-1", **overrides: Any) -> str:
    kwargs: dict[str, Any] = {"expected_id": label, "expected_role": LABELS[label],
                              "at_ms": fleet.now, **overrides}
    with pytest.raises(CertificateRejected) as caught:
        check_certificate(cert, fleet.ca, **kwargs)
    return caught.value.reason


def _openssl_verify(
    ca: bytes, cert: bytes, folder: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    (folder / "ca.pem").write_text(der_to_pem(ca))
    (folder / "ee.pem").write_text(der_to_pem(cert))
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", *extra, "-CAfile", str(folder / "ca.pem"),
         str(folder / "ee.pem")], capture_output=True, text=True, check=False,
    )


def test_ca_key_is_made_in_its_token_sensitive_and_never_extractable(fleet: Fleet) -> None:
    attrs = in_rig(
        fleet.rig,
        """
        token = pkcs11.lib(rig.module_path).get_token(token_label="fleet-ca")
        with token.open(user_pin=rig.user_pin("fleet-ca")) as s:
            key = s.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label="signing")
            out = {a.name: bool(key[a]) for a in (
                Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.ALWAYS_SENSITIVE,
                Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL, Attribute.TOKEN)}
            try:
                key[Attribute.VALUE]
                out["value"] = "readable"
            except pkcs11.exceptions.AttributeSensitive:
                out["value"] = "sensitive"
            emit(out)
        """,
    )
    assert attrs == {"SENSITIVE": True, "EXTRACTABLE": False, "ALWAYS_SENSITIVE": True,
                     "NEVER_EXTRACTABLE": True, "LOCAL": True, "TOKEN": True,
                     "value": "sensitive"}
    ca = x509.load_der_x509_certificate(fleet.ca)
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki == fleet.rig.public_key_der("fleet-ca")


def test_ca_and_token_certificates_load_in_cryptography_and_pass_openssl_verify(
    fleet: Fleet, tmp_path: Path
) -> None:
    ca = x509.load_der_x509_certificate(fleet.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_certificate_path(fleet.rig).read_text().startswith("-----BEGIN CERTIFICATE-----")
    for label, der in fleet.certs.items():
        cert = x509.load_der_x509_certificate(der)
        assert cert.issuer == ca.subject
        assert certificate_path(fleet.rig, label).read_bytes() == der
        for extra in ([], ["-purpose", "sslclient"]):
            out = _openssl_verify(fleet.ca, der, tmp_path, *extra)
            assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out.stderr


def test_each_token_certificate_checks_with_its_id_role_and_the_tokens_key(fleet: Fleet) -> None:
    kids = {t.label: t.kid for t in fleet.rig.tokens()}
    for label, role in LABELS.items():
        info = check_certificate(fleet.certs[label], fleet.ca, expected_id=label,
                                 expected_role=role, at_ms=fleet.now)
        assert (info.subject_id, info.role) == (label, role)
        assert info.spki_der == fleet.rig.public_key_der(label)
        assert info.kid.hex() == kids[label]
        assert info.not_before_ms <= fleet.now < info.not_after_ms - 300 * DAY_MS


def test_certificate_from_another_rigs_ca_with_the_same_name_is_refused(
    fleet: Fleet, other: Fleet, tmp_path: Path
) -> None:
    ours, theirs = x509.load_der_x509_certificate(fleet.ca), x509.load_der_x509_certificate(
        other.ca)
    assert ours.subject == theirs.subject
    assert _reason(fleet, other.certs["truck-1"]) == "cert_chain"
    assert _reason(other, fleet.certs["truck-1"]) == "cert_chain"
    assert _openssl_verify(fleet.ca, other.certs["truck-1"], tmp_path).returncode != 0


def test_time_role_and_id_are_checked(fleet: Fleet) -> None:
    cert = fleet.certs["truck-1"]
    info = check_certificate(cert, fleet.ca, expected_id="truck-1", expected_role="device",
                             at_ms=fleet.now)
    assert _reason(fleet, cert, at_ms=info.not_after_ms + 1) == "cert_expired"
    assert _reason(fleet, cert, at_ms=info.not_before_ms - 1) == "cert_not_yet_valid"
    assert _reason(fleet, cert, expected_role="node") == "cert_role"
    assert _reason(fleet, fleet.certs["node-1"], "node-1", expected_role="device") == "cert_role"
    assert _reason(fleet, cert, expected_id="truck-2") == "cert_wrong_device"
    assert _reason(fleet, fleet.certs["op-1"], "op-1", expected_id="truck-1") == (
        "cert_wrong_device"
    )


def test_certificates_the_ca_token_signs_with_wrong_usage_or_key_are_refused(
    fleet: Fleet,
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    crafted = in_rig(
        fleet.rig,
        """
        ca_cert = ax.Certificate.load(bytes.fromhex(params["ca"]))
        issuer = ca_cert["tbs_certificate"]["subject"]
        ca_kid = key_identifier(rig.public_key_der("fleet-ca"))
        dev = rig.public_key_der("truck-1")
        def ee(spki, basic, usage):
            return [basic, usage, ext_extended_key_usage([ROLE_OIDS["device"]]),
                    ext_subject_key_id(key_identifier(spki)), ext_authority_key_id(ca_kid)]
        variants = {
            "ca_true": (dev, ee(dev, ext_basic_constraints(ca=True, path_len=0),
                                ext_key_usage({"digital_signature"}))),
            "cert_sign": (dev, ee(dev, ext_basic_constraints(ca=False),
                                  ext_key_usage({"digital_signature", "key_cert_sign"}))),
            "p384": (bytes.fromhex(params["p384"]), ee(bytes.fromhex(params["p384"]),
                     ext_basic_constraints(ca=False), ext_key_usage({"digital_signature"}))),
        }
        out = {}
        with open_signer(rig, "fleet-ca") as ca:
            for name, (spki, exts) in variants.items():
                out[name] = build_certificate(
                    ca, serial=99, issuer=issuer, subject=build_name("truck-1"), spki_der=spki,
                    not_before_ms=params["now"] - 1000, not_after_ms=params["now"] + 86400000,
                    extensions=exts).hex()
        emit(out)
        """,
        ca=fleet.ca.hex(), p384=p384.hex(), now=fleet.now,
    )
    certs = {name: bytes.fromhex(der) for name, der in crafted.items()}
    assert _reason(fleet, certs["ca_true"]) == "cert_key_usage"
    assert _reason(fleet, certs["cert_sign"]) == "cert_key_usage"
    assert _reason(fleet, certs["p384"]) == "cert_bad_algorithm"


def test_rsa_and_p384_certificates_made_elsewhere_are_a_bad_algorithm(fleet: Fleet) -> None:
    issuer = x509.load_der_x509_certificate(fleet.ca).subject
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "truck-1")])
    for key, algorithm in (
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256()),
        (ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    ):
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(3)
            .not_valid_before(x509.load_der_x509_certificate(fleet.ca).not_valid_before_utc)
            .not_valid_after(x509.load_der_x509_certificate(fleet.ca).not_valid_after_utc)
            .sign(key, algorithm)
        )
        assert _reason(fleet, cert.public_bytes(serialization.Encoding.DER)) == (
            "cert_bad_algorithm"
        )


def test_flipped_signature_bit_truncation_and_garbage_are_refused(fleet: Fleet) -> None:
    good = fleet.certs["truck-1"]
    parsed = x509.load_der_x509_certificate(good)
    raw = bytearray(der_to_raw_signature(parsed.signature))
    raw[63] ^= 0x01
    flipped = good.replace(parsed.signature, raw_to_der_signature(bytes(raw)))
    assert len(flipped) == len(good) and flipped != good
    assert _reason(fleet, flipped) == "cert_chain"
    for bad in (good[:-1], good[:100], good[1:], b"", b"\xff" * 64, good + b"\x00"):
        assert _reason(fleet, bad) == "cert_malformed"


def test_issue_refuses_a_csr_whose_signature_does_not_verify(fleet: Fleet) -> None:
    reasons = in_rig(
        fleet.rig,
        """
        ca_der = bytes.fromhex(params["ca"])
        with open_signer(rig, "truck-1") as dev:
            good = make_csr(dev, "truck-1")
        flipped = bytearray(good)
        flipped[-1] ^= 0x01
        renamed = good.replace(b"truck-1", b"truck-9")  # CN changed after signing
        out = {}
        with open_signer(rig, "fleet-ca") as ca:
            for name, csr in (("flipped", bytes(flipped)), ("renamed", renamed)):
                try:
                    FleetCA().issue(ca, ca_der, csr, "device", params["now"],
                                    params["now"] + 1000, 5)
                    out[name] = "issued"
                except CsrRejected as exc:
                    out[name] = exc.reason
            out["good"] = len(FleetCA().issue(ca, ca_der, good, "device", params["now"],
                                              params["now"] + 1000, 5))
        emit(out)
        """,
        ca=fleet.ca.hex(), now=fleet.now,
    )
    assert reasons["flipped"] == "csr_signature"
    assert reasons["renamed"] == "csr_signature"
    assert reasons["good"] > 300


def test_ensure_certificates_twice_changes_nothing(fleet: Fleet) -> None:
    paths = [ca_certificate_path(fleet.rig)] + [certificate_path(fleet.rig, lbl) for lbl in LABELS]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]
    assert ensure_certificates(fleet.rig, LABELS) == fleet.certs
    assert ensure_ca(fleet.rig) == (fleet.ca, False)
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths] == before


def test_missing_corrupt_expiring_or_re_roled_certificates_are_reissued(tmp_path: Path) -> None:
    rig = SoftHsmRig(tmp_path / "rig")
    now = int(time.time() * 1000)
    first = ensure_certificates(rig, {"truck-1": "device", "node-1": "node"}, now_ms=now)
    certificate_path(rig, "truck-1").unlink()
    second = ensure_certificates(rig, {"truck-1": "device", "node-1": "node"}, now_ms=now)
    assert second["truck-1"] != first["truck-1"] and second["node-1"] == first["node-1"]
    certificate_path(rig, "node-1").write_bytes(b"garbage")
    third = ensure_certificates(rig, {"truck-1": "device", "node-1": "node"}, now_ms=now)
    assert third["node-1"] != first["node-1"] and third["truck-1"] == second["truck-1"]
    as_operator = ensure_certificates(rig, {"node-1": "operator"}, now_ms=now)
    ca = load_ca_certificate(rig)
    check_certificate(as_operator["node-1"], ca, expected_id="node-1", expected_role="operator",
                      at_ms=now)
    info = check_certificate(third["truck-1"], ca, expected_id="truck-1",
                             expected_role="device", at_ms=now)
    later = info.not_after_ms - 29 * DAY_MS
    renewed = ensure_certificates(rig, {"truck-1": "device"}, now_ms=later)["truck-1"]
    assert check_certificate(renewed, load_ca_certificate(rig), expected_id="truck-1",
                             expected_role="device", at_ms=later).not_after_ms > info.not_after_ms


def test_renewing_the_ca_certificate_keeps_the_key_so_issued_certificates_still_check(
    tmp_path: Path,
) -> None:
    rig = SoftHsmRig(tmp_path / "rig")
    now = int(time.time() * 1000)
    ca_old, created = ensure_ca(rig, days=60, now_ms=now)
    assert created
    cert = ensure_certificates(rig, {"truck-1": "device"}, now_ms=now)["truck-1"]
    later = now + 40 * DAY_MS
    ca_new, renewed = ensure_ca(rig, now_ms=later)
    assert renewed and ca_new != ca_old
    info = check_certificate(cert, ca_new, expected_id="truck-1", expected_role="device",
                             at_ms=later)
    assert info.not_after_ms <= now + 60 * DAY_MS  # clamped to the old CA certificate's end


def test_cli_ca_init_issue_and_show_cert(
    tmp_path: Path, other: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    rig_dir = tmp_path / "rig"
    out = tmp_path / "truck-1.pem"
    issue = ["hsm", "issue", "--dir", str(rig_dir), "--token", "truck-1", "--role", "device",
             "--out", str(out)]
    SoftHsmRig(rig_dir).ensure_token("truck-1")
    assert cli_main(issue) == 1
    assert "ca-init" in capsys.readouterr().err
    init = ["hsm", "ca-init", "--dir", str(rig_dir), "--name", "Demo Fleet CA", "--days", "30"]
    assert cli_main(init) == 0
    first = capsys.readouterr().out
    ca_pem = (rig_dir / "ca.pem").read_bytes()
    assert cli_main(init) == 0
    assert capsys.readouterr().out == first and (rig_dir / "ca.pem").read_bytes() == ca_pem
    assert "CN=Demo Fleet CA" in first
    assert cli_main(issue) == 0
    capsys.readouterr()
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(rig_dir / "ca.pem"), str(out)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert cli_main(["hsm", "show-cert", str(out), "--ca", str(rig_dir / "ca.pem")]) == 0
    shown = capsys.readouterr().out
    assert "truck-1" in shown and "device" in shown and "OK" in shown
    (tmp_path / "other-ca.pem").write_text(der_to_pem(other.ca))
    assert cli_main(["hsm", "show-cert", str(out), "--ca", str(tmp_path / "other-ca.pem")]) == 1
    assert "cert_chain" in capsys.readouterr().err
    der_out = tmp_path / "node.der"
    assert cli_main([*issue[:-4], "--role", "node", "--id", "node-7", "--out", str(der_out)]) == 0
    info = check_certificate(der_out.read_bytes(), load_ca_certificate(SoftHsmRig(rig_dir)),
                             expected_id="node-7", expected_role="node",
                             at_ms=int(time.time() * 1000))
    assert info.spki_der == SoftHsmRig(rig_dir).public_key_der("truck-1")
    assert cli_main([*issue[:-2], "--id", "bad/id", "--out", str(out)]) == 1
    assert "id" in capsys.readouterr().err


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_token_certificates_only_ever_raise_the_typed_rejection(
    fleet: Fleet, data: st.DataObject
) -> None:
    cert = bytearray(fleet.certs["node-1"])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(cert) - 1))
        cert[at] = data.draw(st.integers(0, 255).filter(lambda v, at=at: v != cert[at]))
    cut = data.draw(st.integers(0, len(cert)))
    mutated = bytes(cert[:cut]) if data.draw(st.booleans()) else bytes(cert)
    assume(mutated != fleet.certs["node-1"])
    with pytest.raises(CertificateRejected) as caught:
        check_certificate(mutated, fleet.ca, expected_id="node-1", expected_role="node",
                          at_ms=fleet.now)
    assert caught.value.reason in CERT_REASONS


def test_concurrent_ensure_certificates_in_several_processes_agree(tmp_path: Path) -> None:
    rig_dir = tmp_path / "rig"
    code = textwrap.dedent(
        """
        import sys
        from hsm import SoftHsmRig, ensure_certificates
        certs = ensure_certificates(SoftHsmRig(sys.argv[1]), {"truck-1": "device"})
        print(certs["truck-1"].hex())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(rig_dir)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    rig = SoftHsmRig(rig_dir)
    assert [t.label for t in rig.tokens()] == ["fleet-ca", "truck-1"]
