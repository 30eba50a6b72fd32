"""Child-process half of hsm.certstore: the fleet CA's PKCS#11 work, one rig per process.

A process works with one SoftHSM config (see hsm._module), so hsm.certstore runs every
signature by a rig's tokens here, in a fresh interpreter whose environment carries that rig's
SOFTHSM2_CONF. Keys stay in their tokens: a device token signs its CSR, the fleet-ca token
signs the certificate; only public data crosses the pipe.

    python -m hsm._cachild ca-cert|issue  < request.json  > reply.json

Requests (JSON on stdin; PINs are read from the rig's pins.json, never passed):
    ca-cert  {dir, module, name, organization, not_before_ms, not_after_ms, serial}
             -> {"cert": hex DER}
    issue    {dir, module, ca_cert (hex DER), organization,
              jobs: [{label, subject_id, role, not_before_ms, not_after_ms, serial}]}
             -> {"certs": {label: hex DER}}
    issue-csr {dir, module, ca_cert (hex DER), organization,
              jobs: [{name, csr (hex DER), subject_id, role, not_before_ms, not_after_ms,
                      serial, dns_names, ip_addresses}]}
             -> {"certs": {name: hex DER}}    (CSRs made outside the rig: TLS keys in files)
On failure: {"error": HsmError subclass name, "message": ..., "reason": ... (if any)}, exit 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pkcs11.exceptions import PKCS11Error

from hsm.ca import CA_TOKEN_LABEL, FleetCA
from hsm.errors import HsmError, translate
from hsm.rig import SoftHsmRig, open_signer
from hsm.x509 import make_csr


def ca_cert(request: dict[str, Any]) -> dict[str, Any]:
    """Self-sign the fleet CA certificate with the fleet-ca token's key."""
    rig = SoftHsmRig(request["dir"], request["module"])
    with open_signer(rig, CA_TOKEN_LABEL) as signer:
        der = FleetCA(request["organization"]).create_ca_certificate(
            signer,
            request["name"],
            int(request["not_before_ms"]),
            int(request["not_after_ms"]),
            serial=int(request["serial"]),
        )
    return {"cert": der.hex()}


def issue(request: dict[str, Any]) -> dict[str, Any]:
    """For each job: the token signs a CSR, then the fleet-ca token issues its certificate."""
    rig = SoftHsmRig(request["dir"], request["module"])
    ca = FleetCA(request["organization"])
    ca_cert_der = bytes.fromhex(request["ca_cert"])
    csrs = {}
    for job in request["jobs"]:
        with open_signer(rig, job["label"]) as signer:
            csrs[job["label"]] = (make_csr(signer, job["subject_id"]), signer.public_key_der())
    certs = {}
    with open_signer(rig, CA_TOKEN_LABEL) as ca_signer:
        for job in request["jobs"]:
            csr_der, spki = csrs[job["label"]]
            cert = ca.issue(
                ca_signer,
                ca_cert_der,
                csr_der,
                job["role"],
                int(job["not_before_ms"]),
                int(job["not_after_ms"]),
                int(job["serial"]),
                expected_id=job["subject_id"],
                expected_spki=spki,
            )
            certs[job["label"]] = cert.hex()
    return {"certs": certs}


def issue_csr(request: dict[str, Any]) -> dict[str, Any]:
    """Certificates for CSRs signed elsewhere (hsm.tlsfiles: keys in files); the fleet-ca
    token signs each one after FleetCA.issue has checked the CSR's own signature and CN."""
    rig = SoftHsmRig(request["dir"], request["module"])
    ca = FleetCA(request["organization"])
    ca_cert_der = bytes.fromhex(request["ca_cert"])
    certs = {}
    with open_signer(rig, CA_TOKEN_LABEL) as ca_signer:
        for job in request["jobs"]:
            cert = ca.issue(
                ca_signer,
                ca_cert_der,
                bytes.fromhex(job["csr"]),
                job["role"],
                int(job["not_before_ms"]),
                int(job["not_after_ms"]),
                int(job["serial"]),
                expected_id=job["subject_id"],
                dns_names=list(job.get("dns_names", [])),
                ip_addresses=list(job.get("ip_addresses", [])),
            )
            certs[job["name"]] = cert.hex()
    return {"certs": certs}


COMMANDS = {"ca-cert": ca_cert, "issue": issue, "issue-csr": issue_csr}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(
            f"usage: python -m hsm._cachild {{{'|'.join(COMMANDS)}}} < request.json",
            file=sys.stderr,
        )
        return 2
    try:
        reply = COMMANDS[argv[0]](json.load(sys.stdin))
    except (HsmError, PKCS11Error, ValueError) as exc:
        if isinstance(exc, ValueError):
            reply = {"error": "ValueError", "message": str(exc)}
        else:
            err = translate(exc)
            reply = {"error": type(err).__name__, "message": str(err)}
            reason = getattr(err, "reason", None)
            if reason is not None:
                reply["reason"] = reason
                reply["message"] = str(err).removeprefix(f"{reason}: ")
        json.dump(reply, sys.stdout)
        return 1
    json.dump(reply, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
