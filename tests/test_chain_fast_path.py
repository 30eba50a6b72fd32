"""Chain.apply settles a device's next reading in order inline, without `decide` and
`_advance` (ledger_node.chain): the blocks and device states it writes must be exactly those of
the two functions applied reading by reading, whatever mix of in-order readings, gaps, late
readings, duplicates, replays with other bytes, broken `prev` links and skewed device clocks
arrives, and however it is cut into blocks."""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from dataclasses import fields, replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_node.chain import _advance
from ledger_node.validate import MAX_CLOCK_SKEW_MS, DeviceState, Duplicate, Rejected, decide
from tests.chainkit import ChainUnderTest, Device
from tests.pki import SoftPKI
from trustfleet.cose import sign1, sign1_parts
from trustfleet.payload import GENESIS_PREV, Reading, decode_payload, encode_payload

T0 = 1_763_700_000_000
SEQS = 6
VARIANTS = ("good", "other", "skewed")
"""Per (device, seq): the device's proper reading; one with other values (same seq, same
prev: a replay with other bytes, or after it the next reading's prev no longer matches);
one whose device time is further than MAX_CLOCK_SKEW_MS from ledger time."""

PKI = SoftPKI()
DEVICES = [Device(f"truck-{i}") for i in range(3)]


def _sign_variants(device: Device) -> dict[tuple[int, str], bytes]:
    out: dict[tuple[int, str], bytes] = {}
    prev = GENESIS_PREV
    for seq in range(1, SEQS + 1):
        for variant in VARIANTS:
            t = T0 + seq + (2 * MAX_CLOCK_SKEW_MS if variant == "skewed" else 0)
            c = 4.0 + seq / 10 + (1.0 if variant == "other" else 0.0)
            r = Reading(dev=device.dev, seq=seq, prev=prev, t=t, ts="gps", k="temp",
                        d={"c": c})
            out[(seq, variant)] = sign1(encode_payload(r), device.signer.kid, device.signer.sign)
        prev = hashlib.sha256(out[(seq, "good")]).digest()
    return out


ENVELOPES = [_sign_variants(d) for d in DEVICES]

arrivals = st.lists(st.tuples(st.integers(0, len(DEVICES) - 1), st.integers(1, SEQS),
                              st.sampled_from((*VARIANTS, "good", "good"))),
                    min_size=1, max_size=40)


def _expected(cut: ChainUnderTest, blocks: list[list[bytes]], start: dict[str, DeviceState]
              ) -> tuple[list[tuple[str, int, str]], dict[str, DeviceState], list[tuple[int, ...]]]:
    """What `decide` and `_advance`, reading by reading, make of `blocks` applied at the ledger
    times ChainUnderTest gives them: the readings rows (dev, seq, flags), the device states,
    and per block (accepted, duplicates, rejected)."""
    states = {dev: replace(s) for dev, s in start.items()}
    committed: dict[tuple[str, int], bytes] = {}
    rows: list[tuple[str, int, str]] = []
    counts: list[tuple[int, ...]] = []
    at = cut.time
    for block in blocks:
        at += 1000
        accepted = duplicates = rejected = 0
        for env in block:
            r = decode_payload(_payload(env))
            state, chain_hash = states[r.dev], hashlib.sha256(env).digest()
            lookup = lambda dev, seq: committed.get((dev, seq))  # noqa: E731
            decided = decide(r.dev, r.seq, r.prev, r.t, chain_hash, True, state, lookup,
                             at_ms=at)
            if isinstance(decided, Duplicate):
                duplicates += 1
            elif isinstance(decided, Rejected):
                rejected += 1
            else:
                _advance(state, r.seq, r.t, at, decided, chain_hash, lookup)
                committed[(r.dev, r.seq)] = chain_hash
                rows.append((r.dev, r.seq, ",".join(decided)))
                accepted += 1
        counts.append((accepted, duplicates, rejected))
    return rows, states, counts


def _payload(env: bytes) -> bytes:
    parts = sign1_parts(env, 64 * 1024)
    assert parts is not None
    return parts[2]


def _state(s: DeviceState) -> dict[str, object]:
    return {f.name: getattr(s, f.name) for f in fields(s)}  # last_hash too (compare=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrived=arrivals, cuts=st.lists(st.integers(0, 40), max_size=4))
def test_blocks_and_device_states_are_those_of_decide_and_advance(
        arrived: list[tuple[int, int, str]], cuts: list[int]) -> None:
    messages = [DEVICES[d].message(ENVELOPES[d][(seq, variant)]) for d, seq, variant in arrived]
    bounds = sorted({0, len(messages), *(c for c in cuts if c < len(messages))})
    blocks = [messages[a:b] for a, b in itertools.pairwise(bounds)]
    with tempfile.TemporaryDirectory() as tmp:
        cut = ChainUnderTest(Path(tmp) / "ledger.sqlite", DEVICES, PKI)
        start = {dev: replace(s) for dev, s in cut.chain.devices.items()}
        want_rows, want_states, want_counts = _expected(
            cut, [[m.payload for m in block] for block in blocks], start)
        got_counts = []
        for block in blocks:
            result = cut.apply(block)
            got_counts.append((result.accepted, result.duplicates,
                               sum(result.rejected.values())))
        got_rows = [(dev, seq, flags) for dev, seq, flags in cut.store.conn.execute(
            "SELECT dev, seq, flags FROM readings ORDER BY idx")]
        assert got_rows == want_rows
        assert got_counts == want_counts
        for dev, state in want_states.items():
            assert _state(cut.chain.devices[dev]) == _state(state), dev
        stored = cut.store.load_devices()
        for dev, state in want_states.items():
            assert stored[dev] == state, dev
        cut.store.close()


def test_the_mix_above_reaches_both_paths() -> None:
    """The examples above need both: in-order readings (inline) and every other case."""
    with tempfile.TemporaryDirectory() as tmp:
        cut = ChainUnderTest(Path(tmp) / "ledger.sqlite", DEVICES[:1], PKI)
        env = ENVELOPES[0]
        result = cut.apply([DEVICES[0].message(env[(1, "good")]),   # in order: inline
                            DEVICES[0].message(env[(1, "good")]),   # duplicate
                            DEVICES[0].message(env[(1, "other")]),  # replay, other bytes
                            DEVICES[0].message(env[(3, "good")]),   # gap
                            DEVICES[0].message(env[(2, "skewed")]),  # late, skewed
                            DEVICES[0].message(env[(4, "good")])])  # in order again
        assert (result.accepted, result.duplicates, dict(result.rejected)) == \
            (4, 1, {"replay_conflict": 1})
        flags = [f for (f,) in cut.store.conn.execute("SELECT flags FROM readings ORDER BY idx")]
        assert flags == ["", "gap", "late,clock_skew", ""]
        cut.store.close()
