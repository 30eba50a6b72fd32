"""Ledger node configuration: a frozen value object with named defaults.

Read from a TOML file (`trustfleet node run --config node.toml`) and/or command-line flags.
Unknown keys and wrong types are errors that name the key; TOML syntax errors carry the
line and column. Environment variables are read only by the CLI entry point.

MQTT over TLS: set tls_ca (fleet CA certificate) and tls_cert + tls_key (the node's TLS
client certificate, CN = node_id, and its key file). The TLS key is a file, separate from
the node's signing key in the HSM (docs/tls.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger_node.errors import ConfigError
from ledger_node.quarantine import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, QuarantineLimits
from trustfleet.tomlconfig import TomlConfigError, load_dataclass

DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = Path("var/node-1")
    node_id: str = "node-1"
    chain: str = "main"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    tls_ca: Path | None = None
    """MQTT over TLS: the fleet CA certificate the broker's certificate must chain to ..."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    """... and this node's TLS client certificate and key (files; not the HSM signing key)."""
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    pkcs11_module: str = DEFAULT_PKCS11_MODULE
    token_label: str = "node-1"
    enroll_file: Path | None = None
    fleet_ca: Path | None = None
    block_interval_ms: int = 200
    max_block_entries: int = 10_000
    max_message_bytes: int = 1 << 20
    verify_workers: int | None = None
    """Worker processes that open envelopes and check their signatures (None: one per CPU;
    0: none, the apply thread does it). Results never depend on this (ledger_node.validate)."""
    ingest_queue: int = 100_000
    """Messages from enrolled devices' topics held before ingest pushes back on the broker."""
    ingest_suspect_queue: int = 20_000
    ingest_suspect_bytes: int = 64 * 1024 * 1024
    """Caps on queued suspect input (ledger_node.ingest); beyond them it is summarised."""
    ingest_suspect_share: float = 0.25
    """Largest share of the apply thread's time spent on suspect input under load."""
    quarantine_max_rows: int = DEFAULT_MAX_ROWS
    quarantine_max_bytes: int = DEFAULT_MAX_BYTES
    """Caps on stored rejected input; older rows are summarised (ledger_node.quarantine)."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def verify_processes(self) -> int:
        """How many verification worker processes the node runs (verify_workers resolved)."""
        return (os.cpu_count() or 1) if self.verify_workers is None else self.verify_workers

    @property
    def quarantine_limits(self) -> QuarantineLimits:
        return QuarantineLimits(self.quarantine_max_rows, self.quarantine_max_bytes)

    def validate(self) -> NodeConfig:
        if not 1 <= self.broker_port <= 65535 or not 0 <= self.api_port <= 65535:
            raise ConfigError("ports must be between 1 and 65535")
        if (self.tls_cert is None) != (self.tls_key is None) or (
                self.tls_cert is not None and self.tls_ca is None):
            raise ConfigError("tls_cert and tls_key go together, and need tls_ca")
        if not 10 <= self.block_interval_ms <= 60_000:
            raise ConfigError("block_interval_ms must be between 10 and 60000")
        if not 1 <= self.max_block_entries <= 1_000_000:
            raise ConfigError("max_block_entries must be between 1 and 1000000")
        if self.verify_workers is not None and not 0 <= self.verify_workers <= 256:
            raise ConfigError("verify_workers must be between 0 and 256")
        for name in ("ingest_queue", "ingest_suspect_queue", "ingest_suspect_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 0.01 <= self.ingest_suspect_share <= 0.9:
            raise ConfigError("ingest_suspect_share must be between 0.01 and 0.9")
        for name in ("quarantine_max_rows", "quarantine_max_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (summarise everything) or more")
        return self


def load_config(path: Path | None, **overrides: Any) -> NodeConfig:
    """Defaults, then the TOML file's [node] table, then non-None overrides."""
    try:
        cfg = load_dataclass(NodeConfig(), path, "node", overrides)
    except TomlConfigError as exc:
        raise ConfigError(str(exc)) from None
    return cfg.validate()
