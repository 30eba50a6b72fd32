"""`trustfleet proof`, `verify-bundle` and `verify-consistency` as a user runs them: subprocesses
on a real store, and a real HTTP server for the node-URL form of verify-consistency."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ledger_node import proofs
from ledger_node.heads import head_json
from ledger_node.store import open_reader
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import cli
from trustfleet.procs import free_port

T0 = 1_763_700_000_000  # chainkit readings have device time T0 + seq


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ChainUnderTest]:
    data = tmp_path_factory.mktemp("node")
    a, b = Device("truck-1"), Device("truck-2")
    tc = ChainUnderTest(data / "ledger.sqlite", [a, b])
    for _ in range(4):
        tc.apply([a.message(a.reading()), b.message(b.reading()), a.message(a.reading())])
    tc.store.close()
    return data, tc


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=120, check=False,
                          input=None if stdin is None else stdin.decode())


def proof(data: Path, out: Path, *extra: str) -> dict[str, object]:
    got = run("proof", "--data", str(data), "--device", "truck-1", *extra)
    assert got.returncode == 0, got.stderr
    out.write_text(got.stdout)
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def test_bundle_round_trip_through_the_cli(node: tuple[Path, ChainUnderTest],
                                           tmp_path: Path) -> None:
    data, tc = node
    bundle = tmp_path / "bundle.json"
    proof(data, bundle)
    got = run("verify-bundle", str(bundle))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "OK: bundle about device 'truck-1', device time [open, open)" in got.stdout
    assert "truck-1: 8 reading(s), seq 1-8" in got.stdout
    assert "block 4 of chain 'main', tree size 15" in got.stdout
    assert "the genesis entry, 1 operator entry (1 enrolment)" in got.stdout
    assert "NOT pinned" in got.stdout
    der = tmp_path / "node.der"
    der.write_bytes(tc.node.public_key_der())
    pem = tmp_path / "node.pem"
    pem.write_bytes(serialization.load_der_public_key(der.read_bytes()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for key in (der, pem):
        got = run("verify-bundle", str(bundle), "--node-key", str(key), "--device", "truck-1")
        assert got.returncode == 0, got.stdout
        assert "checked with the pinned node key" in got.stdout and "NOT" not in got.stdout
    got = run("verify-bundle", "-", stdin=bundle.read_bytes())
    assert got.returncode == 0


def test_verify_bundle_against_a_pinned_fleet_ca(node: tuple[Path, ChainUnderTest],
                                                 tmp_path: Path) -> None:
    from cryptography import x509

    from tests.pki import SoftPKI

    data, tc = node
    bundle = tmp_path / "bundle.json"
    proof(data, bundle)
    der = tmp_path / "ca.der"
    der.write_bytes(tc.pki.ca_cert)
    pem = tmp_path / "ca.pem"
    pem.write_bytes(x509.load_der_x509_certificate(tc.pki.ca_cert).public_bytes(
        serialization.Encoding.PEM))
    for ca in (der, pem):
        got = run("verify-bundle", str(bundle), "--ca", str(ca))
        assert got.returncode == 0, got.stdout + got.stderr
        assert "fleet CA: CN=Test Fleet CA,O=TrustFleet" in got.stdout
        assert "the pinned fleet CA" in got.stdout
        assert "trust: the fleet CA is pinned" in got.stdout
    other = tmp_path / "other.der"
    other.write_bytes(SoftPKI().ca_cert)
    got = run("verify-bundle", str(bundle), "--ca", str(other))
    assert got.returncode == 1 and "FAILED [wrong_ca] certificates.ca" in got.stdout
    (tmp_path / "junk.der").write_bytes(b"not a certificate")
    got = run("verify-bundle", str(bundle), "--ca", str(tmp_path / "junk.der"))
    assert got.returncode == 2 and "cannot read input" in got.stderr


def test_proof_of_a_device_time_range_and_an_older_head(node: tuple[Path, ChainUnderTest],
                                                        tmp_path: Path) -> None:
    data, _ = node
    bundle = proof(data, tmp_path / "b.json", "--from", str(T0 + 3), "--to",
                   "2025-11-21T04:40:00.006Z", "--height", "3")
    assert bundle["subject"] == {"device": "truck-1", "from": T0 + 3, "to": T0 + 6}
    got = run("verify-bundle", str(tmp_path / "b.json"))
    assert got.returncode == 0, got.stdout
    assert "truck-1: 3 reading(s), seq 3-5" in got.stdout and "block 3 of chain" in got.stdout


def test_a_broken_bundle_fails_with_its_reason_and_exit_1(node: tuple[Path, ChainUnderTest],
                                                          tmp_path: Path) -> None:
    data, _ = node
    bundle = proof(data, tmp_path / "b.json")
    entry = bundle["entries"][2]  # type: ignore[index]
    raw = bytearray(base64.b64decode(entry["data"]))
    raw[30] ^= 4
    entry["data"] = base64.b64encode(bytes(raw)).decode()
    (tmp_path / "broken.json").write_text(json.dumps(bundle))
    got = run("verify-bundle", str(tmp_path / "broken.json"))
    assert got.returncode == 1
    assert "FAILED [bad_inclusion_proof] entries[2] (index 3)" in got.stdout
    assert "bundle NOT verified: 1 problem(s)" in got.stdout
    (tmp_path / "garbage.json").write_text(json.dumps(bundle) + "\n}")
    got = run("verify-bundle", str(tmp_path / "garbage.json"))
    assert got.returncode == 1 and "FAILED [bad_json] bundle: not valid JSON" in got.stdout
    got = run("verify-bundle", str(tmp_path / "b.json"), "--device", "truck-2")
    assert got.returncode == 1 and "FAILED [wrong_device] subject" in got.stdout


def test_cli_errors_are_clear(node: tuple[Path, ChainUnderTest], tmp_path: Path) -> None:
    data, _ = node
    got = run("proof", "--data", str(data), "--device", "nope")
    assert got.returncode == 1 and "no device 'nope' is enrolled" in got.stderr
    got = run("proof", "--data", str(data), "--device", "truck-1", "--from", str(T0 + 100))
    assert got.returncode == 1 and "no readings of device 'truck-1'" in got.stderr
    got = run("proof", "--data", str(tmp_path / "none"), "--device", "truck-1")
    assert got.returncode == 2 and "no ledger store at" in got.stderr
    got = run("proof", "--data", str(data), "--device", "truck-1", "--from", "yesterday")
    assert got.returncode == 2 and "neither ms since the epoch nor ISO 8601" in got.stderr
    got = run("verify-bundle", str(tmp_path / "missing.json"))
    assert got.returncode == 2 and "cannot read input" in got.stderr


@pytest.fixture(scope="module")
def api(node: tuple[Path, ChainUnderTest]) -> Iterator[str]:
    """The node's real API app in a uvicorn server thread."""
    import uvicorn

    from ledger_node.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(node[0] / "ledger.sqlite"),
                                           host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def save_head(data: Path, height: int, path: Path) -> Path:
    conn = open_reader(data / "ledger.sqlite")
    h = proofs.signed_head(conn, height)
    conn.close()
    path.write_text(json.dumps(head_json(h.header_bytes, h.signatures)))
    return path


def test_verify_consistency_offline_and_against_a_node(node: tuple[Path, ChainUnderTest],
                                                       api: str, tmp_path: Path) -> None:
    import urllib.request

    data, tc = node
    old = save_head(data, 1, tmp_path / "old.json")
    with urllib.request.urlopen(f"{api}/v1/chain/consistency?from=1&to=3") as resp:
        (tmp_path / "doc.json").write_bytes(resp.read())
    key = tmp_path / "node.der"
    key.write_bytes(tc.node.public_key_der())
    got = run("verify-consistency", "--old", str(old), "--new", str(tmp_path / "doc.json"),
              "--node-key", str(key))
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.startswith("OK: chain 'main': block 1 (tree size 6")
    assert "is a prefix of block 3 (tree size 12" in got.stdout
    # a saved newer head, with the proof fetched from the node
    new = save_head(data, 4, tmp_path / "new.json")
    got = run("verify-consistency", "--old", str(old), "--new", str(new), "--node", api)
    assert got.returncode == 0 and "block 4 (tree size 15" in got.stdout, got.stdout
    # the node alone, saving the document to use as --old next time
    got = run("verify-consistency", "--old", str(old), "--node", api, "--save",
              str(tmp_path / "next.json"))
    assert got.returncode == 0, got.stdout
    got = run("verify-consistency", "--old", str(tmp_path / "next.json"), "--node", api)
    assert got.returncode == 0 and "block 4 (tree size 15" in got.stdout


def test_verify_consistency_failures(node: tuple[Path, ChainUnderTest], api: str,
                                     tmp_path: Path) -> None:
    data, _ = node
    old = save_head(data, 2, tmp_path / "old.json")
    new = save_head(data, 4, tmp_path / "new.json")
    got = run("verify-consistency", "--old", str(old), "--new", str(new))
    assert got.returncode == 1 and "FAILED [no_proof]" in got.stdout
    got = run("verify-consistency", "--old", str(old))
    assert got.returncode == 2 and "give --new, --node, or both" in got.stderr
    got = run("verify-consistency", "--old", str(old), "--node", "http://127.0.0.1:9")
    assert got.returncode == 2 and "cannot reach" in got.stderr
    got = run("verify-consistency", "--old", str(old), "--node", api, "--node-key",
              str(tmp_path / "missing.der"))
    assert got.returncode == 2 and "cannot read input" in got.stderr
    # a head from a longer chain: the node has no such block, and says so
    a = Device("truck-1")
    longer = ChainUnderTest(tmp_path / "longer" / "ledger.sqlite", [a])
    for _ in range(7):
        longer.apply([a.message(a.reading())])
    longer.store.close()
    got = run("verify-consistency", "--old", str(save_head(tmp_path / "longer", 7,
                                                            tmp_path / "h7.json")), "--node", api)
    assert got.returncode == 1
    assert "FAILED [node_refused]" in got.stdout and "no block at height 7" in got.stdout


def test_verify_consistency_catches_a_fork(tmp_path: Path) -> None:
    from tests.test_proofs_consistency import doc, twin_chains

    a, b, key = twin_chains(tmp_path)
    mine = save_head(a.parent, 2, tmp_path / "mine.json")
    (tmp_path / "theirs.json").write_text(json.dumps(doc(b, 2, 3)))
    (tmp_path / "key.der").write_bytes(key)
    got = run("verify-consistency", "--old", str(mine), "--new", str(tmp_path / "theirs.json"),
              "--node-key", str(tmp_path / "key.der"))
    assert got.returncode == 1
    assert got.stdout.startswith("FAILED [fork] old head: block 2 in the document")
    assert "the history was rewritten" in got.stdout
