"""The consortium's two small files: the node set and the peers (read at the edge, checked).

node_set_file (the same on every node; public data):

    {"nodes": [{"node": "node-1", "cert": "<base64 DER node certificate>"}, ...]}

peers_file (per node, mode 0600: it holds API tokens of the other nodes):

    {"peers": [{"node": "node-2", "url": "http://10.0.0.2:8080", "token": "tf_..."}, ...]}

A token here is an auditor token the peer's operator made for this node
(`trustfleet token create NAME --kind auditor`): block sync reads whole blocks.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ledger_node.errors import ConfigError
from trustfleet.topics import check_name

MAX_FILE = 1024 * 1024


@dataclass(frozen=True)
class Peer:
    node: str
    url: str
    token: str | None = None


def _read(path: Path, what: str) -> Any:
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_FILE:
            raise ValueError(f"larger than {MAX_FILE} bytes")
        return json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: JSON nested too deeply") from None


def read_node_set(path: Path) -> list[tuple[str, bytes]]:
    """(node id, certificate DER), sorted by id; raises ConfigError naming what is wrong."""
    doc = _read(path, "node set file")
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not doc["nodes"]:
        raise ConfigError(f"node set file {path}: must be {{\"nodes\": [{{\"node\", "
                          "\"cert\"}, ...]}")
    out: dict[str, bytes] = {}
    for i, item in enumerate(doc["nodes"]):
        try:
            node = check_name(item["node"], "node")
            cert = base64.b64decode(item["cert"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ConfigError(f"node set file {path}: nodes[{i}]: {exc}") from None
        if node in out:
            raise ConfigError(f"node set file {path}: node {node!r} is listed twice")
        out[node] = cert
    return sorted(out.items())


def write_node_set(path: Path, certs: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nodes": [{"node": n, "cert": base64.b64encode(c).decode()}
                                          for n, c in sorted(certs.items())]}, indent=1))
    return path


def read_peers(path: Path) -> list[Peer]:
    doc = _read(path, "peers file")
    if not isinstance(doc, dict) or not isinstance(doc.get("peers"), list):
        raise ConfigError(f"peers file {path}: must be {{\"peers\": [{{\"node\", \"url\", "
                          "\"token\"}, ...]}")
    peers: list[Peer] = []
    for i, item in enumerate(doc["peers"]):
        try:
            node = check_name(item["node"], "node")
            url = str(item["url"]).rstrip("/")
            token = item.get("token")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url {url!r} must be http(s)://host:port")
            if token is not None and (not isinstance(token, str) or not token.isprintable()
                                      or len(token) > 512):
                raise ValueError("token must be a printable string")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"peers file {path}: peers[{i}]: {exc}") from None
        peers.append(Peer(node, url, token))
    return peers


def write_peers(path: Path, peers: list[Peer]) -> Path:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"peers": [{"node": p.node, "url": p.url, "token": p.token}
                             for p in peers]}, fh, indent=1)
    return path
