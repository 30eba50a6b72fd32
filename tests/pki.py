"""A fleet PKI made of software keys, for tests of ledger logic (the PKI code is the real one;
only the keys live in memory). Tests of the tokens themselves are in tests/test_ca_softhsm.py."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hsm import FleetCA, SoftwareSigner, make_csr
from ledger_node.admin import (
    DEVICE_ENROLLED,
    DEVICE_REVOKED,
    DEVICE_ROTATED,
    build_operator_entry,
)

T0 = 1_763_000_000_000          # certificates are valid from here ...
T_END = T0 + 3 * 365 * 86_400_000  # ... for three years
_serials = itertools.count(1000)


@dataclass
class SoftPKI:
    ca: FleetCA = field(default_factory=FleetCA)
    ca_signer: SoftwareSigner = field(default_factory=SoftwareSigner.generate)
    operator: SoftwareSigner = field(default_factory=SoftwareSigner.generate)

    def __post_init__(self) -> None:
        self.ca_cert = self.ca.create_ca_certificate(self.ca_signer, "Test Fleet CA", T0, T_END)
        self.operator_cert = self.issue(self.operator, "operator-1", "operator")

    def issue(self, signer: SoftwareSigner, subject: str, role: str, not_before: int = T0,
              not_after: int = T_END) -> bytes:
        return self.ca.issue(self.ca_signer, self.ca_cert, make_csr(signer, subject), role,
                             not_before, not_after, next(_serials))

    def signed(self, body: dict[str, object], signer: SoftwareSigner | None = None,
               cert: bytes | None = None) -> bytes:
        return build_operator_entry({"t": T0, **body}, signer or self.operator,
                                    cert or self.operator_cert)

    def enrol(self, dev: str, signer: SoftwareSigner, fleet: str = "test", **cert_kw: int
              ) -> bytes:
        cert = self.issue(signer, dev, "device", **cert_kw)
        return self.signed({"type": DEVICE_ENROLLED, "dev": dev, "fleet": fleet, "cert": cert})

    def revoke(self, dev: str, reason: str = "stolen") -> bytes:
        return self.signed({"type": DEVICE_REVOKED, "dev": dev, "reason": reason})

    def rotate(self, dev: str, new: SoftwareSigner, replaces: bytes) -> bytes:
        cert = self.issue(new, dev, "device")
        return self.signed({"type": DEVICE_ROTATED, "dev": dev, "cert": cert,
                            "replaces": replaces})
