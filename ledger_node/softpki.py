"""A fleet PKI whose keys live in process memory: for benchmarks and test rigs ONLY.

Real fleets keep the CA and operator keys in HSM tokens (`trustfleet hsm ca-init`,
`trustfleet device enroll --rig ...`). Benchmarks and tests that sign readings with software
keys need the same certificates and operator entries without tokens; this builds them with
the real certificate code (hsm.ca, hsm.x509) and the real entry format (ledger_node.admin).
Device certificates here are issued for a given public key without a CSR, because the device
key may be held elsewhere (a SoftHSM token or a SoftwareSigner).
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path

from hsm import FleetCA, SoftwareSigner, make_csr
from hsm.x509 import (
    build_certificate,
    build_name,
    der_to_pem,
    end_entity_extensions,
    key_identifier,
)
from ledger_node.admin import DEVICE_ENROLLED, build_operator_entry

DAY_MS = 86_400_000
_serials = itertools.count(1 << 40)


class SoftwareFleetPKI:
    """A fleet CA and one operator, valid from a year ago for `days` days."""

    def __init__(self, now_ms: int | None = None, days: int = 3650) -> None:
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        self.not_before, self.not_after = now - 365 * DAY_MS, now + days * DAY_MS
        self.ca = FleetCA()
        self.ca_signer = SoftwareSigner.generate()
        self.ca_cert = self.ca.create_ca_certificate(self.ca_signer, "Software Test Fleet CA",
                                                     self.not_before, self.not_after)
        self.operator = SoftwareSigner.generate()
        self.operator_cert = self.ca.issue(self.ca_signer, self.ca_cert,
                                           make_csr(self.operator, "operator-1"), "operator",
                                           self.not_before, self.not_after, next(_serials))

    def device_cert(self, dev: str, spki_der: bytes) -> bytes:
        return build_certificate(
            self.ca_signer, serial=next(_serials), issuer=build_name("Software Test Fleet CA"),
            subject=build_name(dev), spki_der=spki_der, not_before_ms=self.not_before,
            not_after_ms=self.not_after,
            extensions=end_entity_extensions("device", spki_der,
                                             key_identifier(self.ca_signer.public_key_der())))

    def enrol_entry(self, dev: str, fleet: str, spki_der: bytes) -> bytes:
        return build_operator_entry({"type": DEVICE_ENROLLED, "dev": dev, "fleet": fleet,
                                     "cert": self.device_cert(dev, spki_der),
                                     "t": time.time_ns() // 1_000_000},
                                    self.operator, self.operator_cert)


def write_enrolment_file(path: Path, entries: list[bytes]) -> Path:
    """The file `trustfleet node run --enroll` reads: {"entries": [base64 entries]}."""
    path.write_text(json.dumps({"entries": [base64.b64encode(e).decode() for e in entries]}))
    return path


def software_enrolment(directory: Path, devices: Mapping[str, bytes], fleet: str,
                       pki: SoftwareFleetPKI | None = None) -> tuple[Path, Path]:
    """Write `ca.pem` and `enroll.json` (operator entries for `devices`: id -> SPKI DER) in
    `directory`; returns their paths, for `--fleet-ca` and `--enroll`."""
    pki = pki or SoftwareFleetPKI()
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    ca_path.write_text(der_to_pem(pki.ca_cert))
    enroll = write_enrolment_file(directory / "enroll.json",
                                  [pki.enrol_entry(d, fleet, k) for d, k in devices.items()])
    return ca_path, enroll
