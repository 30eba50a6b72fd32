"""Command line of the ledger node: `trustfleet node run` and `trustfleet verify`; the proof
commands (`proof`, `verify-bundle`, `verify-consistency`) live in ledger_node.proof_cli.

Environment (read here only): TRUSTFLEET_NODE_PIN or TRUSTFLEET_NODE_PIN_FILE for the node
token's user PIN (unless --rig names a SoftHSM test rig, whose pins.json is used), and
TRUSTFLEET_PKCS11_MODULE for the PKCS#11 module path.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from hsm import Pkcs11Signer, signer_from_settings
from hsm.errors import HsmError
from ledger_node import proof_cli, quarantine_cli
from ledger_node.config import load_config
from ledger_node.errors import LedgerError, TamperError
from ledger_node.notify import load_webhooks

EXIT_DAMAGED_STORE = 3

log = logging.getLogger("trustfleet.node")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run a ledger node")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    run = node_sub.add_parser(
        "run", help="ingest readings from MQTT, commit signed blocks, serve the API",
        description="Run one ledger node until SIGTERM or Ctrl-C: solo ordering, or one node "
                    "of a consortium with `ordering = \"etcd\"` in the config file "
                    "(docs/consortium.md). At start "
                    "it checks its tip (last block's hash, prev link, signature, root against "
                    "the stored frontier and subtree table). Exit 2 on a configuration error, "
                    "3 if the store is damaged.")
    run.add_argument("--config", type=Path, help="TOML file with a [node] table")
    run.add_argument("--data", type=Path, dest="data_dir", help="node data folder (var/node-1)")
    run.add_argument("--node-id", help="this node's id (node-1)")
    run.add_argument("--broker-host", help="MQTT broker host (127.0.0.1)")
    run.add_argument("--broker-port", type=int, help="MQTT broker port (1883)")
    run.add_argument("--tls-ca", type=Path, dest="tls_ca",
                     help="MQTT over TLS: fleet CA certificate (PEM) the broker must chain to")
    run.add_argument("--tls-cert", type=Path, dest="tls_cert",
                     help="this node's TLS client certificate (PEM, CN = node id)")
    run.add_argument("--tls-key", type=Path, dest="tls_key",
                     help="its private key file (PEM, mode 0600; not the HSM signing key)")
    run.add_argument("--api-host", help="API listen address (127.0.0.1)")
    run.add_argument("--api-port", type=int, help="API port (8080)")
    run.add_argument("--token", dest="token_label", help="HSM token holding the node key")
    run.add_argument("--rig", type=Path, help="SoftHSM test rig folder (PINs from its pins.json)")
    run.add_argument("--fleet-ca", type=Path, dest="fleet_ca",
                     help="fleet CA certificate (PEM/DER) named by a new chain's genesis")
    run.add_argument("--enroll", type=Path, dest="enroll_file",
                     help="JSON file {\"entries\": [base64 operator entries]} to submit at start")
    run.add_argument("--block-interval-ms", type=int, help="longest wait before a block (200)")
    run.add_argument("--heartbeat-ms", type=int, help="cut an empty block after this long "
                     "without one, so contract timers fire (10000; 0: never)")
    run.add_argument("--webhooks", type=Path, dest="webhooks_file",
                     help="TOML file of [webhooks.NAME] tables: where contract events go "
                     "(docs/webhooks.md)")
    run.add_argument("-v", "--verbose", action="store_true", help="log every block")
    run.set_defaults(func=_run)

    verify = sub.add_parser(
        "verify", help="re-check every block, Merkle root and signature in a node's store",
        description="Check a node's store from disk: the log (blocks, entries, signatures) "
                    "and every row derived from it (readings, devices, merkle_nodes). Exit 0 "
                    "with a chain report (per-device gaps and broken prev links), 1 naming "
                    "the first bad block or entry and every damaged index row, 2 if the "
                    "store cannot be read.")
    verify.add_argument("--data", type=Path, required=True,
                        help="node data folder (holding ledger.sqlite), or the sqlite file")
    verify.add_argument("--node-key", type=Path,
                        help="node public key (SPKI DER) to trust instead of the genesis entry")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    verify.set_defaults(func=_verify)

    proof_cli.register(sub)  # proof, verify-bundle, verify-consistency
    quarantine_cli.register(sub)  # quarantine list|show


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, data_dir=args.data_dir, node_id=args.node_id,
                          broker_host=args.broker_host, broker_port=args.broker_port,
                          tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          api_host=args.api_host, api_port=args.api_port,
                          token_label=args.token_label, enroll_file=args.enroll_file,
                          fleet_ca=args.fleet_ca,
                          block_interval_ms=args.block_interval_ms,
                          heartbeat_ms=args.heartbeat_ms, webhooks_file=args.webhooks_file,
                          pkcs11_module=os.environ.get("TRUSTFLEET_PKCS11_MODULE"))
        hooks = load_webhooks(cfg.webhooks_file) if cfg.webhooks_file is not None else {}
        signer = signer_from_settings(cfg.pkcs11_module, cfg.token_label, rig_dir=args.rig,
                                      pin_env="TRUSTFLEET_NODE_PIN",
                                      pin_file_env="TRUSTFLEET_NODE_PIN_FILE")
    except (LedgerError, HsmError) as exc:
        print(f"trustfleet node: {exc}", file=sys.stderr)
        return 2
    return serve(cfg, signer, hooks)


def serve(cfg: object, signer: Pkcs11Signer, hooks: Mapping[str, Any] | None = None) -> int:
    """Run the node until SIGTERM/SIGINT; returns the exit code."""
    import uvicorn

    from ledger_node.api import create_app
    from ledger_node.config import NodeConfig
    from ledger_node.influx_mirror import InfluxMirror
    from ledger_node.node import LedgerNode
    from ledger_node.notify import WebhookSender

    assert isinstance(cfg, NodeConfig)
    node: LedgerNode | None = None
    try:
        node = LedgerNode(cfg, signer)
        node.prepare()
        mirror = InfluxMirror.for_node(cfg)
        if hooks:
            node.webhooks = WebhookSender(cfg.db_path, cfg.data_dir / "webhooks.sqlite",
                                          dict(hooks), cfg.chain, cfg.node_id)
    except TamperError as exc:
        print(f"trustfleet node: refusing to start: the store {cfg.db_path} is damaged: {exc}\n"
              f"trustfleet node: `trustfleet verify --data {cfg.data_dir}` checks all of it",
              file=sys.stderr)
        signer.close()
        return EXIT_DAMAGED_STORE
    except LedgerError as exc:
        print(f"trustfleet node: {exc}", file=sys.stderr)
        if node is not None:
            node.shutdown()
        signer.close()
        return 2

    def status() -> dict[str, Any]:
        return {**node.status(), **({"influx": mirror.status()} if mirror else {})}

    app = create_app(cfg.db_path, status, node.submit_admin, audit=node.record_audit)
    if node.consortium is not None:  # block sync, quorum certificates, evidence
        from ledger_node.consortium_api import create_router as consortium_router

        app.include_router(consortium_router(cfg.db_path, status))
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.api_host, port=cfg.api_port,
                                           log_level="warning", lifespan="off"))
    api_thread = threading.Thread(target=server.run, name="api", daemon=True)
    api_thread.start()
    # Everything allocated so far lives as long as the process: keep the collector from
    # walking it again and again (full collections otherwise add tens of ms to API answers).
    gc.collect()
    gc.freeze()
    node.connect()
    if mirror is not None:
        mirror.start()
    if node.webhooks is not None:
        node.webhooks.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the current block and stopping",
                 signal.Signals(signum).name)
        # off this handler: request_stop takes the inbox lock, which the code this handler
        # interrupted may hold
        threading.Thread(target=node.request_stop, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("node %s serving API on http://%s:%d, broker %s", cfg.node_id,
             cfg.api_host, cfg.api_port, node.broker_url)
    try:
        node.run()
    finally:
        server.should_exit = True
        api_thread.join(timeout=5)
        if node.webhooks is not None:
            node.webhooks.stop(5)
        if mirror is not None:
            mirror.stop()
        node.shutdown()
        signer.close()
    log.info("node %s stopped at height %d", cfg.node_id, node.chain.height)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ledger_node.verify import describe, verify_store

    db = args.data if args.data.is_file() else args.data / "ledger.sqlite"
    node_key = args.node_key.read_bytes() if args.node_key else None
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show and (done == total or done % 100 == 0):
            width = 30
            filled = width * done // max(total, 1)
            print(f"\rverifying [{'#' * filled}{'.' * (width - filled)}] {done}/{total} blocks",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        report = verify_store(db, node_key=node_key, progress=progress)
    except LedgerError as exc:
        print(f"trustfleet verify: {exc}", file=sys.stderr)
        return 2
    print(describe(report))
    return 0 if report.ok else 1
