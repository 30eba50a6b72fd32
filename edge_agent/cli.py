"""`trustfleet agent run` and `trustfleet agent status`: the edge agent of one truck or container.

Environment (read here only): TRUSTFLEET_DEVICE_PIN or TRUSTFLEET_DEVICE_PIN_FILE for the
device token's user PIN (unless --rig names a SoftHSM test rig), TRUSTFLEET_PKCS11_MODULE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from edge_agent.errors import EdgeAgentError

log = logging.getLogger("trustfleet.agent")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="run an edge agent, or show its outbox")
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
    run.add_argument("--gps-source", choices=("serial", "gpsd"),
                     help="GPS from NMEA on --gps-port (serial) or from gpsd")
    run.add_argument("--gps-port", help="serial port speaking NMEA 0183 (or a pty)")
    run.add_argument("--gpsd-host", help="gpsd's host (gps_source gpsd; 127.0.0.1)")
    run.add_argument("--gpsd-port", type=int, help="gpsd's port (2947)")
    run.add_argument("--w1-dir", type=Path, help="1-wire sysfs devices folder")
    run.add_argument("--rfid-port", help="serial RFID reader, one tag per line (or a pty)")
    run.add_argument("--llrp-host", help="fixed UHF RFID reader speaking LLRP")
    run.add_argument("--llrp-port", type=int, help="its LLRP port (5084)")
    run.add_argument("--i2c-bus", help="I2C bus of the ADXL345 (a number, or a shim socket)")
    run.add_argument("--door-gpio", type=Path, help="GPIO value file of the door contact")
    run.add_argument("--signing", choices=("per-reading", "batch"),
                     help="one HSM signature per reading, or per batch (config: signing, "
                          "batch_max, batch_delay_s)")
    run.add_argument("--rig", type=Path, help="SoftHSM test rig folder (PINs from its pins.json)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)
    status = agent_sub.add_parser(
        "status", help="backlog, last seq and last receipt, read from an agent's outbox",
        description="Read an agent's outbox (safe while the agent runs) and print one JSON "
                    "object: backlog, unsealed, in_flight, last_seq, receipt_seq, "
                    "receipt_height, receipt_at_ms, thinned, dropped, outbox_bytes.")
    status.add_argument("--config", type=Path, help="TOML file with an [agent] table")
    status.add_argument("--data", type=Path, dest="data_dir", help="agent data folder")
    status.set_defaults(func=_status)


def register_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Field engineers' tools at the top level: `trustfleet nmea-decode FILE`."""
    from edge_agent import nmea_decode

    nmea_decode.register(sub)


def _status(args: argparse.Namespace) -> int:
    from edge_agent.status import read_status

    data_dir: Path | None = args.data_dir
    if data_dir is None and args.config is not None:
        from trustfleet.tomlconfig import TomlConfigError, read_table

        try:
            table, _ = read_table(args.config, "agent")
        except TomlConfigError as exc:
            print(f"trustfleet agent status: {exc}", file=sys.stderr)
            return 2
        data_dir = Path(table.get("data_dir", "var/trucks/truck-1"))
    if data_dir is None:
        print("trustfleet agent status: give --data or --config", file=sys.stderr)
        return 2
    path = data_dir / "outbox.sqlite"
    if not path.is_file():
        print(f"trustfleet agent status: no outbox at {path}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(read_status(path)))
    except EdgeAgentError as exc:
        print(f"trustfleet agent status: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import EdgeAgent
    from edge_agent.clock import AgentClock
    from edge_agent.config import load_agent_config
    from edge_agent.sensors import build_collectors
    from hsm import signer_from_settings
    from hsm.errors import HsmError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_agent_config(args.config, device_id=args.device_id, fleet=args.fleet,
                                data_dir=args.data_dir, broker_host=args.broker_host,
                                broker_port=args.broker_port, gps_source=args.gps_source,
                                gps_port=args.gps_port, gpsd_host=args.gpsd_host,
                                gpsd_port=args.gpsd_port, w1_dir=args.w1_dir,
                                rfid_port=args.rfid_port, llrp_host=args.llrp_host,
                                llrp_port=args.llrp_port,
                                i2c_bus=args.i2c_bus, door_gpio=args.door_gpio,
                                signing=args.signing,
                                pkcs11_module=os.environ.get("TRUSTFLEET_PKCS11_MODULE"))
        signer = signer_from_settings(cfg.pkcs11_module, cfg.token, rig_dir=args.rig,
                                      pin_env="TRUSTFLEET_DEVICE_PIN",
                                      pin_file_env="TRUSTFLEET_DEVICE_PIN_FILE")
    except (EdgeAgentError, HsmError) as exc:
        print(f"trustfleet agent: {exc}", file=sys.stderr)
        return 2

    clock = AgentClock()
    try:
        agent = EdgeAgent(cfg, signer, build_collectors(cfg, clock), clock)
    except EdgeAgentError as exc:
        signer.close()
        print(f"trustfleet agent: {exc}", file=sys.stderr)
        return 2

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
