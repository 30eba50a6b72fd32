"""`trustfleet hsm ...`: create and inspect SoftHSM2 test rigs, the fleet CA and certificates.

    init-rig, list     tokens with P-256 keys (hsm.rig)
    ca-init            the fleet-ca token and RIG/ca.pem (hsm.certstore)
    issue              a certificate for a token's key, issued by the fleet-ca token
    show-cert          print a certificate; with --ca, check it (hsm.certcheck)

The umbrella CLI calls `register(subparsers)`. This is an entry point: it reads
TRUSTFLEET_PKCS11_MODULE (the PKCS#11 module path; default the SoftHSM2 one).
Run standalone with `python -m hsm.cli hsm list --dir DIR`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hsm.certcheck import check_certificate, describe_certificate
from hsm.certstore import (
    DEFAULT_CA_DAYS,
    DEFAULT_CA_NAME,
    DEFAULT_CERT_DAYS,
    ca_certificate_path,
    ensure_ca,
    issue_for_token,
)
from hsm.errors import CertificateRejected, HsmError
from hsm.rig import MODULE_ENV, SoftHsmRig, TokenInfo, module_path_from_env
from hsm.x509 import ROLES, der_to_pem, pem_or_der_to_der


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `hsm` command (subcommands `init-rig` and `list`) to an argparse CLI."""
    hsm = subparsers.add_parser(
        "hsm",
        help="manage SoftHSM2 test rigs (tokens with P-256 signing keys)",
        description=(
            "Manage SoftHSM2 test rigs: a folder with a SoftHSM config, its tokens and "
            f"their PINs (pins.json, mode 0600). The PKCS#11 module is taken from {MODULE_ENV} "
            "(default /usr/lib/softhsm/libsofthsm2.so)."
        ),
    )
    commands = hsm.add_subparsers(dest="hsm_command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init-rig",
        help="create a rig with one token (and P-256 key) per device; idempotent",
        description=(
            "Create (or complete) a rig in DIR with tokens PREFIX1..PREFIXN and, with --node, "
            "a token for a ledger node. Each token gets a P-256 signing key generated inside "
            "it. Running it again creates only what is missing. Prints each label and kid."
        ),
    )
    init.add_argument("--devices", type=int, required=True, metavar="N", help="device count")
    init.add_argument("--dir", type=Path, required=True, metavar="DIR", help="rig folder")
    init.add_argument(
        "--prefix", default="truck-", help="device token label prefix (default: %(default)s)"
    )
    init.add_argument("--node", metavar="LABEL", help="also create a node token, e.g. node-1")
    init.set_defaults(func=cmd_init_rig)

    show = commands.add_parser(
        "list",
        help="list a rig's tokens: label, serial, key label, kid",
        description="List every initialised token in the rig at DIR with its signing key's kid.",
    )
    show.add_argument("--dir", type=Path, required=True, metavar="DIR", help="rig folder")
    show.set_defaults(func=cmd_list)
    _register_ca(commands)


def _register_ca(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = commands.add_parser(
        "ca-init",
        help="create the fleet CA (token fleet-ca, RIG/ca.pem); idempotent",
        description=(
            "Create the token fleet-ca with a P-256 key generated inside it (sensitive, never "
            "extractable) and a self-signed CA certificate RIG/ca.pem. Running it again keeps a "
            "valid certificate as it is; one ending within 30 days is renewed with the same key."
        ),
    )
    ca.add_argument("--dir", type=Path, required=True, metavar="RIG", help="rig folder")
    ca.add_argument("--name", default=DEFAULT_CA_NAME, help="CA common name (%(default)s)")
    ca.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help="validity (%(default)s)")
    ca.set_defaults(func=cmd_ca_init)

    issue = commands.add_parser(
        "issue",
        help="issue a certificate for a token's key (CSR signed in the token)",
        description=(
            "The token LABEL signs a CSR for its key; the fleet-ca token issues the certificate "
            "(run ca-init first). Writes PEM, or DER if FILE ends in .der."
        ),
    )
    issue.add_argument("--dir", type=Path, required=True, metavar="RIG", help="rig folder")
    issue.add_argument("--token", required=True, metavar="LABEL", help="token label")
    issue.add_argument("--role", required=True, choices=ROLES, help="certificate role")
    issue.add_argument("--id", metavar="ID", help="subject id (default: the token label)")
    issue.add_argument(
        "--days", type=int, default=DEFAULT_CERT_DAYS, help="validity (%(default)s)"
    )
    issue.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    issue.set_defaults(func=cmd_issue)

    show = commands.add_parser(
        "show-cert",
        help="print a certificate (PEM or DER); with --ca, check it",
        description=(
            "Print a certificate's subject, role, validity, kid and fingerprint. With --ca, also "
            "check it against that fleet CA certificate as a ledger node would (exit 1 and the "
            "reason if it is rejected)."
        ),
    )
    show.add_argument("file", type=Path, metavar="FILE", help="certificate (PEM or DER)")
    show.add_argument("--ca", type=Path, metavar="CA", help="fleet CA certificate to check with")
    show.add_argument("--at-ms", type=int, metavar="MS", help="check time (default: now)")
    show.set_defaults(func=cmd_show_cert)


def cmd_ca_init(args: argparse.Namespace) -> int:
    try:
        rig = SoftHsmRig(args.dir, module_path_from_env())
        der, created = ensure_ca(rig, name=args.name, days=args.days)
        info = describe_certificate(der)
    except (HsmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = ca_certificate_path(rig)
    state = "created" if created else "kept (still valid)"
    print(f"{path}\t{info['subject']}\tkid {info['kid']}")
    print(f"fleet CA certificate {state}; valid until {info['not_after']}", file=sys.stderr)
    if not created and args.name != DEFAULT_CA_NAME and f"CN={args.name}," not in info["subject"]:
        print("note: --name applies only when a certificate is made", file=sys.stderr)
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    try:
        rig = SoftHsmRig(args.dir, module_path_from_env())
        der = issue_for_token(rig, args.token, args.role, subject_id=args.id, days=args.days)
        data = der if args.out.suffix == ".der" else der_to_pem(der).encode()
        args.out.write_bytes(data)
        info = describe_certificate(der)
    except (HsmError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}\t{info['subject_id']}\t{args.role}\tkid {info['kid']}")
    return 0


def cmd_show_cert(args: argparse.Namespace) -> int:
    try:
        der = pem_or_der_to_der(args.file.read_bytes())
        info = describe_certificate(der)
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:14} {shown}")
        if args.ca is None:
            return 0
        ca_der = pem_or_der_to_der(args.ca.read_bytes())
        roles = info["roles"]
        at_ms = args.at_ms if args.at_ms is not None else int(time.time() * 1000)
        check_certificate(der, ca_der, expected_id=None,
                          expected_role=roles[0] if len(roles) == 1 else "device", at_ms=at_ms)
    except CertificateRejected as exc:
        print(f"REJECTED {exc}", file=sys.stderr)
        return 1
    except (HsmError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'check':14} OK (chains to {args.ca})")
    return 0


def cmd_init_rig(args: argparse.Namespace) -> int:
    if args.devices < 0:
        print("error: --devices must be 0 or more", file=sys.stderr)
        return 2
    labels = [f"{args.prefix}{n}" for n in range(1, args.devices + 1)]
    if args.node:
        labels.append(args.node)
    try:
        rig = SoftHsmRig(args.dir, module_path_from_env())
        for info in rig.ensure_tokens(labels):
            print(f"{info.label}\t{info.kid}")
    except (HsmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"rig ready in {rig.directory}; SOFTHSM2_CONF={rig.conf_path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if not (args.dir / "softhsm2.conf").is_file():
        print(f"error: {args.dir} is not a rig (no softhsm2.conf); run init-rig", file=sys.stderr)
        return 1
    try:
        tokens = SoftHsmRig(args.dir, module_path_from_env()).tokens()
    except HsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_table(tokens))
    return 0


def _table(tokens: list[TokenInfo]) -> str:
    rows = [("LABEL", "SERIAL", "KEY", "KID")]
    rows += [(t.label, t.serial, t.key_label if t.has_key else "-", t.kid or "-") for t in tokens]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsm.cli")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
