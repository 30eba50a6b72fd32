"""The outbox's disk budget: what is thinned first, what never is, and the sizing it gives.

Policy under test (edge_agent.retention): protected readings (RFID, door, shock,
temperature excursions) and sealed readings are never thinned; a thinning pass halves the
thinnable kind with most readings (ties: status, gps, humidity, temp), evenly over time.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge_agent.collectors.base import Sample
from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox
from edge_agent.retention import HIGH_WATER, is_protected, pick_kind_to_thin
from hsm import SoftwareSigner
from trustfleet.cose import decode_sign1
from trustfleet.payload import decode_payload

T0 = 1_763_700_000_000
SIGNER = SoftwareSigner.generate()
RANGE = (2.0, 8.0)


def gps(i: int) -> Sample:
    return Sample("gps", {"lat": 51.8790123 + i * 1e-5, "lon": 4.4300456 + i * 1e-5,
                          "speed": 13.89, "course": 87.5, "fix": 1, "sats": 9, "hdop": 0.9,
                          "alt": 12.0}, T0 + i * 1000, "gps")


def temp(i: int, c: float = 4.3, probe: int = 1) -> Sample:
    return Sample("temp", {"c": c, "probe": f"28-0000000000{probe:02d}"}, T0 + i * 1000, "gps")


def status(i: int) -> Sample:
    return Sample("status", {"backlog": 12345, "unsealed": 12000, "in_flight": 345,
                             "last_seq": 99999, "receipt_seq": 99000, "receipt_height": 5000,
                             "receipt_age_s": 12.5, "outbox_kb": 40000, "budget_kb": 131072,
                             "disk_free_mb": 20000, "thinned": 0, "dropped": 0,
                             "collector_errors": 0, "clock": "gps", "rtc_ok": True,
                             "uptime_s": 3600.0}, T0 + i * 1000, "gps")


def add(box: Outbox, samples: list[Sample]) -> None:
    box.add(samples, [is_protected(s.kind, s.values, RANGE) for s in samples])


def kinds_left(box: Outbox) -> dict[str, int]:
    rows = box.conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
    return {k: n for k, n in rows}


@pytest.mark.parametrize(("kind", "values", "protected"), [
    ("rfid", {"epc": "urn:epc:id:sscc:0614141.1234567890"}, True),
    ("door", {"open": True}, True),
    ("shock", {"peak_g": 3.1}, True),
    ("temp", {"c": 9.5}, True),
    ("temp", {"c": 1.5}, True),
    ("temp", {"c": 8.0}, False),
    ("temp", {"c": 4.2}, False),
    ("gps", {"lat": 1.0}, False),
    ("status", {"backlog": 3}, False),
])
def test_rfid_door_shock_and_temperature_excursions_are_protected(
        kind: str, values: dict[str, float | str | bool], protected: bool) -> None:
    assert is_protected(kind, values, RANGE) is protected


def test_the_kind_with_most_readings_is_thinned_first_ties_by_priority() -> None:
    assert pick_kind_to_thin({"gps": 900, "temp": 300, "status": 10}) == "gps"
    assert pick_kind_to_thin({"gps": 300, "temp": 300, "status": 300}) == "status"
    assert pick_kind_to_thin({"temp": 5, "humidity": 5}) == "humidity"
    assert pick_kind_to_thin({"gps": 1, "temp": 1, "rfid": 500}) is None


def test_thinning_halves_gps_evenly_and_keeps_every_protected_reading(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    protected = []
    for i in range(4000):
        add(box, [gps(i)])
        if i % 5 == 0:
            add(box, [temp(i)])
        if i % 400 == 0:
            extra = [temp(i, c=11.0), Sample("rfid", {"epc": f"urn:epc:id:sscc:0614141.{i}"},
                                             T0 + i, "gps"), Sample("door", {"open": True},
                                                                     T0 + i, "gps")]
            add(box, extra)
            protected.extend(extra)
    before = kinds_left(box)
    removed = box.thin(int(box.used_bytes() * 0.6))
    after = kinds_left(box)
    assert removed["gps"] >= before["gps"] // 2
    assert after["rfid"] == before["rfid"] == 10 and after["door"] == before["door"] == 10
    excursions = box.conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'temp' AND "
                                  "keep = 1").fetchone()[0]
    assert excursions == 10
    # what is left of the GPS trace still spans the whole backlog, evenly
    times = [t for (t,) in box.conn.execute("SELECT t FROM outbox WHERE kind = 'gps' "
                                            "ORDER BY id")]
    steps = {b - a for a, b in itertools.pairwise(times)}
    assert times[0] == T0 and times[-1] >= T0 + 3_990_000 and len(steps) == 1
    assert box.stats().thinned == sum(removed.values())


def test_sealed_readings_are_never_thinned_so_the_seq_chain_has_no_gap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    add(box, [gps(i) for i in range(3000)])
    box.seal("truck-1", SIGNER.kid, SIGNER.sign, limit=100)
    box.thin(0)  # as far as it goes
    assert box.in_flight() == 100
    assert pick_kind_to_thin(box.thinnable_counts()) is None
    box.seal("truck-1", SIGNER.kid, SIGNER.sign, limit=10_000)
    envelopes = box.due(0, 1000, 10_000)
    seqs = [decode_payload(decode_sign1(env).payload).seq for _, env in envelopes]
    assert seqs == list(range(1, len(seqs) + 1))


def readings_for(cfg: AgentConfig, hours: float, probes: int = 2) -> list[Sample]:
    """What an agent with `cfg`'s sampling rates stores in `hours` offline."""
    seconds = int(hours * 3600)
    out: list[Sample] = []
    gps_step = max(1, round(cfg.gps_interval_s))
    temp_step = max(1, round(cfg.temp_interval_s))
    status_step = max(1, round(cfg.status_interval_s))
    for s in range(seconds):
        if s % gps_step == 0:
            out.append(gps(s))
        if s % temp_step == 0:
            out.extend(temp(s, probe=p) for p in range(probes))
        if s % status_step == 0:
            out.append(status(s))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("profile", "cfg", "hours"), [
    ("truck", AgentConfig(), 72),
    ("container", AgentConfig(gps_interval_s=300, temp_interval_s=60, status_interval_s=600),
     14 * 24),
])
def test_default_budget_holds_the_offline_period_without_thinning(
        tmp_path: Path, profile: str, cfg: AgentConfig, hours: int) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    samples = readings_for(cfg, hours)
    for i in range(0, len(samples), 5000):
        add(box, samples[i:i + 5000])
    # plus a full send window of sealed readings
    box.seal("truck-1", SIGNER.kid, SIGNER.sign, limit=cfg.window)
    used = box.used_bytes()
    assert used < cfg.outbox_max_bytes * HIGH_WATER, f"{profile}: {used} bytes"
    assert box.stats().backlog == len(samples)
    print(f"{profile}: {len(samples)} readings in {hours} h, {used / len(samples):.0f} B each, "
          f"{used / 2**20:.1f} MiB of {cfg.outbox_max_mb:.0f} MiB")
