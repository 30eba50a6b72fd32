"""A real etcd cluster on loopback (trustfleet.etcd_cluster) and our client over its JSON
gateway (ledger_node.consortium.etcd): ordering, watches, compaction, the storage quota,
failover when a member dies, and typed errors for everything that goes wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_node.consortium.errors import EtcdCompacted, EtcdError, EtcdNoSpace
from ledger_node.consortium.etcd import EtcdClient, prefix_end
from trustfleet.etcd_cluster import EtcdCluster, EtcdClusterError, start_etcd_cluster
from trustfleet.procs import free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    c = start_etcd_cluster(tmp_path_factory.mktemp("etcd"), 3)
    yield c
    c.stop()


@pytest.fixture
def client(cluster: EtcdCluster) -> Iterator[EtcdClient]:
    c = EtcdClient(cluster.endpoints, timeout=5)
    yield c
    c.close()


def test_three_members_on_loopback_elect_a_leader(cluster: EtcdCluster) -> None:
    assert len(cluster.members) == 3
    assert all(url.startswith("http://127.0.0.1:") for url in cluster.endpoints)
    assert cluster.leader() in cluster.members
    ports = json.loads((cluster.directory / "cluster.json").read_text())
    assert [m["client"] for m in ports] == [m.client_port for m in cluster.members]


def test_a_watch_hands_out_every_put_in_revision_order(client: EtcdClient) -> None:
    revisions = [client.put(b"/t/order/log", f"batch {i}".encode()) for i in range(20)]
    assert revisions == sorted(revisions) and len(set(revisions)) == 20
    client.put(b"/t/order/sigs/node-1", b"other key, same prefix")
    client.put(b"/t/orders", b"outside the prefix")
    seen = [(e.key, e.value, e.revision) for w in client.watch(b"/t/order/", revisions[0],
                                                               idle_s=1) for e in w.events]
    assert [v for k, v, _ in seen if k == b"/t/order/log"] == \
        [f"batch {i}".encode() for i in range(20)]
    assert [r for _, _, r in seen][:20] == revisions
    assert seen[-1][0] == b"/t/order/sigs/node-1"


def test_compaction_makes_old_revisions_unwatchable(client: EtcdClient) -> None:
    first = client.put(b"/t/compact/log", b"a")
    last = client.put(b"/t/compact/log", b"b")
    assert client.compact(last) is True
    assert client.compact(first) is False  # already compacted past it
    assert client.compact_revision() >= last
    with pytest.raises(EtcdCompacted) as exc:
        list(client.watch(b"/t/compact/", first, idle_s=1))
    assert exc.value.compact_revision >= last
    got = [e.value for w in client.watch(b"/t/compact/", last, idle_s=1) for e in w.events]
    assert got == [b"b"]


def test_ranges_and_deletes(client: EtcdClient) -> None:
    for n in ("a", "b", "c"):
        client.put(b"/t/range/" + n.encode(), n.encode())
    _, kvs = client.get_range(b"/t/range/", prefix_end(b"/t/range/"))
    assert [kv.value for kv in kvs] == [b"a", b"b", b"c"]
    assert client.delete_range(b"/t/range/", prefix_end(b"/t/range/")) == 3
    assert client.get_range(b"/t/range/", prefix_end(b"/t/range/"))[1] == []
    assert prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\x00"


def test_writes_go_on_when_the_leader_is_killed(cluster: EtcdCluster,
                                                client: EtcdClient) -> None:
    before = client.put(b"/t/failover/log", b"before")
    leader = cluster.leader()
    assert leader is not None
    cluster.kill(leader)
    try:
        after = client.put(b"/t/failover/log", b"after")  # the others elect a new leader
        assert after > before
        assert cluster.leader() not in (None, leader)
    finally:
        cluster.start_member(leader)
        cluster.wait_healthy()
    got = [e.value for w in client.watch(b"/t/failover/", before, idle_s=1) for e in w.events]
    assert got == [b"before", b"after"]


def test_no_reachable_endpoint_is_a_typed_error() -> None:
    c = EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout=1)
    try:
        with pytest.raises(EtcdError, match="no etcd endpoint answered"):
            c.put(b"/t/x", b"y")
        with pytest.raises(EtcdError):
            list(c.watch(b"/t/", 1, idle_s=1))
    finally:
        c.close()
    with pytest.raises(EtcdError):
        EtcdClient([])


def test_the_storage_quota_holds_while_history_is_compacted(tmp_path: Path) -> None:
    small = start_etcd_cluster(tmp_path / "small", 1, quota_bytes=8 * 1024 * 1024)
    c = EtcdClient(small.endpoints)
    try:
        value = b"x" * 200_000
        for i in range(200):  # 40 MB through an 8 MiB quota: compaction frees the space
            rev = c.put(b"/t/quota/log", value)
            if i % 10 == 9:
                c.compact(rev)
        with pytest.raises(EtcdNoSpace):  # the same without compaction: refused, typed
            for _ in range(200):
                c.put(b"/t/quota/other", value)
    finally:
        c.close()
        small.stop()


def test_a_cluster_folder_keeps_its_ports_and_refuses_another_size(tmp_path: Path) -> None:
    c = start_etcd_cluster(tmp_path / "e", 1)
    port = c.members[0].client_port
    c.stop()
    again = start_etcd_cluster(tmp_path / "e", 1)
    try:
        assert again.members[0].client_port == port
    finally:
        again.stop()
    with pytest.raises(EtcdClusterError, match="describes 1 members"):
        start_etcd_cluster(tmp_path / "e", 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cluster.json").write_text("{nonsense")
    with pytest.raises(EtcdClusterError, match="unreadable"):
        start_etcd_cluster(tmp_path / "bad", 1)
