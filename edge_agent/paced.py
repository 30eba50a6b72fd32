"""One edge agent, paced synthetic sensors and a slowed HSM: does signing keep up?

    python -m edge_agent.paced --rig DIR --token truck-a --broker-port P --data DIR \\
        --signing batch --rate 10 --seconds 20 --sign-delay-ms 115 --report out.json

Runs a real EdgeAgent (its outbox, sealer, uplink and receipts) in this process, signing in
a real PKCS#11 token (`--rig`: a SoftHSM2 test rig; this process loads the module, so it
must be a fresh process) wrapped in `SlowSigner`, which makes every signature take at least
`--sign-delay-ms` (115 ms: an ATECC608's ECDSA P-256 sign). A `PacedSensor` produces
`--rate` readings per second for `--seconds`, on schedule whether or not the agent keeps
up (a sensor does not wait for the HSM). Then the sensor goes quiet and the agent drains
until a ledger receipt covers every reading (or `--drain-s` passes).

The report (JSON, `--report` or stdout) counts, from the signatures themselves (the signer
wrapper reads seq / seq_first..seq_last out of what it signs):
  arrived, signed_at_end        readings due from the sensor / sealed when the sensor stopped
  backlog_at_end, backlog_max   arrived but unsealed then / at most, sampled every 0.25 s
  backlog_samples               [elapsed s, arrived, signed], every 0.25 s
  sign_calls, ops_per_1000      HSM signatures, and per 1,000 readings sealed
  hsm_ms_per_reading_p50        each signature's duration shared out over its readings
  seal_latency_ms_p50 / _p95    reading due -> its signature made
  last_seq, receipt_seq, drained  the outbox at the end
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cbor2

from edge_agent.agent import EdgeAgent
from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.config import AgentConfig
from edge_agent.status import read_status
from hsm import Signer, SoftwareSigner, signer_from_settings

ATECC608_SIGN_S = 0.115


@dataclass(frozen=True)
class SignRecord:
    first: int  # seq of the reading (per-reading) or seq_first (batch)
    last: int
    started: float  # monotonic
    done: float


class SlowSigner:
    """A Signer that takes at least `delay_s` per signature (the inner signer's own time
    included), and records what each signature covered. One thread signs at a time."""

    def __init__(self, inner: Signer, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.records: list[SignRecord] = []
        self._lock = threading.Lock()

    @property
    def kid(self) -> bytes:
        return self.inner.kid

    def public_key_der(self) -> bytes:
        return self.inner.public_key_der()

    def sign(self, message: bytes) -> bytes:
        started = time.monotonic()
        signature = self.inner.sign(message)
        rest = self.delay_s - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)
        first, last = covered(message)
        with self._lock:
            self.records.append(SignRecord(first, last, started, time.monotonic()))
        return signature

    def snapshot(self) -> list[SignRecord]:
        with self._lock:
            return list(self.records)


def covered(to_be_signed: bytes) -> tuple[int, int]:
    """The seqs a COSE Sig_structure covers: (seq, seq) of a reading, or a batch's range."""
    structure = cbor2.loads(to_be_signed)
    body = cbor2.loads(structure[3])
    if body.get("type") == "batch":
        return int(body["seq_first"]), int(body["seq_last"])
    return int(body["seq"]), int(body["seq"])


class PacedSensor:
    """`rate` temperature readings a second for `seconds`, reading i due at start + i/rate."""

    def __init__(self, rate: float, seconds: float, t0_ms: int | None = None) -> None:
        self.rate = rate
        self.total = int(rate * seconds)
        self.started: float | None = None
        self.t0_ms = t0_ms if t0_ms is not None else time.time_ns() // 1_000_000
        self.emitted = 0

    def start(self) -> None:
        self.started = time.monotonic()

    def due_at(self, i: int) -> float:
        assert self.started is not None
        return self.started + i / self.rate

    def arrived(self, now: float | None = None) -> int:
        if self.started is None:
            return 0
        elapsed = (time.monotonic() if now is None else now) - self.started
        return min(self.total, int(elapsed * self.rate) + 1) if elapsed >= 0 else 0

    def read_available(self) -> list[Sample]:
        upto = self.arrived()
        out = [Sample("temp", {"c": round(4.0 + (i % 40) / 10, 1), "probe": "28-0000000paced",
                               "n": i},
                      self.t0_ms + int(i * 1000 / self.rate), "rtc")
               for i in range(self.emitted, upto)]
        self.emitted = upto
        return out

    def close(self) -> None:
        pass


@dataclass
class PacedReport:
    signing: str
    rate: float
    seconds: float
    sign_delay_ms: float
    batch_max: int
    batch_delay_s: float
    arrived: int = 0
    signed_at_end: int = 0
    backlog_at_end: int = 0
    backlog_max: int = 0
    backlog_samples: list[tuple[float, int, int]] = field(default_factory=list)
    sign_calls: int = 0
    readings_signed: int = 0
    ops_per_1000: float = 0.0
    hsm_ms_per_reading_p50: float = 0.0
    seal_latency_ms_p50: float = 0.0
    seal_latency_ms_p95: float = 0.0
    last_seq: int = 0
    receipt_seq: int = 0
    drained: bool = False
    drain_s: float = 0.0


def run_paced(cfg: AgentConfig, signer: SlowSigner, rate: float, seconds: float,
              drain_s: float) -> PacedReport:
    """Run the agent with a PacedSensor; see the module docstring for what is reported."""
    sensor = PacedSensor(rate, seconds)
    agent = EdgeAgent(cfg, signer, [sensor], AgentClock())
    report = PacedReport(cfg.signing, rate, seconds, signer.delay_s * 1000, cfg.batch_max,
                         cfg.batch_delay_s)
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    try:
        if not agent.uplink.connected.wait(30):
            raise SystemExit("paced: the agent did not connect to the broker in 30 s")
        sensor.start()
        start = time.monotonic()
        while True:
            now = time.monotonic()
            arrived = sensor.arrived(now)
            signed = _signed(signer.snapshot())
            report.backlog_samples.append((round(now - start, 2), arrived, signed))
            report.backlog_max = max(report.backlog_max, arrived - signed)
            if now - start >= seconds:
                report.arrived, report.signed_at_end = sensor.total, signed
                report.backlog_at_end = sensor.total - signed
                break
            time.sleep(0.25)
        drain_start = time.monotonic()
        while time.monotonic() - drain_start < drain_s:
            if _drained(cfg, sensor.total):
                report.drained = True
                break
            time.sleep(0.25)
        report.drain_s = round(time.monotonic() - drain_start, 2)
    finally:
        agent.stop_event.set()
        thread.join(timeout=60)
    records = signer.snapshot()
    report.sign_calls = len(records)
    report.readings_signed = _signed(records)
    if report.readings_signed:
        report.ops_per_1000 = 1000 * len(records) / report.readings_signed
        per_reading = [(r.done - r.started) * 1000 / (r.last - r.first + 1)
                       for r in records for _ in range(r.first, r.last + 1)]
        report.hsm_ms_per_reading_p50 = statistics.median(per_reading)
        latency = [(r.done - sensor.due_at(seq - 1)) * 1000
                   for r in records for seq in range(r.first, r.last + 1)
                   if seq <= sensor.total]
        if latency:
            report.seal_latency_ms_p50 = statistics.median(latency)
            report.seal_latency_ms_p95 = sorted(latency)[int(0.95 * (len(latency) - 1))]
    st = read_status(cfg.outbox_path)
    report.last_seq, report.receipt_seq = int(st["last_seq"]), int(st["receipt_seq"])
    return report


def _signed(records: list[SignRecord]) -> int:
    return max((r.last for r in records), default=0)


def _drained(cfg: AgentConfig, total: int) -> bool:
    st = read_status(cfg.outbox_path)
    return bool(st["backlog"] == 0 and st["receipt_seq"] == st["last_seq"] >= total)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_agent.paced", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rig", type=Path, help="SoftHSM test rig (the real token signs)")
    ap.add_argument("--software-key", action="store_true",
                    help="sign with an in-memory key instead (no --rig; not for evidence)")
    ap.add_argument("--token", help="token label (default: the device id)")
    ap.add_argument("--device-id", default="truck-a")
    ap.add_argument("--fleet", default="test")
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--data", type=Path, required=True, help="agent data folder (fresh)")
    ap.add_argument("--signing", choices=("per-reading", "batch"), default="batch")
    ap.add_argument("--batch-max", type=int, default=AgentConfig().batch_max)
    ap.add_argument("--batch-delay-s", type=float, default=AgentConfig().batch_delay_s)
    ap.add_argument("--rate", type=float, default=10.0, help="readings per second (10)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of sensing (20)")
    ap.add_argument("--sign-delay-ms", type=float, default=ATECC608_SIGN_S * 1000,
                    help="least time per signature (115, an ATECC608)")
    ap.add_argument("--drain-s", type=float, default=60.0,
                    help="after sensing, wait up to this for receipts to cover everything")
    ap.add_argument("--report", type=Path, help="write the JSON report here (else stdout)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = replace(AgentConfig(), device_id=args.device_id, fleet=args.fleet,
                  data_dir=args.data, broker_port=args.broker_port, w1_dir=args.data / "none",
                  signing=args.signing, batch_max=args.batch_max,
                  batch_delay_s=args.batch_delay_s, status_interval_s=0.0).validate()
    inner: Signer
    if args.software_key:
        inner = SoftwareSigner.generate()
    elif args.rig is not None:
        inner = signer_from_settings(cfg.pkcs11_module, args.token or args.device_id,
                                     rig_dir=args.rig, pin_env="TRUSTFLEET_DEVICE_PIN",
                                     pin_file_env="TRUSTFLEET_DEVICE_PIN_FILE")
    else:
        ap.error("give --rig (a SoftHSM test rig) or --software-key")
    try:
        report = run_paced(cfg, SlowSigner(inner, args.sign_delay_ms / 1000), args.rate,
                           args.seconds, args.drain_s)
    finally:
        close = getattr(inner, "close", None)
        if callable(close):
            close()
    text = json.dumps(asdict(report))
    if args.report is not None:
        args.report.write_text(text)
    else:
        print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
