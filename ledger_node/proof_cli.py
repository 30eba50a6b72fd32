"""`trustfleet proof`, `verify-bundle` and `verify-consistency` (docs/proof-bundle.md).

    trustfleet proof --data DIR --device ID [--from T] [--to T] [--height H] [-o FILE]
    trustfleet verify-bundle BUNDLE.json [--ca FILE] [--node-key FILE] [--device ID]
    trustfleet verify-consistency --old HEAD.json (--new DOC.json | --node URL | both)
                                  [--node-key FILE] [--save FILE] [--token T]

Times are ms since the Unix epoch or ISO 8601 with a zone (2025-11-21T08:00:00Z). Node keys
are SubjectPublicKeyInfo, DER or PEM; the fleet CA (--ca) an X.509 certificate, DER or PEM.
Exit codes: 0 verified / written; 1 the check failed (each failure printed as
`FAILED [reason] where: detail`) or there is nothing to prove; 2 a file or store could not be
read, or the node could not be reached. The consistency endpoint is public; an API token
(--token, else the environment variable TRUSTFLEET_TOKEN) is sent when there is one, so a
partner's or auditor's check is on the node's audit log like its other requests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ledger_node.errors import LedgerError, StoreError, TamperError

_TIMEOUT_S = 30
TOKEN_ENV = "TRUSTFLEET_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    proof = sub.add_parser(
        "proof", help="write a proof bundle of a device's readings (JSON, to stdout)",
        description="Build a self-contained proof bundle from a node's store: the device's "
                    "readings with device time in [--from, --to), the genesis entry (fleet CA, "
                    "node key) and the operator entries that enrolled and rotated the device, "
                    "each with its inclusion proof, and the signed head. Check it with "
                    "`trustfleet verify-bundle`. Safe while the node runs (read-only).")
    proof.add_argument("--data", type=Path, required=True,
                       help="node data folder (holding ledger.sqlite), or the sqlite file")
    proof.add_argument("--device", required=True, help="device id")
    proof.add_argument("--from", dest="t_from", type=_time, help="device time, inclusive")
    proof.add_argument("--to", dest="t_to", type=_time, help="device time, exclusive")
    proof.add_argument("--height", type=int, help="prove against this block (default: newest)")
    proof.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    proof.set_defaults(func=_proof)

    vb = sub.add_parser(
        "verify-bundle", help="check a proof bundle offline, with no access to any node",
        description="Check every signature, certificate and inclusion proof in a proof "
                    "bundle. Pin the fleet CA (--ca) or the node key (--node-key) you "
                    "obtained out of band: without either the result only shows the bundle "
                    "is self-consistent. Exit 0 with a summary, 1 listing every failure, 2 if "
                    "a file cannot be read.")
    vb.add_argument("bundle", type=Path, help="the bundle JSON file ('-' for stdin)")
    vb.add_argument("--ca", type=Path, help="fleet CA certificate (X.509, DER or PEM) you "
                    "trust; the bundle's CA must be exactly this one")
    vb.add_argument("--node-key", type=Path, help="node public key (SPKI DER or PEM) you "
                    "trust; without it the key inside the bundle is used")
    vb.add_argument("--device", help="fail unless the bundle is about this device")
    vb.set_defaults(func=_verify_bundle)

    vc = sub.add_parser(
        "verify-consistency", help="check that the log only grew since a head you saved",
        description="Check an RFC 9162 consistency proof between a signed head you saved "
                    "(--old: GET /v1/chain/head output, or a consistency document saved "
                    "earlier) and a newer one: a consistency document (--new, from GET "
                    "/v1/chain/consistency), fetched from a node (--node), or a newer saved "
                    "head (--new) whose proof is fetched from --node.")
    vc.add_argument("--old", type=Path, required=True, help="the head you saved earlier")
    vc.add_argument("--new", type=Path, help="consistency document, or a newer head")
    vc.add_argument("--node", help="node API URL to fetch the proof from (http://host:8080)")
    vc.add_argument("--node-key", type=Path, help="node public key (SPKI DER or PEM) you trust")
    vc.add_argument("--save", type=Path, help="write the verified consistency document here "
                    "(use it as --old next time)")
    vc.add_argument("--token", help=f"API token to send to --node (optional; default: "
                    f"${TOKEN_ENV})")
    vc.set_defaults(func=_verify_consistency)


def _time(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither ms since the epoch nor ISO 8601"
                                         ) from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +01:00)")
    return int(t.timestamp() * 1000)


def _db(data: Path) -> Path:
    return data if data.is_file() else data / "ledger.sqlite"


def _read(path: Path) -> bytes:
    return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()


def _node_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        return key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _ca_cert(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from cryptography import x509

    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    x509.load_der_x509_certificate(data)  # ValueError now rather than a puzzling failure later
    return data


def _proof(args: argparse.Namespace) -> int:
    from ledger_node.bundle import bundle_for_device
    from ledger_node.store import open_reader

    try:
        conn = open_reader(_db(args.data))
    except StoreError as exc:
        print(f"trustfleet proof: {exc}", file=sys.stderr)
        return 2
    try:
        bundle = bundle_for_device(conn, args.device, args.t_from, args.t_to,
                                   height=args.height)
    except TamperError as exc:
        print(f"trustfleet proof: the store is damaged, refusing to build a bundle: {exc}",
              file=sys.stderr)
        return 1
    except LedgerError as exc:
        print(f"trustfleet proof: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    text = json.dumps(bundle, indent=1) + "\n"
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    print(f"trustfleet proof: {_readings(bundle)} reading(s) of {args.device!r} and "
          f"{len(bundle['entries'])} entries in all, against block {_height(bundle)}",
          file=sys.stderr)
    return 0


def _height(bundle: dict[str, Any]) -> int:
    from ledger_node.heads import parse_head

    return parse_head(bundle["head"], "head", strict=True).header.height


def _readings(bundle: dict[str, Any]) -> int:
    from ledger_node.entries import KIND_READING, admin_kind

    return sum(admin_kind(base64.b64decode(e["data"])) == KIND_READING
               for e in bundle["entries"])


def _verify_bundle(args: argparse.Namespace) -> int:
    from hsm.certcheck import load_ca_anchor
    from hsm.errors import CaCertificateInvalid
    from ledger_node.bundle_verify import describe, verify_bundle

    try:
        raw = _read(args.bundle)
        pinned = _node_key(args.node_key)
        ca = _ca_cert(args.ca)
        if ca is not None:
            load_ca_anchor(ca)
    except (OSError, ValueError, CaCertificateInvalid) as exc:
        print(f"trustfleet verify-bundle: cannot read input: {exc}", file=sys.stderr)
        return 2
    report = verify_bundle(raw, pinned_node_key=pinned, pinned_ca=ca,
                           expect_device=args.device)
    print(describe(report))
    return 0 if report.ok else 1


def _verify_consistency(args: argparse.Namespace) -> int:
    from ledger_node.heads import (
        CONSISTENCY_FORMAT,
        CheckFailed,
        check_consistency,
        load_json,
        parse_consistency,
        parse_head,
        read_head_file,
    )

    if args.new is None and args.node is None:
        print("trustfleet verify-consistency: give --new, --node, or both", file=sys.stderr)
        return 2
    try:
        old_raw = args.old.read_bytes()
        new_raw = args.new.read_bytes() if args.new is not None else None
        pinned = _node_key(args.node_key)
    except (OSError, ValueError) as exc:
        print(f"trustfleet verify-consistency: cannot read input: {exc}", file=sys.stderr)
        return 2
    try:
        old = read_head_file(old_raw, str(args.old))
        saved_new, doc_obj = None, None
        if new_raw is not None:
            obj = load_json(new_raw, str(args.new))
            if isinstance(obj, dict) and obj.get("format") == CONSISTENCY_FORMAT:
                doc_obj = obj  # the proof is in the file: no node needed
            else:
                saved_new = parse_head(obj, str(args.new), strict=False)
                if args.node is None:
                    raise CheckFailed("no_proof", str(args.new), "a head, not a consistency "
                                      "document: give --node to fetch the proof, or save the "
                                      "output of GET /v1/chain/consistency")
        if doc_obj is None:
            to = saved_new.header.height if saved_new is not None else None
            doc_obj = _fetch_consistency(args.node, old.header.height, to,
                                         args.token or os.environ.get(TOKEN_ENV) or None)
        doc = parse_consistency(doc_obj)
        summary = check_consistency(doc, saved_old=old, saved_new=saved_new, pinned=pinned)
    except CheckFailed as exc:
        print(f"FAILED [{exc.reason}] {exc.where}: {exc.detail}")
        return 1
    except _Unreachable as exc:
        print(f"trustfleet verify-consistency: {exc}", file=sys.stderr)
        return 2
    if args.save is not None:
        args.save.write_text(json.dumps(doc_obj, indent=1) + "\n")
    print(f"OK: {summary}")
    return 0


class _Unreachable(Exception):
    """The node could not be asked (network, not JSON): not a verdict on the log."""


def _fetch_consistency(node: str, from_height: int, to_height: int | None,
                       token: str | None = None) -> Any:
    from ledger_node.heads import CheckFailed, load_json

    query = {"from": from_height} | ({} if to_height is None else {"to": to_height})
    url = f"{node.rstrip('/')}/v1/chain/consistency?{urllib.parse.urlencode(query)}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=_TIMEOUT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        if exc.code in (404, 422):  # e.g. the node no longer has the block you saved
            raise CheckFailed("node_refused", url, f"HTTP {exc.code}: {detail}") from None
        raise _Unreachable(f"{url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Unreachable(f"cannot reach {url}: {exc}") from None
    return load_json(raw, url)
