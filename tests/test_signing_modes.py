"""Agent signing modes: per-reading and batch, alone and mixed, against a real chain.

The outbox is a real SQLite file; the chain is the node's real Chain on a real SQLite store
(tests.chainkit, software keys: what is tested here is sealing and linking, not the token).
Tokens, the broker and a node process are in tests/test_batch_agent*.py.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.config import AgentConfig
from edge_agent.errors import AgentConfigError
from edge_agent.outbox import Outbox
from edge_agent.paced import covered
from edge_agent.sealer import BatchPolicy
from hsm import SoftwareSigner, verify_es256
from tests.chainkit import ChainUnderTest, Device
from trustfleet.batch import is_batched, open_reading
from trustfleet.payload import GENESIS_PREV
from trustfleet.topics import encode_batch

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_763_700_000_000


def samples(n: int, start: int = 0) -> list[Sample]:
    return [Sample("temp", {"c": 4.0 + i / 100, "probe": "28-000000000001"}, T0 + i * 100,
                   "gps") for i in range(start, start + n)]


def envelopes(box: Outbox) -> list[bytes]:
    return [env for _, env in box.unsent(100_000)]


def check_chain(items: list[bytes]) -> list[bool]:
    """Each item's prev is the chain hash of the one before; returns which were batched."""
    prev = GENESIS_PREV
    kinds = []
    for seq, item in enumerate(items, start=1):
        opened = open_reading(item)
        assert opened.reading.seq == seq
        assert opened.reading.prev == prev, f"prev of seq {seq}"
        prev = opened.chain_hash
        kinds.append(opened.batched)
    return kinds


# -- config ----------------------------------------------------------------------------------

def test_signing_config_defaults_and_limits() -> None:
    cfg = AgentConfig(w1_dir=Path("/sys/bus/w1/devices")).validate()
    assert (cfg.signing, cfg.batch_max, cfg.batch_delay_s, cfg.message_max) == (
        "per-reading", 64, 2.0, 50)
    AgentConfig(w1_dir=Path("w1"), signing="batch", batch_max=4096, window=4096).validate()
    for bad, words in [({"signing": "merkle"}, "signing must be one of"),
                       ({"batch_max": 4097}, "batch_max must be between 1 and 4096"),
                       ({"batch_max": 0}, "batch_max must be between"),
                       ({"batch_delay_s": -1.0}, "batch_delay_s"),
                       ({"signing": "batch", "batch_max": 500, "window": 200},
                        "must not exceed window"),
                       ({"message_max": 0}, "message_max")]:
        with pytest.raises(AgentConfigError, match=words):
            AgentConfig(w1_dir=Path("w1"), **bad).validate()  # type: ignore[arg-type]


def test_signing_keys_load_from_the_agent_toml(tmp_path: Path) -> None:
    from edge_agent.config import load_agent_config

    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nw1_dir = "w1"\nsigning = "batch"\nbatch_max = 128\n'
                    "batch_delay_s = 1\nmessage_max = 20\n")
    cfg = load_agent_config(path)
    assert (cfg.signing, cfg.batch_max, cfg.batch_delay_s, cfg.message_max) == (
        "batch", 128, 1.0, 20)


# -- sealing ---------------------------------------------------------------------------------

def test_a_batch_is_one_signature_and_every_item_verifies_alone(tmp_path: Path) -> None:
    signer = SoftwareSigner.generate()
    calls: list[bytes] = []

    def sign(message: bytes) -> bytes:
        calls.append(message)
        return signer.sign(message)

    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(samples(10))
    assert box.unsealed_span() == (10, 1, 10)
    assert box.unsealed_span(4) == (4, 1, 10)   # counted only as far as needed
    assert box.seal_batch("truck-1", signer.kid, sign, 7, T0) == (7, 7)
    assert len(calls) == 1 and covered(calls[0]) == (1, 7)
    items = envelopes(box)
    assert len(items) == 7 and all(is_batched(i) for i in items)
    for item in items:
        opened = open_reading(item)
        assert verify_es256(signer.public_key_der(), opened.to_be_signed, opened.signature)
    assert check_chain(items) == [True] * 7
    st = box.stats()
    assert (st.unsealed, st.unreceipted, st.last_seq) == (3, 7, 7)
    box.close()


def test_modes_alternate_and_every_prev_links_by_the_rule_of_the_reading_before(
        tmp_path: Path) -> None:
    """per-reading -> batch -> per-reading -> batch -> batch, as restarts would switch."""
    dev = Device("truck-1")
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(samples(40))
    assert box.seal("truck-1", dev.signer.kid, dev.signer.sign, limit=3) == 3
    assert box.seal_batch("truck-1", dev.signer.kid, dev.signer.sign, 10, T0)[0] == 10
    assert box.seal("truck-1", dev.signer.kid, dev.signer.sign, limit=1) == 1
    assert box.seal_batch("truck-1", dev.signer.kid, dev.signer.sign, 1, T0)[0] == 1
    assert box.seal_batch("truck-1", dev.signer.kid, dev.signer.sign, 25, T0)[0] == 25
    items = envelopes(box)
    assert check_chain(items) == [False] * 3 + [True] * 10 + [False] + [True] * 26

    # the node's chain takes them, in messages as the uplink packs them, with no flag
    tc = ChainUnderTest(tmp_path / "ledger.sqlite", [dev])
    result = tc.apply([dev.message(encode_batch(items[i:i + 7]))
                       for i in range(0, len(items), 7)])
    assert result.accepted == 40 and not result.rejected
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        flags = {f for (f,) in conn.execute("SELECT flags FROM readings")}
    assert flags == {""}
    assert tc.chain.devices["truck-1"].contiguous_seq == 40
    # receipts release items like envelopes
    assert box.apply_receipt(40, 1) == 40 and box.stats().backlog == 0
    box.close()


def test_a_crash_between_the_batch_signature_and_its_commit_loses_only_that_signature(
        tmp_path: Path) -> None:
    """A real crash: the process exits inside the HSM call, after the signature is made."""
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    box.add(samples(12))
    box.close()
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from edge_agent.outbox import Outbox
        from hsm import SoftwareSigner
        signer = SoftwareSigner.generate()
        def sign(message):
            signer.sign(message)
            os._exit(9)   # power lost: the signature exists, the transaction never began
        Outbox(Path({str(path)!r})).seal_batch("truck-1", signer.kid, sign, 8, 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ,
                          "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr
    box = Outbox(path)
    st = box.stats()
    assert (st.unsealed, st.unreceipted, st.last_seq) == (12, 0, 0)
    signer = SoftwareSigner.generate()
    assert box.seal_batch("truck-1", signer.kid, signer.sign, 8, T0)[0] == 8
    assert box.seal("truck-1", signer.kid, signer.sign) == 4
    assert check_chain(envelopes(box)) == [True] * 8 + [False] * 4
    box.close()


def test_a_failing_hsm_leaves_the_outbox_as_it_was(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(samples(5))

    def broken(message: bytes) -> bytes:
        raise RuntimeError("token went away")

    with pytest.raises(RuntimeError):
        box.seal_batch("truck-1", b"k" * 32, broken, 5, T0)
    st = box.stats()
    assert (st.unsealed, st.last_seq) == (5, 0)
    with pytest.raises(ValueError):
        box.seal_batch("truck-1", b"k" * 32, broken, 4097, T0)
    signer = SoftwareSigner.generate()
    assert box.seal_batch("truck-1", signer.kid, signer.sign, 5, T0) == (5, 5)
    assert check_chain(envelopes(box)) == [True] * 5
    box.close()


def test_thinning_a_batch_mode_backlog_leaves_no_seq_gap(tmp_path: Path) -> None:
    signer = SoftwareSigner.generate()
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(samples(3000))
    box.seal_batch("truck-1", signer.kid, signer.sign, 64, T0)
    removed = box.thin(box.used_bytes() // 2)
    assert sum(removed.values()) > 0
    while box.unsealed_span()[0]:
        box.seal_batch("truck-1", signer.kid, signer.sign, 64, T0)
    items = envelopes(box)
    assert check_chain(items) == [True] * len(items)
    box.close()


# -- when to seal ----------------------------------------------------------------------------

def test_full_batches_go_at_once_a_partial_one_after_the_delay_never_cut_by_the_window(
        ) -> None:
    policy = BatchPolicy(batch_max=64, delay_s=2.0)
    policy.observe(0, 0, 0, now=0.0)                      # a fresh outbox
    policy.observe(10, 1, 10, now=1.0)                    # 10 readings stored at t=1
    assert policy.next_batch(10, room=1000, now=1.5) == 0   # partial, waited 0.5 s
    policy.observe(20, 1, 20, now=2.5)
    assert policy.next_batch(20, room=1000, now=2.9) == 0
    assert policy.next_batch(20, room=1000, now=3.0) == 20  # the oldest waited 2 s
    policy.sealed_through(20)
    assert policy.oldest_wait(3.0) == 0.0
    policy.observe(100, 21, 120, now=3.1)                 # a burst: a full batch at once
    assert policy.next_batch(100, room=1000, now=3.1) == 64
    policy.sealed_through(84)
    policy.observe(36, 85, 120, now=3.2)
    assert policy.next_batch(36, room=1000, now=3.2) == 0   # the rest arrived at 3.1
    assert policy.next_batch(36, room=20, now=9.0) == 0     # window too small: wait ...
    assert policy.next_batch(36, room=36, now=9.0) == 36    # ... for room for all of them


def test_readings_left_unsealed_by_an_earlier_run_are_sealed_at_once() -> None:
    policy = BatchPolicy(batch_max=64, delay_s=2.0)
    policy.observe(5, 40, 44, now=100.0)                  # the first look, at start
    assert policy.next_batch(5, room=1000, now=100.0) == 5


def test_the_wait_is_counted_from_the_oldest_unsealed_reading_after_thinning() -> None:
    policy = BatchPolicy(batch_max=64, delay_s=2.0)
    policy.observe(0, 0, 0, now=0.0)
    policy.observe(5, 1, 5, now=0.0)
    policy.observe(10, 1, 10, now=1.0)
    policy.observe(4, 7, 10, now=1.5)                     # 1..6 thinned away
    assert policy.oldest_wait(2.5) == pytest.approx(1.5)


def test_a_reading_arriving_after_everything_was_receipted_waits_its_own_delay() -> None:
    policy = BatchPolicy(batch_max=64, delay_s=2.0)
    policy.observe(0, 0, 0, now=0.0)
    policy.observe(30, 71, 100, now=1.0)
    assert policy.next_batch(30, room=1000, now=3.0) == 30
    policy.sealed_through(100)
    policy.observe(0, 0, 0, now=3.5)                      # receipts emptied the outbox ...
    policy.observe(1, 1, 1, now=4.0)                      # ... so row ids start again
    assert policy.next_batch(1, room=1000, now=5.0) == 0
    assert policy.next_batch(1, room=1000, now=6.0) == 1


def test_hash_rule_is_the_one_trustfleet_batch_documents(tmp_path: Path) -> None:
    signer = SoftwareSigner.generate()
    box = Outbox(tmp_path / "outbox.sqlite")
    box.add(samples(2))
    box.seal_batch("truck-1", signer.kid, signer.sign, 1, T0)
    box.seal("truck-1", signer.kid, signer.sign)
    first, second = envelopes(box)
    import cbor2

    payload = cbor2.loads(first).value[3]
    assert open_reading(second).reading.prev == hashlib.sha256(payload).digest()
    assert open_reading(second).reading.prev != hashlib.sha256(first).digest()
    box.close()
