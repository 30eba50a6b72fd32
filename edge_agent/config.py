"""Edge agent configuration: a frozen value object with named defaults, loaded from TOML.

    [agent]
    device_id = "truck-1"          # also the HSM token label unless token_label is set
    fleet = "demo"
    data_dir = "var/trucks/truck-1"
    broker_host = "127.0.0.1"
    broker_port = 1883
    gps_port = "var/trucks/truck-1/gps.tty"   # serial port (or pty) speaking NMEA 0183
    gps_baudrate = 9600
    gps_interval_s = 1.0           # at most one GPS reading per interval
    w1_dir = "/sys/bus/w1/devices" # 1-wire sysfs devices folder (DS18B20 probes)
    temp_interval_s = 5.0
    resend_after_s = 15.0          # resend a reading not receipted after this long
    max_publish_per_s = 200        # drain rate for backlogs after an outage

Errors name the file, the line and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import AgentConfigError
from trustfleet.tomlconfig import TomlConfigError, load_dataclass
from trustfleet.topics import check_name

DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = "truck-1"
    fleet: str = "demo"
    data_dir: Path = Path("var/trucks/truck-1")
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    pkcs11_module: str = DEFAULT_PKCS11_MODULE
    token_label: str | None = None
    gps_port: str | None = None
    gps_baudrate: int = 9600
    gps_interval_s: float = 1.0
    w1_dir: Path | None = None
    temp_interval_s: float = 5.0
    resend_after_s: float = 15.0
    max_publish_per_s: int = 200

    @property
    def token(self) -> str:
        return self.token_label or self.device_id

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite"

    def validate(self) -> AgentConfig:
        try:
            check_name(self.device_id, "device_id")
            check_name(self.fleet, "fleet")
        except ValueError as exc:
            raise AgentConfigError(str(exc)) from None
        if not 1 <= self.broker_port <= 65535:
            raise AgentConfigError(f"broker_port {self.broker_port} is not a port number")
        for name in ("gps_interval_s", "temp_interval_s", "resend_after_s"):
            if not 0.05 <= getattr(self, name) <= 86_400:
                raise AgentConfigError(f"{name} must be between 0.05 and 86400 seconds")
        if not 1 <= self.max_publish_per_s <= 100_000:
            raise AgentConfigError("max_publish_per_s must be between 1 and 100000")
        if self.gps_port is None and self.w1_dir is None:
            raise AgentConfigError("no sensor configured: set gps_port and/or w1_dir")
        return self


def load_agent_config(path: Path | None, **overrides: Any) -> AgentConfig:
    """Defaults, then the file's [agent] table, then the non-None overrides."""
    try:
        cfg = load_dataclass(AgentConfig(), path, "agent", overrides)
    except TomlConfigError as exc:
        raise AgentConfigError(str(exc)) from None
    return cfg.validate()
