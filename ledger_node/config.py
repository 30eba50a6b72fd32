"""Ledger node configuration: a frozen value object with named defaults.

Read from a TOML file (`trustfleet node run --config node.toml`) and/or command-line flags.
Unknown keys and wrong types are errors that name the key; TOML syntax errors carry the
line and column. Environment variables are read only by the CLI entry point.

MQTT over TLS: set tls_ca (fleet CA certificate) and tls_cert + tls_key (the node's TLS
client certificate, CN = node_id, and its key file). The TLS key is a file, separate from
the node's signing key in the HSM (docs/tls.md).

Mirroring committed readings to InfluxDB (ledger_node.influx_mirror, docs/metrics.md) is set
in its own `[influx]` table; without that table it is off:

    [influx]
    url = "http://127.0.0.1:8086"   # the InfluxDB 2 server (http or https, no credentials)
    org = "logistics"
    bucket = "trustfleet"
    token_file = "/etc/trustfleet/influx.token"   # or token = "..." (not both)
    batch_size = 5000               # points per write, at most
    flush_interval_s = 1.0          # longest a committed reading waits to be written
    max_retry_backoff_s = 30.0      # longest wait between retries while the server is away
    timeout_s = 10.0                # one write request, at most
    measurement = "reading"
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ledger_node.errors import ConfigError
from ledger_node.quarantine import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, QuarantineLimits
from trustfleet.tomlconfig import TomlConfigError, apply_values, load_dataclass, read_table

DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MAX_TOKEN_BYTES = 4096
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class InfluxConfig:
    """Where and how committed readings are mirrored (the `[influx]` table)."""

    url: str = "http://127.0.0.1:8086"
    org: str = ""
    bucket: str = ""
    token: str = field(default="", repr=False)
    """The API token itself; prefer token_file, which keeps it out of the config file."""
    token_file: Path | None = None
    batch_size: int = 5000
    flush_interval_s: float = 1.0
    max_retry_backoff_s: float = 30.0
    timeout_s: float = 10.0
    measurement: str = "reading"

    def problem(self) -> tuple[str, str] | None:
        """The first (key, what is wrong with it), or None if the settings are usable."""
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            return "url", f"url {self.url!r} is not usable: {exc}"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "url", f"url {self.url!r} must be http:// or https:// and name a host"
        if parts.username is not None or parts.password is not None or parts.query \
                or parts.fragment:
            return "url", "url must not carry credentials, a query or a fragment " \
                          "(the token goes in token or token_file)"
        if port == 0:
            return "url", "url must not name port 0"
        for key in ("org", "bucket"):
            value = getattr(self, key)
            if not 1 <= len(value) <= 255 or not value.isprintable():
                return key, f"{key} must be 1 to 255 printable characters"
        if self.token and self.token_file is not None:
            return "token", "set token or token_file, not both"
        if not _NAME_RE.match(self.measurement):
            return "measurement", "measurement must be a name of [A-Za-z0-9_], at most 64"
        ranges = (("batch_size", 1, 100_000), ("flush_interval_s", 0.01, 3600.0),
                  ("max_retry_backoff_s", 0.1, 3600.0), ("timeout_s", 0.1, 600.0))
        for key, low, high in ranges:
            if not low <= getattr(self, key) <= high:
                return key, f"{key} must be between {low:g} and {high:g}"
        return None

    def validate(self) -> InfluxConfig:
        found = self.problem()
        if found is not None:
            raise ConfigError(f"[influx] {found[1]}")
        return self

    def read_token(self) -> str:
        """The token, from `token` or read from `token_file` (surrounding whitespace removed).

        Raises ConfigError naming the file when it cannot be read or holds no usable token."""
        if self.token_file is None:
            return self.token
        try:
            data = self.token_file.read_bytes()[:MAX_TOKEN_BYTES + 1]
        except OSError as exc:
            raise ConfigError(f"[influx] token_file {self.token_file}: cannot read: "
                              f"{exc.strerror}") from None
        try:
            token = data.decode().strip()
        except UnicodeDecodeError:
            token = ""
        if len(data) > MAX_TOKEN_BYTES or not token or not token.isprintable() \
                or any(c.isspace() for c in token):
            raise ConfigError(f"[influx] token_file {self.token_file} does not hold one token "
                              f"(printable, no spaces, at most {MAX_TOKEN_BYTES} bytes)")
        return token


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
    webhooks_file: Path | None = None
    """TOML file of `[webhooks.NAME]` tables (ledger_node.notify, docs/webhooks.md); None: no
    webhooks. The file itself is read and checked by ledger_node.notify.load_webhooks."""
    block_interval_ms: int = 200
    heartbeat_ms: int = 10_000
    """With no other block for this long, the node cuts an empty one: ledger time advances and
    contract timers (deadlines, silent devices) fire in a quiet fleet. 0: never."""
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
    influx: InfluxConfig | None = None
    """Mirror committed readings to InfluxDB (the file's `[influx]` table; None: off)."""
    ordering: str = "solo"
    """"solo": this node orders its own blocks; "etcd": one node of a consortium whose
    batches an etcd cluster orders (docs/consortium.md). The settings below are for "etcd"."""
    etcd_endpoints: str = ""
    """etcd client URLs, comma-separated ("http://10.0.0.1:2379,http://10.0.0.2:2379")."""
    etcd_prefix: str = "/trustfleet"
    """Key prefix of the consortium's chains in etcd (keys: PREFIX/CHAIN/...)."""
    etcd_max_batch_bytes: int = 1_000_000
    """Largest proposal put in etcd (below etcd's --max-request-bytes)."""
    etcd_retain_revisions: int = 200_000
    """etcd history kept for a node that is behind or down; older history is compacted even
    if a node has not applied it (that node then catches up from its peers)."""
    node_set_file: Path | None = None
    """JSON {"nodes": [{"node": id, "cert": base64 DER}]}: the consortium's node certificates
    (role node, from the fleet CA), named by a new chain's genesis entry and checked against
    it when catching up."""
    peers_file: Path | None = None
    """JSON {"peers": [{"node": id, "url": API base URL, "token": API token}]}: where to
    catch up from (block sync) when etcd's history no longer reaches back far enough."""
    max_clock_skew_ms: int = 30_000
    """A batch stamped further than this from this node's clock is applied but not signed."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def verify_processes(self) -> int:
        """How many verification worker processes the node runs (verify_workers resolved)."""
        return (os.cpu_count() or 1) if self.verify_workers is None else self.verify_workers

    @property
    def etcd_endpoint_list(self) -> list[str]:
        return [e.strip() for e in self.etcd_endpoints.split(",") if e.strip()]

    @property
    def quarantine_limits(self) -> QuarantineLimits:
        return QuarantineLimits(self.quarantine_max_rows, self.quarantine_max_bytes)

    def validate(self) -> NodeConfig:
        if not 1 <= self.broker_port <= 65535 or not 0 <= self.api_port <= 65535:
            raise ConfigError("ports must be between 1 and 65535")
        if (self.tls_cert is None) != (self.tls_key is None) or (
                self.tls_cert is not None and self.tls_ca is None):
            raise ConfigError("tls_cert and tls_key go together, and need tls_ca")
        if self.webhooks_file is not None and not self.webhooks_file.is_file():
            raise ConfigError(f"webhooks_file {self.webhooks_file} is not a file")
        if not 10 <= self.block_interval_ms <= 60_000:
            raise ConfigError("block_interval_ms must be between 10 and 60000")
        if self.heartbeat_ms != 0 and not 100 <= self.heartbeat_ms <= 3_600_000:
            raise ConfigError("heartbeat_ms must be 0 (off) or between 100 and 3600000")
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
        if self.influx is not None:
            self.influx.validate()
        self._validate_ordering()
        return self

    def _validate_ordering(self) -> None:
        if self.ordering not in ("solo", "etcd"):
            raise ConfigError(f"ordering must be \"solo\" or \"etcd\", not {self.ordering!r}")
        if self.ordering != "etcd":
            return
        if not self.etcd_endpoint_list:
            raise ConfigError("ordering = \"etcd\" needs etcd_endpoints (client URLs)")
        for url in self.etcd_endpoint_list:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError as exc:
                raise ConfigError(f"etcd_endpoints: {url!r}: {exc}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path \
                    not in ("", "/") or parts.username or parts.query:
                raise ConfigError(f"etcd_endpoints: {url!r} must be http(s)://host:port")
        if not self.etcd_prefix.startswith("/") or len(self.etcd_prefix) > 128 \
                or not self.etcd_prefix.isprintable():
            raise ConfigError("etcd_prefix must start with / (at most 128 printable characters)")
        if not 64 * 1024 <= self.etcd_max_batch_bytes <= 64 * 1024 * 1024:
            raise ConfigError("etcd_max_batch_bytes must be between 65536 and 67108864")
        if self.etcd_retain_revisions < 100:
            raise ConfigError("etcd_retain_revisions must be at least 100")
        if not 100 <= self.max_clock_skew_ms <= 3_600_000:
            raise ConfigError("max_clock_skew_ms must be between 100 and 3600000")
        if self.node_set_file is None:
            raise ConfigError("ordering = \"etcd\" needs node_set_file (the consortium's "
                              "node certificates)")


def load_config(path: Path | None, **overrides: Any) -> NodeConfig:
    """Defaults, then the TOML file's [node] table, then non-None overrides; the file's
    [influx] table, if it has one, turns the InfluxDB mirror on."""
    try:
        cfg = load_dataclass(NodeConfig(), path, "node", overrides)
        influx = load_influx(path) if path is not None else None
    except TomlConfigError as exc:
        raise ConfigError(str(exc)) from None
    return replace(cfg, influx=influx).validate()


def load_influx(path: Path) -> InfluxConfig | None:
    """The `[influx]` table of a TOML file (None when it has none), checked; errors name the
    file, the line and the key. Raises ConfigError (or TomlConfigError for syntax and types)."""
    values, text = read_table(path, "influx")
    if "influx" not in tomllib.loads(text):
        return None
    cfg = apply_values(InfluxConfig(), values, str(path), text)
    found = cfg.problem()
    if found is not None:
        key, message = found
        line = _line_in_table(text, "influx", key)
        where = f"{path}, line {line}" if line else str(path)
        raise ConfigError(f"{where}: [influx] {message}")
    return cfg


def _line_in_table(text: str, table: str, key: str) -> int | None:
    """The line of `key = ...` inside `[table]` (None when it is not written there)."""
    header = re.search(rf"^[ \t]*\[[ \t]*{re.escape(table)}[ \t]*\][ \t]*(#.*)?$", text,
                       re.MULTILINE)
    if header is None:
        return None
    body = text[header.end():]
    end = re.search(r"^[ \t]*\[", body, re.MULTILINE)
    body = body[:end.start()] if end else body
    m = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", body, re.MULTILINE)
    return None if m is None else text.count("\n", 0, header.end() + m.start()) + 1
