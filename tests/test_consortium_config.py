"""Bad consortium settings, files and API requests get clear typed errors, never a crash."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from ledger_node.api import create_app
from ledger_node.auth import TokenBook, tokens_path, wall_clock_ms
from ledger_node.config import NodeConfig, load_config
from ledger_node.consortium.files import read_node_set, read_peers
from ledger_node.consortium_api import create_router
from ledger_node.errors import ConfigError
from tests.chainkit import Device
from tests.fleet import serve_api
from tests.test_consortium_quorum import ConsortiumChain

GOOD = {"ordering": "etcd", "etcd_endpoints": "http://127.0.0.1:2379,http://10.0.0.2:2379",
        "node_set_file": Path("ns.json")}


def test_a_good_consortium_config_lists_its_endpoints() -> None:
    cfg = NodeConfig(**GOOD).validate()  # type: ignore[arg-type]
    assert cfg.etcd_endpoint_list == ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
    assert NodeConfig().validate().ordering == "solo"  # the default is unchanged


@pytest.mark.parametrize(("change", "message"), [
    ({"ordering": "raft"}, "ordering must be"),
    ({"etcd_endpoints": ""}, "needs etcd_endpoints"),
    ({"etcd_endpoints": "127.0.0.1:2379"}, "must be http(s)://host:port"),
    ({"etcd_endpoints": "http://h:99999"}, "etcd_endpoints"),
    ({"etcd_endpoints": "http://user:pw@h:2379"}, "must be http(s)://host:port"),
    ({"etcd_endpoints": "http://h:2379/v3"}, "must be http(s)://host:port"),
    ({"etcd_prefix": "trustfleet"}, "etcd_prefix must start with /"),
    ({"etcd_max_batch_bytes": 10}, "etcd_max_batch_bytes"),
    ({"etcd_retain_revisions": 5}, "etcd_retain_revisions"),
    ({"max_clock_skew_ms": 0}, "max_clock_skew_ms"),
    ({"node_set_file": None}, "needs node_set_file"),
])
def test_bad_consortium_settings_are_config_errors(change: dict[str, object],
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NodeConfig(**{**GOOD, **change}).validate()  # type: ignore[arg-type]


def test_consortium_settings_load_from_the_node_table(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nordering = "etcd"\netcd_endpoints = "http://127.0.0.1:1"\n'
                    'node_set_file = "ns.json"\npeers_file = "peers.json"\n'
                    "max_clock_skew_ms = 5000\n")
    cfg = load_config(path)
    assert (cfg.ordering, cfg.peers_file, cfg.max_clock_skew_ms) == \
        ("etcd", Path("peers.json"), 5000)
    path.write_text('[node]\nordering = "etcd"\netcd_endpoints = 7\n')
    with pytest.raises(ConfigError, match="etcd_endpoints must be str"):
        load_config(path)


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"nodes": []}', '{"nodes": [{"node": "a"}]}',
    '{"nodes": [{"node": "a/b", "cert": "AA=="}]}', '{"nodes": [{"node": "a", "cert": "!"}]}',
    '{"nodes": [{"node": "a", "cert": "AA=="}, {"node": "a", "cert": "AA=="}]}',
    " " * (1024 * 1024 + 1),
])
def test_a_bad_node_set_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "ns.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="node set file"):
        read_node_set(path)
    with pytest.raises(ConfigError, match=r"missing\.json"):
        read_node_set(tmp_path / "missing.json")


@pytest.mark.parametrize("peer", [
    {"node": "n2"}, {"node": "n2", "url": "ftp://h"}, {"node": "n 2", "url": "http://h:1"},
    {"node": "n2", "url": "http://h:1", "token": 5},
    {"node": "n2", "url": "http://h:1", "token": "a\nb"},
])
def test_a_bad_peers_file_is_a_config_error(tmp_path: Path, peer: dict[str, object]) -> None:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"peers": [peer]}))
    with pytest.raises(ConfigError, match=r"peers\[0\]"):
        read_peers(path)


def test_consortium_routes_refuse_bad_requests(tmp_path: Path) -> None:
    c = ConsortiumChain(tmp_path / "ledger.sqlite", [Device("truck-1")])
    c.start()
    token = TokenBook(tokens_path(c.store.path)).create("a", "auditor", None,
                                                         now_ms=wall_clock_ms())
    app = create_app(c.store.path)
    app.include_router(create_router(c.store.path))
    auth = {"Authorization": f"Bearer {token}"}
    with serve_api(app) as url:
        assert httpx.get(f"{url}/v1/consortium/qc/0").json()["final"] is True
        assert httpx.get(f"{url}/v1/consortium/qc/5").status_code == 404
        assert httpx.get(f"{url}/v1/consortium/qc/-1").status_code == 422
        assert httpx.get(f"{url}/v1/consortium/blocks").status_code == 401
        for query in ("limit=0", "limit=100000", "from=-3", "from=x", "bogus=1"):
            got = httpx.get(f"{url}/v1/consortium/blocks?{query}", headers=auth)
            assert got.status_code == 422, (query, got.text)
        page = httpx.get(f"{url}/v1/consortium/blocks?from=0&limit=5", headers=auth).json()
        assert page["tip"] == 0 and [b["height"] for b in page["blocks"]] == [0]
        assert base64.b64decode(page["blocks"][0]["header"])
        assert httpx.get(f"{url}/v1/consortium/evidence", headers=auth).json() == []
        status = httpx.get(f"{url}/v1/consortium/status").json()
        assert status["quorum"] == 3 and status["height"] == 0
