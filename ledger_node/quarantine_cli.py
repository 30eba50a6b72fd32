"""`trustfleet quarantine list|show`: what a node rejected, from its store or its API.

    trustfleet quarantine list (--data DIR | --node URL [--token T]) [--reason R] [--device D]
                               [--since T] [--until T] [--limit N] [--cursor C] [--json]
    trustfleet quarantine show ID (--data DIR | --node URL [--token T]) [--json]

Times are ms since the Unix epoch or ISO 8601 with a zone. `list` prints a table of stored
items (newest first), the totals, and the counters of items summarised rather than stored.
`show` prints every field, the raw bytes as a hex dump and base64, and CBOR diagnostic
notation when they are CBOR. Exit 0; 1 no such item; 2 store unreadable, node unreachable
or refusing the token. With --node, the API token (operator or auditor) is --token, else the
environment variable TRUSTFLEET_TOKEN.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sqlite3
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ledger_node.errors import StoreError
from ledger_node.quarantine_query import (
    QuarantineFilter,
    decode_cursor,
    get_item,
    iso,
    list_page,
    parse_time,
)
from ledger_node.quarantine_view import hexdump

_TIMEOUT_S = 30
TOKEN_ENV = "TRUSTFLEET_TOKEN"


class _Unavailable(Exception):
    """The store or the node could not be read."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = sub.add_parser("quarantine", help="list and show rejected input (DESIGN §6)")
    q_sub = q.add_subparsers(dest="quarantine_command", required=True)
    ls = q_sub.add_parser("list", help="stored items, newest first, and the summary counters",
                          description="Rejected input a node stored, newest first, with the "
                          "counters of input summarised rather than stored.")
    _source(ls)
    ls.add_argument("--reason", help="only this reason code (bad_signature, ...)")
    ls.add_argument("--device", help="only this device id")
    ls.add_argument("--since", type=_time, help="received at or after (ms or ISO 8601)")
    ls.add_argument("--until", type=_time, help="received before (ms or ISO 8601)")
    ls.add_argument("--limit", type=int, default=50, choices=range(1, 1001), metavar="N",
                    help="items per page, 1-1000 (50)")
    ls.add_argument("--cursor", help="continue after the page that printed it")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    ls.set_defaults(func=_list)
    show = q_sub.add_parser("show", help="one item: fields, raw bytes, decoded CBOR",
                            description="Every field of one quarantined item, its raw bytes "
                            "(hex dump and base64) and a CBOR decoding when they are CBOR.")
    show.add_argument("id", type=int, help="item id (from `quarantine list`)")
    _source(show)
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    show.set_defaults(func=_show)


def _source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--data", type=Path, help="node data folder (holding ledger.sqlite), or "
                   "the sqlite file (read-only; safe while the node runs)")
    g.add_argument("--node", help="node API URL (http://127.0.0.1:8080)")
    p.add_argument("--token", help=f"API token for --node (operator or auditor; default: "
                   f"${TOKEN_ENV})")


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _from_store(data: Path, what: str, **kw: Any) -> Any:
    from ledger_node.store import open_reader

    db = data if data.is_file() else data / "ledger.sqlite"
    try:
        conn = open_reader(db)
    except StoreError as exc:
        raise _Unavailable(str(exc)) from None
    try:
        if what == "list":
            return list_page(conn, kw["filter"], limit=kw["limit"], before=kw["before"])
        return get_item(conn, kw["item_id"])
    except sqlite3.Error as exc:
        raise _Unavailable(f"{db}: {exc}") from None
    finally:
        conn.close()


def _from_node(url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        detail = exc.read().decode(errors="replace")[:300]
        hint = (f" (give --token or set {TOKEN_ENV}: an operator or auditor token)"
                if exc.code in (401, 403) else "")
        raise _Unavailable(f"{url}: HTTP {exc.code}: {detail}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _Unavailable(f"cannot read {url}: {exc}") from None


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN_ENV) or None


def _list(args: argparse.Namespace) -> int:
    f = QuarantineFilter(args.reason, args.device, args.since, args.until)
    try:
        before = decode_cursor(args.cursor) if args.cursor else None
        if args.node:
            query = {k: v for k, v in (("reason", f.reason), ("device", f.device),
                                       ("since", f.since), ("until", f.until),
                                       ("limit", args.limit), ("cursor", args.cursor))
                     if v is not None}
            page = _from_node(f"{args.node.rstrip('/')}/v1/quarantine?"
                              f"{urllib.parse.urlencode(query)}", _token(args))
        else:
            page = _from_store(args.data, "list", filter=f, limit=args.limit, before=before)
    except ValueError as exc:
        print(f"trustfleet quarantine: {exc}", file=sys.stderr)
        return 2
    except _Unavailable as exc:
        print(f"trustfleet quarantine: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(page, indent=1))
        return 0
    print(format_page(page))
    if page.get("next_cursor"):
        print(f"more: add --cursor {page['next_cursor']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        if args.node:
            item = _from_node(f"{args.node.rstrip('/')}/v1/quarantine/{args.id}", _token(args))
        else:
            item = _from_store(args.data, "show", item_id=args.id)
    except _Unavailable as exc:
        print(f"trustfleet quarantine: {exc}", file=sys.stderr)
        return 2
    if item is None:
        print(f"trustfleet quarantine: no item {args.id} (never stored, or evicted into the "
              "summary: see `quarantine list`)", file=sys.stderr)
        return 1
    print(json.dumps(item, indent=1) if args.json else format_item(item))
    return 0


def _cut(text: str | None, width: int) -> str:
    text = (text or "-").replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def format_page(page: dict[str, Any]) -> str:
    items = page["items"]
    lines = []
    if items:
        lines.append(f"{'ID':>8}  {'RECEIVED (UTC)':<24}  {'REASON':<22}  {'DEVICE':<16}  "
                     f"{'SIZE':>8}  DETAIL")
        lines += [f"{i['id']:>8}  {_cut(iso(i['received']), 24):<24}  {_cut(i['reason'], 22):<22}"
                  f"  {_cut(i['device'], 16):<16}  {i['size']:>8}  {_cut(i['detail'], 60)}"
                  for i in items]
    else:
        lines.append("no stored items match")
    stored = page["stored"]
    caps = (f" (caps: {stored['max_rows']:,} rows, {_mib(stored['max_bytes'])})"
            if "max_rows" in stored else "")
    lines.append(f"stored: {stored['rows']:,} items, {_mib(stored['bytes'])} of raw bytes{caps}"
                 f"; summarised, not stored: {page['summarised']:,}")
    if page["counts"]:
        lines.append("stored by reason: " + ", ".join(
            f"{r} {n:,}" for r, n in sorted(page["counts"].items())))
    if page["summary"]:
        lines.append("summarised rather than stored:")
        lines.append(f"  {'REASON':<22}  {'DEVICE':<16}  {'COUNT':>9}  {'BYTES':>11}  "
                     f"{'FIRST SEEN (UTC)':<24}  LAST SEEN (UTC)")
        lines += [f"  {_cut(s['reason'], 22):<22}  {_cut(s['device'], 16):<16}  "
                  f"{s['count']:>9,}  {s['bytes']:>11,}  {iso(s['first_seen']) or '-':<24}  "
                  f"{iso(s['last_seen'])}" for s in page["summary"]]
    return "\n".join(lines)


def format_item(item: dict[str, Any]) -> str:
    raw = base64.b64decode(item["raw"])
    size = f"{item['size']} bytes"
    if item.get("truncated"):
        size += f" (only the first {len(raw)} are stored)"
    lines = [f"id:        {item['id']}",
             f"received:  {item['received']} ({iso(item['received'])})",
             f"reason:    {item['reason']}",
             f"detail:    {item['detail']}",
             f"topic:     {item['topic']}",
             f"device:    {item['device'] or '-'}",
             f"size:      {size}",
             f"sha256:    {item['sha256']} (of all {item['size']} bytes)",
             "raw (hex dump):", hexdump(raw) or "(empty)",
             "raw (base64):", item["raw"] or "(empty)"]
    if item.get("cbor") is not None:
        lines += ["decoded (CBOR diagnostic notation, RFC 8949 §8):", item["cbor"]]
    else:
        lines.append(f"decoded: not one CBOR item ({item.get('cbor_error')})")
    return "\n".join(lines)
