"""Edge agent configuration: a frozen value object with named defaults, loaded from TOML.

    [agent]
    device_id = "truck-1"          # also the HSM token label unless token_label is set
    fleet = "demo"
    data_dir = "var/trucks/truck-1"
    broker_host = "127.0.0.1"
    broker_port = 1883
    tls_ca = "/etc/trustfleet/fleet-ca.pem"   # optional: MQTT over TLS with these files
    tls_cert = "/etc/trustfleet/device.pem"
    tls_key = "/etc/trustfleet/device.key"
    reconnect_min_s = 0.5          # broker reconnect: exponential backoff with jitter
    reconnect_max_s = 30.0
    # sensors (at least one)
    gps_source = "serial"          # "serial": NMEA 0183 on gps_port; "gpsd": gpsd's JSON
    gps_port = "/dev/ttyUSB0"      # serial port (or pty) speaking NMEA 0183
    gps_baudrate = 9600
    gpsd_host = "127.0.0.1"        # with gps_source = "gpsd": where gpsd listens
    gpsd_port = 2947
    gps_interval_s = 1.0           # at most one GPS reading per interval
    w1_dir = "/sys/bus/w1/devices" # 1-wire sysfs devices folder (DS18B20 probes)
    temp_interval_s = 5.0
    temp_low_c = 2.0               # outside [temp_low_c, temp_high_c] is an excursion:
    temp_high_c = 8.0              #   such readings are never thinned
    rfid_port = "/dev/ttyACM0"     # serial RFID reader, one tag per line
    rfid_repeat_s = 10.0           # the same tag again within this is not a new scan
    llrp_host = "192.168.1.50"     # fixed UHF reader speaking LLRP (sllurp), also rfid_repeat_s
    llrp_port = 5084
    llrp_antennas = "1,2"          # antenna ports to inventory ("0": all the reader has)
    llrp_keepalive_s = 10.0        # the reader sends a keepalive this often; 3 missed: reconnect
    i2c_bus = "1"                  # ADXL345 accelerometer: /dev/i2c-N number
    i2c_address = 83               # 0x53
    shock_floor_g = 2.0            # report a window whose peak is at least this
    shock_window_s = 1.0
    door_gpio = "/sys/class/gpio/gpio17/value"  # door contact (1 = open unless active_low)
    door_active_low = false
    # delivery
    resend_after_s = 15.0          # resend a reading not receipted after this long ...
    resend_max_s = 120.0           # ... doubling per attempt up to this
    max_publish_per_s = 200        # drain rate for backlogs after an outage
    window = 1000                  # sealed readings awaiting a receipt, at most
    message_max = 50               # envelopes per MQTT message, at most
    # signing (DESIGN.md §4): one HSM signature per reading, or one per batch of readings
    signing = "per-reading"        # or "batch": for slow secure elements / fast sensors
    batch_max = 64                 # batch: readings under one signature, at most (<= 4096)
    batch_delay_s = 2.0            # batch: the longest a reading waits for its batch
    # outbox and self-report
    outbox_max_mb = 128            # disk budget; see edge_agent.retention for the policy
    status_interval_s = 60.0       # a `status` reading this often (0: never)
    metrics_port = 9101            # Prometheus /metrics on 127.0.0.1 (0 or absent: off)

Errors name the file, the line and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import AgentConfigError
from trustfleet.batch import MAX_BATCH
from trustfleet.tomlconfig import TomlConfigError, load_dataclass
from trustfleet.topics import check_name

DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
GPS_SOURCES = ("serial", "gpsd")
SIGNING_MODES = ("per-reading", "batch")


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = "truck-1"
    fleet: str = "demo"
    data_dir: Path = Path("var/trucks/truck-1")
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    pkcs11_module: str = DEFAULT_PKCS11_MODULE
    token_label: str | None = None
    gps_source: str = "serial"
    gps_port: str | None = None
    gps_baudrate: int = 9600
    gpsd_host: str = "127.0.0.1"
    gpsd_port: int = 2947
    gps_interval_s: float = 1.0
    w1_dir: Path | None = None
    temp_interval_s: float = 5.0
    temp_low_c: float = 2.0
    temp_high_c: float = 8.0
    rfid_port: str | None = None
    rfid_baudrate: int = 9600
    rfid_repeat_s: float = 10.0
    llrp_host: str | None = None
    llrp_port: int = 5084
    llrp_antennas: str = "0"
    llrp_keepalive_s: float = 10.0
    i2c_bus: str | None = None
    i2c_address: int = 0x53
    shock_floor_g: float = 2.0
    shock_window_s: float = 1.0
    door_gpio: Path | None = None
    door_active_low: bool = False
    resend_after_s: float = 15.0
    resend_max_s: float = 120.0
    max_publish_per_s: int = 200
    window: int = 1000
    message_max: int = 50
    signing: str = "per-reading"
    batch_max: int = 64
    batch_delay_s: float = 2.0
    outbox_max_mb: float = 128.0
    status_interval_s: float = 60.0
    metrics_port: int = 0
    """Serve Prometheus metrics at http://127.0.0.1:{port}/metrics (edge_agent.metrics); 0: off."""

    @property
    def token(self) -> str:
        return self.token_label or self.device_id

    @property
    def llrp_antenna_ports(self) -> tuple[int, ...]:
        """`llrp_antennas` as port numbers (0 alone: every antenna of the reader)."""
        return parse_antennas(self.llrp_antennas)

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite"

    @property
    def outbox_max_bytes(self) -> int:
        return int(self.outbox_max_mb * 1024 * 1024)

    def validate(self) -> AgentConfig:
        try:
            check_name(self.device_id, "device_id")
            check_name(self.fleet, "fleet")
        except ValueError as exc:
            raise AgentConfigError(str(exc)) from None
        for name in ("broker_port", "gpsd_port", "llrp_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise AgentConfigError(f"{name} {getattr(self, name)} is not a port number")
        if self.gps_source not in GPS_SOURCES:
            raise AgentConfigError(f"gps_source must be one of {', '.join(GPS_SOURCES)}, "
                                   f"got {self.gps_source!r}")
        if self.gps_source == "gpsd" and self.gps_port:
            raise AgentConfigError('gps_port is for gps_source = "serial"; with "gpsd" the '
                                   "receiver is gpsd's (set gpsd_host and gpsd_port)")
        try:
            parse_antennas(self.llrp_antennas)
        except ValueError as exc:
            raise AgentConfigError(f"llrp_antennas: {exc}") from None
        for name in ("gps_interval_s", "temp_interval_s", "resend_after_s", "resend_max_s",
                     "reconnect_min_s", "reconnect_max_s", "shock_window_s",
                     "llrp_keepalive_s"):
            if not 0.05 <= getattr(self, name) <= 86_400:
                raise AgentConfigError(f"{name} must be between 0.05 and 86400 seconds")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise AgentConfigError("reconnect_min_s must not exceed reconnect_max_s")
        if self.resend_max_s < self.resend_after_s:
            raise AgentConfigError("resend_max_s must be at least resend_after_s")
        if not (self.status_interval_s == 0 or 1 <= self.status_interval_s <= 86_400):
            raise AgentConfigError("status_interval_s must be 0 (off) or 1..86400 seconds")
        if not 1 <= self.max_publish_per_s <= 100_000:
            raise AgentConfigError("max_publish_per_s must be between 1 and 100000")
        if not 1 <= self.window <= 100_000:
            raise AgentConfigError("window must be between 1 and 100000")
        if not 1 <= self.message_max <= 1000:
            raise AgentConfigError("message_max must be between 1 and 1000 (envelopes/message)")
        if self.signing not in SIGNING_MODES:
            raise AgentConfigError(f"signing must be one of {', '.join(SIGNING_MODES)}, "
                                   f"got {self.signing!r}")
        if not 1 <= self.batch_max <= MAX_BATCH:
            raise AgentConfigError(f"batch_max must be between 1 and {MAX_BATCH} "
                                   "(readings per signature)")
        if not 0.0 <= self.batch_delay_s <= 3600:
            raise AgentConfigError("batch_delay_s must be between 0 and 3600 seconds")
        if self.signing == "batch" and self.batch_max > self.window:
            raise AgentConfigError(f"batch_max ({self.batch_max}) must not exceed window "
                                   f"({self.window}): a batch is sealed only when the send "
                                   "window has room for it")
        if not 1 <= self.outbox_max_mb <= 1_000_000:
            raise AgentConfigError("outbox_max_mb must be between 1 and 1000000")
        if self.temp_low_c >= self.temp_high_c:
            raise AgentConfigError("temp_low_c must be below temp_high_c")
        if not 0 <= self.metrics_port <= 65535:
            raise AgentConfigError(f"metrics_port {self.metrics_port} is not a port number "
                                   "(0: no metrics server)")
        if not 0x03 <= self.i2c_address <= 0x77:
            raise AgentConfigError("i2c_address must be a 7-bit address (3..119)")
        if (self.tls_cert is None) != (self.tls_key is None) or (
                self.tls_cert is not None and self.tls_ca is None):
            raise AgentConfigError("tls_cert and tls_key go together, and need tls_ca")
        if not any((self.gps_port, self.gps_source == "gpsd", self.w1_dir, self.rfid_port,
                    self.llrp_host, self.i2c_bus, self.door_gpio)):
            raise AgentConfigError("no sensor configured: set gps_port (or gps_source = "
                                   '"gpsd"), w1_dir, rfid_port, llrp_host, i2c_bus and/or '
                                   "door_gpio")
        return self


def parse_antennas(text: str) -> tuple[int, ...]:
    """"1,2" -> (1, 2); "0" -> (0,), every antenna. Raises ValueError."""
    try:
        ports = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of antenna ports") from None
    if ports == (0,):
        return ports
    if not ports or len(set(ports)) != len(ports) or not all(1 <= p <= 64 for p in ports):
        raise ValueError(f"{text!r}: antenna ports are 1..64, each once (or 0 alone: all)")
    return ports


def load_agent_config(path: Path | None, **overrides: Any) -> AgentConfig:
    """Defaults, then the file's [agent] table, then the non-None overrides."""
    try:
        cfg = load_dataclass(AgentConfig(), path, "agent", overrides)
    except TomlConfigError as exc:
        raise AgentConfigError(str(exc)) from None
    return cfg.validate()
