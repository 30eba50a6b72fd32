"""`make bench` (agent part): one edge agent process, measured, with the real parts.

Everything runs on loopback ports in a temporary folder: Mosquitto, a ledger node (block
key in a SoftHSM token), the truck shim (NMEA at 1 Hz on a pty, two DS18B20 probes in a
1-wire sysfs tree) and `trustfleet agent run` signing in its own SoftHSM token.

1. Steady state. The agent reads GPS at 1 Hz and the probes every 10 s (plus a status
   reading a minute) and delivers them. After its first receipt, for ``--steady-s``
   seconds: its resident memory (``VmRSS`` in /proc/PID/status; ``VmHWM``, the peak) and
   its CPU share, (utime + stime) from /proc/PID/stat over wall time (100 % = one core).
2. Drain. A 24-hour backlog at the default truck rates (GPS 1 Hz, two probes every 5 s, a
   status a minute: ``--hours`` sets the length) is written into a fresh device's outbox
   as the agent stores readings while offline: unsealed, sealed lazily by the agent as its
   send window opens. Then the agent starts against the broker and node, with the truck
   still live, and the receipts are followed: readings covered by receipts per second,
   next to ``max_publish_per_s`` (``--rate``, default the config's). It runs until the
   receipts cover everything, or for ``--drain-s`` seconds (0: to the end); the time the
   whole backlog takes at the measured rate is printed either way.
3. Ceiling. The same agent restarted on what is left of that backlog with
   ``max_publish_per_s`` at its maximum (100000), for ``--ceiling-s`` seconds (0: skip):
   what the agent, its HSM token, the broker and the node sustain when the cap is not the
   limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.collectors.base import Sample
from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.outbox import Outbox
from edge_agent.retention import is_protected
from edge_agent.status import read_status
from hsm import SoftHsmRig
from ledger_node.auth import local_token
from ledger_node.softpki import software_enrolment
from trustfleet.broker import start_broker
from trustfleet.procs import free_port, stop_process

FLEET = "bench"
LIVE, BACKLOG, NODE = "bench-live", "bench-backlog", "node-1"
MAX_RATE = 100_000  # the largest max_publish_per_s the config accepts
_T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


# -- /proc ------------------------------------------------------------------------------------

def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process ``pid`` in kB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


# -- the backlog ------------------------------------------------------------------------------

def backlog(cfg: AgentConfig, hours: float, probes: int = 2,
            chunk: int = 5000) -> Iterator[list[Sample]]:
    """What an agent with ``cfg``'s rates stores in ``hours`` offline, in time order."""
    out: list[Sample] = []
    gps_step = max(1, round(cfg.gps_interval_s))
    temp_step = max(1, round(cfg.temp_interval_s))
    status_step = max(1, round(cfg.status_interval_s))
    for s in range(int(hours * 3600)):
        t_ms = _T0_MS + s * 1000
        if s % gps_step == 0:
            out.append(Sample("gps", {"lat": 51.9 + s * 1e-6, "lon": 4.4 + s * 1e-6,
                                      "speed": 13.89, "course": 87.5, "fix": 1, "sats": 9,
                                      "hdop": 0.9, "alt": 12.0}, t_ms, "gps"))
        if s % temp_step == 0:
            out.extend(Sample("temp", {"c": 4.0 + (s % 600) / 1000, "probe": f"28-00000000{p:04x}"},
                              t_ms, "gps") for p in range(probes))
        if s % status_step == 0:
            out.append(Sample("status", {"backlog": s, "clock": "rtc", "rtc_ok": True,
                                         "uptime_s": float(s)}, t_ms, "gps"))
        if len(out) >= chunk:
            yield out
            out = []
    if out:
        yield out


def write_backlog(path: Path, cfg: AgentConfig, hours: float) -> int:
    box = Outbox(path)
    total = 0
    try:
        for samples in backlog(cfg, hours):
            box.add(samples, [is_protected(s.kind, s.values, (cfg.temp_low_c, cfg.temp_high_c))
                              for s in samples])
            total += len(samples)
    finally:
        box.close()
    return total


# -- processes --------------------------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trustfleet.cli", *args]


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _wait(check: object, timeout: float, what: str, proc: subprocess.Popen[bytes],
          log: Path) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, KeyError, ValueError, EdgeAgentError, sqlite3.Error):
            pass  # not there yet
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise SystemExit(f"bench: {what}: not ready (exit {proc.poll()})\n{tail}")
        time.sleep(0.1)


def _agent_toml(path: Path, dev: str, data: Path, truck: Path, port: int,
                **settings: object) -> Path:
    lines = [f'device_id = "{dev}"', f'fleet = "{FLEET}"', f'data_dir = "{data}"',
             f"broker_port = {port}", f'gps_port = "{truck / "gps.tty"}"',
             f'w1_dir = "{truck / "w1"}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("[agent]\n" + "\n".join(lines) + "\n")
    return path


@dataclass
class Steady:
    seconds: float
    rss_kb: int
    hwm_kb: int
    cpu_share: float
    readings: int


@dataclass
class Drain:
    backlog: int
    rate: float
    receipted: int
    seconds: float
    done: bool
    first_receipt_s: float
    rss_kb: int
    hwm_kb: int
    cpu_share: float


def measure_steady(agent: subprocess.Popen[bytes], outbox: Path, seconds: float,
                   log: Path) -> Steady:
    _wait(lambda: read_status(outbox)["receipt_seq"] > 0, 60, "first receipt", agent, log)
    cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
    seq0 = read_status(outbox)["last_seq"]
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
    rss, hwm = memory_kb(agent.pid)
    seq1 = read_status(outbox)["last_seq"]
    return Steady(t1 - t0, rss, hwm, (cpu1 - cpu0) / (t1 - t0), seq1 - seq0)


def measure_drain(agent: subprocess.Popen[bytes], outbox: Path, total: int, seconds: float,
                  log: Path) -> Drain:
    started = time.monotonic()
    _wait(lambda: read_status(outbox)["receipt_seq"] > 0, 60, "first receipt", agent, log)
    first = time.monotonic()
    cpu0 = cpu_seconds(agent.pid)
    r0 = read_status(outbox)["receipt_seq"]
    done = False
    while not done and (seconds <= 0 or time.monotonic() - first < seconds):
        if agent.poll() is not None:
            raise SystemExit(f"bench: the agent exited with {agent.returncode}")
        time.sleep(0.25)
        st = read_status(outbox)
        done = st["backlog"] == 0 and st["receipt_seq"] == st["last_seq"]
    elapsed = time.monotonic() - first
    st = read_status(outbox)
    rss, hwm = memory_kb(agent.pid)
    receipted = st["receipt_seq"] - r0
    return Drain(total, receipted / elapsed, st["receipt_seq"], elapsed, done,
                 first - started, rss, hwm, (cpu_seconds(agent.pid) - cpu0) / elapsed)


def _start_node(tmp: Path, rig: SoftHsmRig, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    ca_path, enroll = software_enrolment(
        tmp / "pki", {dev: rig.public_key_der(dev) for dev in (LIVE, BACKLOG)}, FLEET)
    api = free_port()
    log = tmp / "node.log"
    token = local_token(tmp / "node", prefix="bench")
    node = _spawn(_cli("node", "run", "--data", str(tmp / "node"), "--rig", str(rig.directory),
                       "--token", NODE, "--enroll", str(enroll), "--fleet-ca", str(ca_path),
                       "--broker-port", str(port),
                       "--api-port", str(api)), log)

    def up() -> bool:
        req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/node/status",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2) as resp:
            return bool(json.loads(resp.read())["broker_connected"])

    _wait(up, 60, "ledger node", node, log)
    return node, log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_agent.bench",
                                 description="Resident memory, CPU share and backlog drain "
                                             "rate of one edge agent, with the real parts.")
    ap.add_argument("--steady-s", type=float, default=15.0,
                    help="seconds of steady state measured (15)")
    ap.add_argument("--hours", type=float, default=24.0, help="hours of backlog (24)")
    ap.add_argument("--drain-s", type=float, default=15.0,
                    help="seconds of draining measured; 0: until it is all receipted (15)")
    ap.add_argument("--rate", type=int, default=AgentConfig().max_publish_per_s,
                    help="the agent's max_publish_per_s while draining (config default)")
    ap.add_argument("--ceiling-s", type=float, default=12.0,
                    help="seconds of draining with no effective cap; 0: skip (12)")
    args = ap.parse_args(argv)
    ceiling: Drain | None = None
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tf-agent-bench-") as name:
        tmp = Path(name)
        try:
            print("bench: SoftHSM tokens, broker, ledger node, truck shim...", flush=True)
            rig = SoftHsmRig(tmp / "hsm")
            rig.ensure_tokens([LIVE, BACKLOG, NODE])
            port = free_port()
            procs.append(start_broker(tmp / "broker", port, tmp / "mosquitto.log"))
            node, _ = _start_node(tmp, rig, port)
            procs.append(node)
            truck = tmp / "truck"
            shim_log = tmp / "shim.log"
            shim = _spawn(_cli("shim", "truck", "--dir", str(truck), "--index", "1",
                               "--interval", "1.0"), shim_log)
            procs.append(shim)
            _wait(lambda: (truck / "gps.tty").exists(), 30, "truck shim", shim, shim_log)

            print(f"bench: steady state, GPS 1 Hz and temperature every 10 s, "
                  f"{args.steady_s:.0f} s...", flush=True)
            live_log = tmp / "agent-live.log"
            config = _agent_toml(tmp / "live.toml", LIVE, tmp / LIVE, truck, port,
                                 gps_interval_s=1.0, temp_interval_s=10.0)
            agent = _spawn(_cli("agent", "run", "--config", str(config), "--rig",
                                str(rig.directory)), live_log)
            procs.append(agent)
            steady = measure_steady(agent, tmp / LIVE / "outbox.sqlite", args.steady_s,
                                    live_log)
            stop_process(agent)

            cfg = AgentConfig()
            print(f"bench: writing a {args.hours:g} h backlog at the default truck rates "
                  f"(GPS {cfg.gps_interval_s:g} s, 2 probes every {cfg.temp_interval_s:g} s, "
                  f"status every {cfg.status_interval_s:g} s)...", flush=True)
            outbox = tmp / BACKLOG / "outbox.sqlite"
            total = write_backlog(outbox, cfg, args.hours)
            print(f"bench: draining {total} readings at max_publish_per_s = {args.rate}...",
                  flush=True)
            drain_log = tmp / "agent-backlog.log"
            config = _agent_toml(tmp / "backlog.toml", BACKLOG, tmp / BACKLOG, truck, port,
                                 max_publish_per_s=args.rate)
            agent = _spawn(_cli("agent", "run", "--config", str(config), "--rig",
                                str(rig.directory)), drain_log)
            procs.append(agent)
            drain = measure_drain(agent, outbox, total, args.drain_s, drain_log)
            stop_process(agent)
            if args.ceiling_s > 0 and not drain.done:
                print(f"bench: the same backlog with max_publish_per_s = {MAX_RATE}, "
                      f"{args.ceiling_s:.0f} s...", flush=True)
                config = _agent_toml(tmp / "ceiling.toml", BACKLOG, tmp / BACKLOG, truck,
                                     port, max_publish_per_s=MAX_RATE)
                agent = _spawn(_cli("agent", "run", "--config", str(config), "--rig",
                                    str(rig.directory)), drain_log)
                procs.append(agent)
                ceiling = measure_drain(agent, outbox, total, args.ceiling_s, drain_log)
                stop_process(agent)
        finally:
            for proc in reversed(procs):
                stop_process(proc, timeout=20)
    report(steady, drain, args.rate, ceiling)
    return 0


def report(steady: Steady, drain: Drain, rate: int, ceiling: Drain | None) -> None:
    print()
    print(f"agent resident memory:        {steady.rss_kb / 1024:.1f} MiB "
          f"(peak {steady.hwm_kb / 1024:.1f} MiB), GPS 1 Hz + temperature every 10 s")
    print(f"agent CPU share:              {steady.cpu_share * 100:.2f} % of one core over "
          f"{steady.seconds:.0f} s ({steady.readings} readings sealed and sent)")
    verdict = "all receipted" if drain.done else f"measured over {drain.seconds:.0f} s"
    print(f"24 h backlog drain:           {drain.rate:,.0f} readings/s receipted "
          f"(max_publish_per_s = {rate}; {verdict})")
    whole = drain.backlog / drain.rate if drain.rate else float("inf")
    print(f"  backlog, time to drain:     {drain.backlog} readings, "
          f"{whole / 60:.1f} min at that rate; first receipt {drain.first_receipt_s:.1f} s "
          f"after start")
    print(f"  agent while draining:       {drain.cpu_share * 100:.0f} % of one core, "
          f"{drain.rss_kb / 1024:.1f} MiB resident (peak {drain.hwm_kb / 1024:.1f} MiB)")
    if ceiling is not None:
        whole = drain.backlog / ceiling.rate if ceiling.rate else float("inf")
        print(f"drain ceiling (no cap):       {ceiling.rate:,.0f} readings/s receipted "
              f"(max_publish_per_s = {MAX_RATE}; over {ceiling.seconds:.0f} s): the 24 h "
              f"backlog in {whole / 60:.1f} min; agent {ceiling.cpu_share * 100:.0f} % of "
              f"one core, {ceiling.rss_kb / 1024:.1f} MiB resident")


if __name__ == "__main__":
    sys.exit(main())
