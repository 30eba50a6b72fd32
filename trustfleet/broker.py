"""A Mosquitto broker of our own: generated config, loopback port, persistence on; and the TLS
context MQTT clients (edge agents, ledger nodes) use to reach it.

Two modes (write_config / start_broker):

  plaintext   (tls=None) one listener on 127.0.0.1, anonymous clients, no ACL. For tests and
              benchmarks that exercise other things.
  TLS         (tls=BrokerTls) one TLS-only listener on 127.0.0.1: the broker's certificate
              (role broker, from hsm.tlsfiles), `require_certificate true` with the fleet CA as
              the only trust anchor, `use_identity_as_username true` (the MQTT username IS the
              certificate's CN: a device id or a node id) and `use_username_as_clientid true`
              (the client id too, so no client can take over another's session or kick it
              off by reusing its client id). Access control is Mosquitto's dynamic-security
              plugin with a generated, default-deny config (dynamic-security.json):

      device D of fleet F    publish   tf/v1/F/D/up
                             subscribe tf/v1/F/D/receipt (exactly), and receive it
      node N                 subscribe $share/ledger/tf/v1/+/+/up or tf/v1/+/+/up, and
                             receive tf/v1/+/+/up
                             publish   tf/v1/+/+/receipt and tf/v1/+/events/#
      anything else          refused: a PUBLISH gets PUBACK "Not authorized" (the message is
                             dropped), a SUBSCRIBE gets SUBACK "Not authorized"

Why not an acl_file: Mosquitto 2.0's acl_file checks publish (write) and delivery (read) but
never SUBSCRIBE, and a shared subscription hands each message to ONE member of the group,
checks that member's read access only then, and drops the message if it is denied. So any
client with a valid certificate could join `$share/ledger/...` and swallow a share of every
device's readings (nothing is lost for good: agents resend what is not receipted, but it
delays the fleet at will). The dynamic-security plugin checks SUBSCRIBE (the full filter,
`$share/<group>/` included), which closes that. In 2.0.11 it does not expand %u in topics,
hence one literal role per device; adding a device to the fleet means adding it here (and
restarting the broker, or using `mosquitto_ctrl dynsec`). See docs/tls.md.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pwd
import shutil
import ssl
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from trustfleet.procs import port_open, wait_for
from trustfleet.topics import LEDGER_SHARE_GROUP, PREFIX, check_name, receipt_topic, up_topic

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")
DYNSEC_PLUGIN_GLOBS: Final = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
)
DYNSEC_FILE: Final = "dynamic-security.json"
NODE_ROLE: Final = "ledger-node"

log = logging.getLogger("trustfleet.broker")


def mosquitto_binary() -> str:
    for name in MOSQUITTO_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("mosquitto not found: install it with `apt-get install mosquitto` "
                            "(make demo / make test do this for you)")


def dynsec_plugin() -> str:
    """Path of Mosquitto's dynamic-security plugin (shipped with mosquitto >= 2.0)."""
    for pattern in DYNSEC_PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError("mosquitto_dynamic_security.so not found: the TLS broker needs "
                            "Mosquitto >= 2.0 with its dynamic-security plugin")


@dataclass(frozen=True)
class BrokerTls:
    """The TLS listener's files and who may do what (see the module docstring).

    ca: the fleet CA certificate (PEM), the only anchor for client certificates;
    cert / key: the broker's own certificate (role broker) and its key;
    devices: fleet -> the device ids of that fleet (each id = a certificate CN);
    nodes: ledger node ids (certificate CNs) allowed to ingest and send receipts.
    """

    ca: Path
    cert: Path
    key: Path
    devices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    nodes: Sequence[str] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for fleet, devs in self.devices.items():
            check_name(fleet, "fleet")
            for dev in devs:
                check_name(dev, "device")
                if dev in seen:
                    raise ValueError(f"device {dev!r} is listed twice ({seen[dev]}, {fleet})")
                seen[dev] = fleet
        for node in self.nodes:
            check_name(node, "node id")
            if node in seen:
                # The broker knows a client only by its certificate CN: a device whose id is a
                # node's would get the node's rights.
                raise ValueError(f"{node!r} is both a node and a device of fleet {seen[node]}")


def dynsec_config(tls: BrokerTls) -> dict[str, Any]:
    """The dynamic-security plugin's configuration for `tls` (default deny)."""
    roles: list[dict[str, Any]] = [{
        "rolename": NODE_ROLE,
        "acls": [
            _acl("subscribeLiteral", f"$share/{LEDGER_SHARE_GROUP}/{PREFIX}/+/+/up"),
            _acl("subscribeLiteral", f"{PREFIX}/+/+/up"),
            _acl("publishClientReceive", f"{PREFIX}/+/+/up"),
            _acl("publishClientSend", f"{PREFIX}/+/+/receipt"),
            _acl("publishClientSend", f"{PREFIX}/+/events/#"),
        ],
    }]
    clients: list[dict[str, Any]] = [
        {"username": node, "roles": [{"rolename": NODE_ROLE}]} for node in tls.nodes
    ]
    for fleet, devs in sorted(tls.devices.items()):
        for dev in devs:
            role = f"device:{fleet}:{dev}"
            roles.append({"rolename": role, "acls": [
                _acl("publishClientSend", up_topic(fleet, dev)),
                _acl("subscribeLiteral", receipt_topic(fleet, dev)),
                _acl("publishClientReceive", receipt_topic(fleet, dev)),
            ]})
            clients.append({"username": dev, "roles": [{"rolename": role}]})
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True}


def write_config(directory: Path, port: int, *, max_packet_size: int = 2 * 1024 * 1024,
                 tls: BrokerTls | None = None) -> Path:
    """mosquitto.conf for a loopback listener with persistence in `directory`: plaintext and
    anonymous without `tls`, TLS-only with client certificates and the ACL with it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    conf = directory / "mosquitto.conf"
    if tls is None:
        security = "allow_anonymous true\n"
    else:
        dynsec = directory / DYNSEC_FILE
        _write_private(dynsec, json.dumps(dynsec_config(tls), indent=1) + "\n")
        security = (
            f"cafile {tls.ca.resolve()}\n"
            f"certfile {tls.cert.resolve()}\n"
            f"keyfile {tls.key.resolve()}\n"
            "tls_version tlsv1.2\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
            "use_username_as_clientid true\n"
            "allow_anonymous false\n"
            f"plugin {dynsec_plugin()}\n"
            f"plugin_opt_config_file {dynsec.resolve()}\n")
    conf.write_text(
        "# generated by trustfleet; edits are overwritten at the next start\n"
        + (f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else "")
        + "per_listener_settings false\n"
        f"listener {port} 127.0.0.1\n"
        + security
        + "persistence true\n"
        f"persistence_location {directory / 'data'}/\n"
        "autosave_interval 30\n"
        f"max_packet_size {max_packet_size}\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 100\n"
        "log_dest stdout\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "connection_messages false\n")
    return conf


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    tmp.replace(path)


def start_broker(directory: Path, port: int, log_path: Path, *,
                 tls: BrokerTls | None = None) -> subprocess.Popen[bytes]:
    """Start mosquitto (plaintext, or TLS-only with `tls`) and wait until it accepts
    connections."""
    conf = write_config(directory, port, tls=tls)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    wait_for(lambda: port_open(port), 15, f"mosquitto on port {port}", proc=proc,
             log_file=log_path)
    return proc


# --- clients --------------------------------------------------------------------------------


def client_tls_context(ca: Path, cert: Path | None = None, key: Path | None = None
                       ) -> ssl.SSLContext:
    """The SSL context of an MQTT client: TLS >= 1.2, the server's certificate checked against
    `ca` (the fleet CA) and against the host name or IP address connected to, and our client
    certificate `cert` with its `key` (files; see hsm.tlsfiles for why not the HSM key).

    Raises OSError / ssl.SSLError if a file is missing or unusable."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        if key is not None and stat.S_IMODE(key.stat().st_mode) & 0o077:
            log.warning("TLS key %s is readable by other users (mode %o); it should be 0600",
                        key, stat.S_IMODE(key.stat().st_mode))
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


def broker_url(host: str, port: int, tls: bool) -> str:
    return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
