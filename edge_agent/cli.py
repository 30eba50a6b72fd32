"""`trustfleet agent run`: the edge agent of one truck or container.

Environment (read here only): TRUSTFLEET_DEVICE_PIN or TRUSTFLEET_DEVICE_PIN_FILE for the
device token's user PIN (unless --rig names a SoftHSM test rig), TRUSTFLEET_PKCS11_MODULE.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from edge_agent.errors import EdgeAgentError

log = logging.getLogger("trustfleet.agent")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="run an edge agent")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    run = agent_sub.add_parser(
        "run", help="read sensors, sign readings in the HSM, deliver them to the ledger",
        description="Run one edge agent until SIGTERM or Ctrl-C. Settings come from the "
                    "[agent] table of --config, overridden by the flags below.")
    run.add_argument("--config", type=Path, help="TOML file with an [agent] table")
    run.add_argument("--device-id", help="device id (also the HSM token label by default)")
    run.add_argument("--fleet", help="fleet id")
    run.add_argument("--data", type=Path, dest="data_dir", help="agent data folder (outbox)")
    run.add_argument("--broker-host")
    run.add_argument("--broker-port", type=int)
    run.add_argument("--gps-port", help="serial port speaking NMEA 0183 (or a pty)")
    run.add_argument("--w1-dir", type=Path, help="1-wire sysfs devices folder")
    run.add_argument("--rig", type=Path, help="SoftHSM test rig folder (PINs from its pins.json)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Collector, EdgeAgent, Polled
    from edge_agent.collectors.gps_serial import SerialGpsCollector
    from edge_agent.collectors.w1_temp import W1TemperatureCollector
    from edge_agent.config import load_agent_config
    from hsm import signer_from_settings
    from hsm.errors import HsmError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_agent_config(args.config, device_id=args.device_id, fleet=args.fleet,
                                data_dir=args.data_dir, broker_host=args.broker_host,
                                broker_port=args.broker_port, gps_port=args.gps_port,
                                w1_dir=args.w1_dir,
                                pkcs11_module=os.environ.get("TRUSTFLEET_PKCS11_MODULE"))
        signer = signer_from_settings(cfg.pkcs11_module, cfg.token, rig_dir=args.rig,
                                      pin_env="TRUSTFLEET_DEVICE_PIN",
                                      pin_file_env="TRUSTFLEET_DEVICE_PIN_FILE")
    except (EdgeAgentError, HsmError) as exc:
        print(f"trustfleet agent: {exc}", file=sys.stderr)
        return 2

    from edge_agent.clock import AgentClock

    clock = AgentClock()
    collectors: list[Collector] = []
    if cfg.gps_port:
        collectors.append(SerialGpsCollector(cfg.gps_port, cfg.gps_baudrate))
    if cfg.w1_dir:
        w1 = W1TemperatureCollector(cfg.w1_dir, clock=clock.now)
        collectors.append(Polled(w1.read, cfg.temp_interval_s, "w1"))
    agent = EdgeAgent(cfg, signer, collectors, clock)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: received %s, stopping", cfg.device_id, signal.Signals(signum).name)
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    except HsmError as exc:
        print(f"trustfleet agent: HSM failure: {exc}", file=sys.stderr)
        return 3
    finally:
        signer.close()
    return 0
