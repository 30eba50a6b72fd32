"""Contract-event notifications by webhook: signed POSTs, retried, in log order (docs/webhooks.md).

Threads and what they own (the ledger's apply thread owns nothing here and waits on nothing):
  * one daemon worker per configured webhook ("webhook-NAME"): its own read-only connection to
    the ledger store, tailing the `events` table by idx, and its own connection to the state
    file `{data}/webhooks.sqlite`; it sends one event at a time to its webhook;
  * `status()` callers (the API thread): copy the workers' in-memory state under each worker's
    lock and count backlogs through a reader connection opened for the call.
A webhook that is down delays only its own worker; the apply thread commits events to the
store and never learns whether anyone received them. One sender per state file.

Delivery, per webhook: at least once, in log order. The cursor (every event up to it is
handled) moves only after a 2xx answer, a recorded skip, or an event that does not name the
webhook; a crash or `stop()` between a 2xx and the cursor write sends that one event again,
with the same X-TrustFleet-Delivery id, which receivers dedupe on.

    answer                                   what the worker does
    2xx                                      delivered; next event
    408, 429, 5xx, 3xx (never followed),     retried after a backoff (1 s doubling to 5 min,
      network error, timeout, TLS failure    equal jitter), forever; Retry-After in seconds
                                             is honoured up to the cap
    any other 4xx (a rejection)              retried the same way; after `max_rejections`
                                             rejections of one event (default 5; 0: never)
                                             that event is skipped and the skip recorded

Rows that cannot be sent (doc over 256 KiB, not JSON, NaN, not an object, `notify` not a list
of strings, an event name unfit for a header) are skipped with a recorded reason, by every
worker that reads them; nothing here raises out of a worker thread.

Errors:
    ConfigError (ledger_node.errors)
     └── WebhookConfigError    the webhooks file, a secret or the sender's settings are unusable
    StoreError
     └── WebhookStateError     the state file cannot be opened or belongs to another chain
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import re
import sqlite3
import ssl
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from ledger_node.errors import ConfigError, StoreError
from ledger_node.store import open_reader
from trustfleet.topics import check_name

__all__ = ["MAX_EVENT_DOC", "Answer", "HttpTransport", "Planned", "Transport", "Unsendable",
           "WebhookConfig", "WebhookConfigError", "WebhookSender", "WebhookStateError",
           "delivery_id", "load_webhooks", "plan_event", "retry_delay", "sign"]

log = logging.getLogger("trustfleet.webhooks")

NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""A webhook name, as contracts write it in `notify: [webhook:NAME]`."""
_EVENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_KEYS: Final = frozenset({"url", "secret_file", "secret_env", "timeout_s", "ca_file",
                          "max_rejections"})
MIN_SECRET: Final = 16
MAX_SECRET: Final = 4096
MAX_HOOKS: Final = 64
MAX_EVENT_DOC: Final = 256 * 1024
"""Largest `doc` (characters) a worker reads; a larger one is skipped as `too_large`."""
MAX_ANSWER_READ: Final = 64 * 1024
_BATCH: Final = 64
_KEEP_SKIPS: Final = 1000
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode

_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hooks (
  name TEXT PRIMARY KEY, cursor INTEGER NOT NULL, pending INTEGER, attempts INTEGER NOT NULL,
  rejections INTEGER NOT NULL, failing_since REAL, last_error TEXT, next_attempt REAL,
  delivered INTEGER NOT NULL, last_delivered_idx INTEGER, skipped INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS skips (
  hook TEXT NOT NULL, idx INTEGER NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL,
  detail TEXT NOT NULL, PRIMARY KEY (hook, idx));
"""


class WebhookConfigError(ConfigError):
    """The webhooks file, a webhook's settings or secret, or the sender's settings are unusable.

    `key` names the setting at fault when there is one (for the line number)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class WebhookStateError(StoreError):
    """The webhook state file cannot be opened, or records another chain."""


# -- configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class WebhookConfig:
    """One webhook. Checks itself on construction (WebhookConfigError, `key` set)."""

    name: str
    url: str
    secret: bytes = field(repr=False)
    timeout_s: float = 10.0
    """For connecting, and for each read of the answer (not a bound on the whole request)."""
    ca_file: Path | None = None
    """PEM certificates to verify an https receiver with (None: the system's trust store)."""
    max_rejections: int = 5
    """Rejections (4xx but 408/429) of one event before it is skipped; 0: never skip."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise WebhookConfigError(f"webhook name {self.name!r} must match "
                                     f"{NAME_RE.pattern} (as in notify: [webhook:NAME])")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except (ValueError, TypeError, AttributeError) as exc:
            raise WebhookConfigError(f"url {self.url!r} is not usable: {exc}", "url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookConfigError(f"url {self.url!r} must be http:// or https:// and name "
                                     "a host", "url")
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise WebhookConfigError("url must not carry credentials or a fragment (the "
                                     "secret goes in secret_file or secret_env)", "url")
        if not MIN_SECRET <= len(self.secret) <= MAX_SECRET:
            raise WebhookConfigError(f"the secret is {len(self.secret)} bytes; it must be "
                                     f"{MIN_SECRET} to {MAX_SECRET}", "secret")
        if not 0.1 <= self.timeout_s <= 300:
            raise WebhookConfigError("timeout_s must be between 0.1 and 300", "timeout_s")
        if not 0 <= self.max_rejections <= 1000:
            raise WebhookConfigError("max_rejections must be between 0 (never skip) and 1000",
                                     "max_rejections")

    @property
    def shown_url(self) -> str:
        """The url without its query (which may carry a receiver's token), for status and logs."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


def load_webhooks(path: Path, environ: Mapping[str, str] | None = None
                  ) -> dict[str, WebhookConfig]:
    """The `[webhooks.NAME]` tables of a TOML file, checked, secrets read.

    `secret_file` (relative to the file's folder) or `secret_env` (a variable of `environ`,
    default os.environ: call this at the entry point) holds the secret, surrounding whitespace
    removed. Raises WebhookConfigError naming the file, the table and, where it can, the line.
    """
    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except OSError as exc:
        raise WebhookConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WebhookConfigError(f"{path}: {exc}") from None
    extra = sorted(set(doc) - {"webhooks"})
    if extra:
        raise WebhookConfigError(f"{path}: unknown table or key {extra[0]!r}; this file holds "
                                 "only [webhooks.NAME] tables")
    tables = doc.get("webhooks")
    if not isinstance(tables, dict):
        raise WebhookConfigError(f"{path}: no [webhooks.NAME] table")
    if len(tables) > MAX_HOOKS:
        raise WebhookConfigError(f"{path}: {len(tables)} webhooks; at most {MAX_HOOKS}")
    hooks: dict[str, WebhookConfig] = {}
    for name, values in tables.items():
        try:
            hooks[name] = _webhook(name, values, path.parent, env)
        except WebhookConfigError as exc:
            line = _line_of(text, name, exc.key)
            where = f"{path}, line {line}" if line else str(path)
            raise WebhookConfigError(f"{where}: [webhooks.{name}] {exc}", exc.key) from None
    return hooks


def _webhook(name: str, values: Any, folder: Path, env: Mapping[str, str]) -> WebhookConfig:
    if not isinstance(values, dict):
        raise WebhookConfigError("must be a table (url = ..., secret_file = ...)")
    for key in values:
        if key not in _KEYS:
            raise WebhookConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(_KEYS))}",
                                     key)
    for key, kind in (("url", str), ("secret_file", str), ("secret_env", str),
                      ("ca_file", str), ("timeout_s", (int, float)), ("max_rejections", int)):
        if key in values and (not isinstance(values[key], kind) or isinstance(values[key], bool)):
            raise WebhookConfigError(f"{key} has the wrong type ({values[key]!r})", key)
    if "url" not in values:
        raise WebhookConfigError("has no url")
    if ("secret_file" in values) == ("secret_env" in values):
        raise WebhookConfigError("needs exactly one of secret_file and secret_env",
                                 "secret_env" if "secret_env" in values else None)
    if "secret_file" in values:
        secret = _read_secret(folder / values["secret_file"])
    else:
        var = values["secret_env"]
        if var not in env:
            raise WebhookConfigError(f"secret_env: the variable {var} is not set", "secret_env")
        secret = env[var].encode("utf-8", "surrogateescape").strip()
    ca_file = folder / values["ca_file"] if "ca_file" in values else None
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise WebhookConfigError(f"ca_file {ca_file} is unusable: {exc}", "ca_file") from None
    try:
        return WebhookConfig(name, values["url"], secret, float(values.get("timeout_s", 10.0)),
                             ca_file, values.get("max_rejections", 5))
    except WebhookConfigError as exc:
        if exc.key == "secret":
            source = values.get("secret_file") or f"${values.get('secret_env')}"
            raise WebhookConfigError(f"secret from {source}: {exc}",
                                     "secret_file" if "secret_file" in values else "secret_env"
                                     ) from None
        raise


def _read_secret(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET + 64)
    except OSError as exc:
        raise WebhookConfigError(f"secret_file {path}: cannot read: {exc.strerror}",
                                 "secret_file") from None
    return data.strip()


def _line_of(text: str, name: str, key: str | None) -> int | None:
    """The line of `key = ...` in `[webhooks.name]` (of the header when key is None)."""
    quoted = rf"(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')"
    header = re.search(rf"^[ \t]*\[[ \t]*webhooks[ \t]*\.[ \t]*{quoted}[ \t]*\]", text,
                       re.MULTILINE)
    if header is None:
        return None
    at = header.start()
    if key is not None:
        body = text[header.end():]
        end = re.search(r"^[ \t]*\[", body, re.MULTILINE)
        body = body[:end.start()] if end else body
        m = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", body, re.MULTILINE)
        if m is not None:
            at = header.end() + m.start()
    return text.count("\n", 0, at) + 1


# -- pure parts: what to send, how to sign, how long to wait ------------------------------

@dataclass(frozen=True)
class Planned:
    """An event to POST: its idx, name and the body."""

    idx: int
    event: str
    body: bytes


@dataclass(frozen=True)
class Unsendable:
    """An event row that cannot be sent, and why (`reason` is machine-readable)."""

    idx: int
    reason: str
    detail: str


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def plan_event(idx: int, event: Any, doc: Any, doc_length: int, hook: str, chain: str,
               node: str) -> Planned | Unsendable | None:
    """What to do with one `events` row for webhook `hook` (None: it does not name the hook).

    `doc` is None when the row's doc is longer than MAX_EVENT_DOC (`doc_length` says how long).
    The body is {"chain", "delivery": "<chain>/<idx>", "event": doc, "node", "v": 1}, compact
    JSON with sorted keys.
    """
    if doc is None:
        return Unsendable(idx, "too_large", f"doc is {doc_length} long; at most {MAX_EVENT_DOC}")
    if isinstance(doc, bytes):
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError:
            return Unsendable(idx, "bad_json", "doc is not UTF-8 text")
    if not isinstance(doc, str):
        return Unsendable(idx, "bad_json", f"doc is a {type(doc).__name__}, not text")
    try:
        obj = json.loads(doc, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        return Unsendable(idx, "bad_json", f"doc is not JSON: {str(exc)[:200]}")
    if not isinstance(obj, dict):
        return Unsendable(idx, "not_object", f"doc is a JSON {type(obj).__name__}, not an object")
    notify = obj.get("notify", [])
    if not isinstance(notify, list) or not all(isinstance(t, str) for t in notify):
        return Unsendable(idx, "bad_notify", "notify is not a list of strings")
    if f"webhook:{hook}" not in notify:
        return None
    if not isinstance(event, str) or not _EVENT_NAME_RE.fullmatch(event):
        return Unsendable(idx, "bad_event_name",
                          f"event {str(event)[:80]!r} is not 1-64 of [A-Za-z0-9_.:-]")
    body = _JSON({"chain": chain, "delivery": delivery_id(chain, idx), "event": obj,
                  "node": node, "v": 1}).encode()
    return Planned(idx, event, body)


def delivery_id(chain: str, idx: int) -> str:
    """The idempotency key of one event: the same on every attempt and from every node."""
    return f"{chain}/{idx}"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256, with `secret`, of b"<timestamp>." + body."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers_for(hook: WebhookConfig, planned: Planned, chain: str, timestamp: int
                ) -> dict[str, str]:
    return {"Content-Type": "application/json",
            "User-Agent": "trustfleet-node",
            "X-TrustFleet-Event": planned.event,
            "X-TrustFleet-Delivery": delivery_id(chain, planned.idx),
            "X-TrustFleet-Timestamp": str(timestamp),
            "X-TrustFleet-Signature": sign(hook.secret, timestamp, planned.body)}


def retry_delay(failures: int, rand: float, initial: float, maximum: float) -> float:
    """Seconds before the next attempt after `failures` (>= 1) failures in a row: the step
    doubles from `initial` up to `maximum`, times a jitter factor 0.5 + 0.5 * rand (rand in
    [0, 1)), so it never drops below half a step nor exceeds `maximum`."""
    step = min(maximum, initial * 2.0 ** min(max(failures, 1) - 1, 62))
    return step * (0.5 + 0.5 * rand)


DELIVERED, RETRY, REJECTED = "delivered", "retry", "rejected"


@dataclass(frozen=True)
class Answer:
    """What one POST came to: the HTTP status (None without one) and an error text."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def outcome(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return DELIVERED
        if self.status is not None and 400 <= self.status < 500 \
                and self.status not in (408, 429):
            return REJECTED
        return RETRY


# -- the network boundary -----------------------------------------------------------------

class Transport(Protocol):
    def post(self, headers: Mapping[str, str], body: bytes) -> Answer: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx becomes an HTTPError: retried, visible in status


class HttpTransport:
    """POSTs to one webhook with urllib: its timeout, TLS verified (ca_file or the system's
    store), redirects not followed, no proxy. Never raises for network or HTTP trouble."""

    def __init__(self, hook: WebhookConfig) -> None:
        self.hook = hook
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}),
                                                      _NoRedirect()]
        if urlsplit(hook.url).scheme == "https":
            cafile = str(hook.ca_file) if hook.ca_file is not None else None
            handlers.append(urllib.request.HTTPSHandler(
                context=ssl.create_default_context(cafile=cafile)))
        self._opener = urllib.request.build_opener(*handlers)

    def post(self, headers: Mapping[str, str], body: bytes) -> Answer:
        request = urllib.request.Request(self.hook.url, data=body, headers=dict(headers),
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.hook.timeout_s) as resp:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    resp.read(MAX_ANSWER_READ)
                return Answer(resp.status)
        except urllib.error.HTTPError as exc:
            try:
                text = exc.read(MAX_ANSWER_READ)[:200].decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                text = ""
            finally:
                exc.close()
            excerpt = " ".join(text.split())
            return Answer(exc.code, f"HTTP {exc.code} {exc.reason}" + (f": {excerpt}" if
                                                                        excerpt else ""),
                          _retry_after(exc.headers.get("Retry-After") if exc.headers else None))
        except urllib.error.URLError as exc:
            return Answer(None, f"cannot reach {self.hook.shown_url}: {exc.reason}")
        except TimeoutError:
            return Answer(None, f"no answer within {self.hook.timeout_s:g} s")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:300])


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # an HTTP-date is not honoured: the backoff applies
    return float(min(int(value.strip()), 86_400))


# -- state: the cursor and what the status shows ------------------------------------------

@dataclass
class HookState:
    cursor: int = 0
    """Every event with idx <= cursor is handled (delivered, skipped, or not for this hook)."""
    pending: int | None = None
    attempts: int = 0
    rejections: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    next_attempt: float | None = None
    delivered: int = 0
    last_delivered_idx: int | None = None
    skipped: int = 0


_HOOK_COLUMNS: Final = ("cursor", "pending", "attempts", "rejections", "failing_since",
                        "last_error", "next_attempt", "delivered", "last_delivered_idx",
                        "skipped")


def _open_state(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost cursor write: one resend
            with conn:
                conn.executescript(_STATE_SCHEMA)
        except BaseException:
            conn.close()
            raise
    except (OSError, sqlite3.Error) as exc:
        raise WebhookStateError(f"cannot open webhook state {path}: {exc}") from None
    return conn


def _save(conn: sqlite3.Connection, name: str, s: HookState,
          skip: tuple[int, float, str, str] | None = None) -> None:
    """Write one webhook's state (the cursor never goes back), and a skip if there is one."""
    values = [getattr(s, c) for c in _HOOK_COLUMNS]
    updates = ", ".join(f"{c} = excluded.{c}" for c in _HOOK_COLUMNS if c != "cursor")
    with conn:
        conn.execute(f"INSERT INTO hooks (name, {', '.join(_HOOK_COLUMNS)}) "
                     f"VALUES (?, {', '.join('?' for _ in _HOOK_COLUMNS)}) "
                     f"ON CONFLICT(name) DO UPDATE SET cursor = max(cursor, excluded.cursor), "
                     f"{updates}", [name, *values])
        if skip is not None:
            conn.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?, ?, ?)", (name, *skip))
            conn.execute("DELETE FROM skips WHERE hook = ? AND idx <= (SELECT idx FROM skips "
                         "WHERE hook = ? ORDER BY idx DESC LIMIT 1 OFFSET ?)",
                         (name, name, _KEEP_SKIPS))


# -- the sender ---------------------------------------------------------------------------

class WebhookSender:
    """Sends contract events that name `webhook:NAME` to the webhook NAME of `hooks`.

    Reads the ledger store at `db_path` (read-only); keeps its state in `state_path`
    (conventionally `{data}/webhooks.sqlite`). `start()` once; `stop()` ends it for good.
    `backoff_initial_s`/`backoff_max_s` bound the retry waits, `seed` pins the jitter, `poll_s`
    is how often an idle worker looks for new events (`wake()` makes it look now).
    """

    def __init__(self, db_path: Path, state_path: Path, hooks: Mapping[str, WebhookConfig],
                 chain: str, node_id: str, *, poll_s: float = 0.5,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 300.0,
                 seed: int | None = None,
                 transport: Callable[[WebhookConfig], Transport] = HttpTransport) -> None:
        try:
            check_name(chain, "chain")
            check_name(node_id, "node id")
        except ValueError as exc:
            raise WebhookConfigError(str(exc)) from None
        if not 0 < backoff_initial_s <= backoff_max_s or not 0 < poll_s <= 60:
            raise WebhookConfigError("webhook sender needs 0 < backoff_initial_s <= "
                                     "backoff_max_s and 0 < poll_s <= 60")
        for name, hook in hooks.items():
            if name != hook.name:
                raise WebhookConfigError(f"webhook {name!r} is configured as {hook.name!r}")
        self.db_path, self.state_path = db_path, state_path
        self.chain, self.node_id = chain, node_id
        self.poll_s = poll_s
        self.backoff = (backoff_initial_s, backoff_max_s)
        self.stop_event = threading.Event()
        self._started = False
        conn = _open_state(state_path)
        try:
            with conn:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('chain', ?)", (chain,))
            recorded = conn.execute("SELECT value FROM meta WHERE key = 'chain'").fetchone()[0]
            if recorded != chain:
                raise WebhookStateError(f"webhook state {state_path} belongs to chain "
                                        f"{recorded!r}, not {chain!r}")
            states = {row[0]: HookState(*row[1:]) for row in conn.execute(
                f"SELECT name, {', '.join(_HOOK_COLUMNS)} FROM hooks")}
        except sqlite3.Error as exc:
            raise WebhookStateError(f"webhook state {state_path} is unreadable: {exc}") from None
        finally:
            conn.close()
        self._workers: dict[str, _Worker] = {}
        for i, (name, hook) in enumerate(sorted(hooks.items())):
            try:
                channel = transport(hook)
            except (OSError, ValueError) as exc:  # ssl.SSLError: an unusable ca_file
                raise WebhookConfigError(f"webhook {name}: {exc}") from None
            self._workers[name] = _Worker(self, hook, states.get(name, HookState()),
                                          random.Random(None if seed is None else seed + i),
                                          channel)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("a WebhookSender starts once; make a new one to restart")
        self._started = True
        for w in self._workers.values():
            w.thread.start()

    def wake(self) -> None:
        """Look for new events now (e.g. after a block with events) instead of at the next poll."""
        for w in self._workers.values():
            w.wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop every worker: a request in flight is finished and recorded if it ends within
        `timeout` s, else abandoned (its worker records its answer, if any, and exits; the
        state stays consistent). True if every worker has exited."""
        self.stop_event.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for w in self._workers.values():
            if w.thread.is_alive():
                w.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(w.thread.is_alive() for w in self._workers.values())

    def status(self) -> dict[str, dict[str, Any]]:
        """Per webhook: url (no query), delivered_idx (the cursor), last_delivered_idx, backlog
        (events after the cursor that name it; None if the store cannot be read), pending_idx,
        attempts, failing_since and next_attempt (unix s), last_error, delivered and skipped
        counts, last_skip, running."""
        backlog = self._backlogs()
        out: dict[str, dict[str, Any]] = {}
        for name, w in self._workers.items():
            with w.lock:
                s, last_skip = replace(w.state), w.last_skip
            out[name] = {"url": w.hook.shown_url, "delivered_idx": s.cursor,
                         "last_delivered_idx": s.last_delivered_idx,
                         "backlog": backlog.get(name), "pending_idx": s.pending,
                         "attempts": s.attempts, "failing_since": s.failing_since,
                         "last_error": s.last_error, "next_attempt": s.next_attempt,
                         "delivered": s.delivered, "skipped": s.skipped,
                         "last_skip": last_skip, "running": w.thread.is_alive()}
        return out

    def skips(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent skipped events of one webhook (idx, at, reason, detail), newest
        first (the last 1000 are kept)."""
        conn = _open_state(self.state_path)
        try:
            rows = conn.execute("SELECT idx, at, reason, detail FROM skips WHERE hook = ? "
                                "ORDER BY idx DESC LIMIT ?", (name, limit)).fetchall()
        finally:
            conn.close()
        return [{"idx": r[0], "at": r[1], "reason": r[2], "detail": r[3]} for r in rows]

    def _backlogs(self) -> dict[str, int]:
        try:
            conn = open_reader(self.db_path)
        except StoreError:
            return {}
        try:
            out = {}
            for name, w in self._workers.items():
                with w.lock:
                    cursor = w.state.cursor
                out[name] = conn.execute(
                    "SELECT count(*) FROM events WHERE idx > ? AND instr(doc, ?) > 0",
                    (cursor, f'"webhook:{name}"')).fetchone()[0]
            return out
        except sqlite3.Error:
            return {}
        finally:
            conn.close()


class _Worker:
    """Tails the events table for one webhook and sends its events one at a time."""

    def __init__(self, sender: WebhookSender, hook: WebhookConfig, state: HookState,
                 rng: random.Random, transport: Transport) -> None:
        self.sender, self.hook, self.state = sender, hook, state
        self.rng, self.transport = rng, transport
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.last_skip: dict[str, Any] | None = None
        self.reader: sqlite3.Connection | None = None
        self.conn: sqlite3.Connection | None = None
        self.troubles = 0
        self.thread = threading.Thread(target=self.run, name=f"webhook-{hook.name}", daemon=True)

    @property
    def stopping(self) -> bool:
        return self.sender.stop_event.is_set()

    def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    self.step()
                    self.troubles = 0
                except Exception as exc:  # the thread must outlive anything the store throws
                    self.troubles += 1
                    self._close_reader()
                    log.warning("webhook %s: %s (retrying)", self.hook.name, exc,
                                exc_info=self.troubles == 1)
                    with self.lock:
                        self.state.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self.sender.stop_event.wait(self._delay(self.troubles))
        finally:
            self._close_reader()
            if self.conn is not None:
                self.conn.close()

    def _close_reader(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self.reader.close()
            self.reader = None

    def _delay(self, failures: int) -> float:
        return retry_delay(failures, self.rng.random(), *self.sender.backoff)

    def step(self) -> None:
        """One batch of events after the cursor, each handled in order."""
        if self.conn is None:
            self.conn = _open_state(self.sender.state_path)
        if self.reader is None:
            self.reader = open_reader(self.sender.db_path)
        rows = self.reader.execute(
            "SELECT idx, event, length(doc), CASE WHEN length(doc) <= ? THEN doc END "
            "FROM events WHERE idx > ? ORDER BY idx LIMIT ?",
            (MAX_EVENT_DOC, self.state.cursor, _BATCH)).fetchall()
        if not rows:
            self.wake.wait(self.sender.poll_s)
            self.wake.clear()
            return
        s = self.sender
        for idx, event, length, doc in rows:
            if self.stopping:
                break
            plan = plan_event(idx, event, doc, length, self.hook.name, s.chain, s.node_id)
            if plan is None:
                with self.lock:
                    self.state.cursor = idx
            elif isinstance(plan, Unsendable):
                self._skip(plan)
            elif not self._deliver(plan):
                return
        self._persist()

    def _persist(self, skip: tuple[int, float, str, str] | None = None) -> None:
        assert self.conn is not None
        with self.lock:
            snapshot = replace(self.state)
        _save(self.conn, self.hook.name, snapshot, skip)

    def _skip(self, u: Unsendable) -> None:
        now = time.time()
        with self.lock:
            s = self.state
            s.cursor, s.pending, s.attempts, s.rejections = u.idx, None, 0, 0
            s.next_attempt = None
            s.skipped += 1
            self.last_skip = {"idx": u.idx, "at": now, "reason": u.reason, "detail": u.detail}
        log.warning("webhook %s: event %s skipped: %s: %s", self.hook.name,
                    delivery_id(self.sender.chain, u.idx), u.reason, u.detail)
        self._persist((u.idx, now, u.reason, u.detail))

    def _deliver(self, p: Planned) -> bool:
        """POST until acknowledged or skipped (True) or the sender stops (False)."""
        with self.lock:
            if self.state.pending != p.idx:
                self.state.pending, self.state.attempts, self.state.rejections = p.idx, 0, 0
        while True:
            answer = self.transport.post(
                headers_for(self.hook, p, self.sender.chain, int(time.time())), p.body)
            now = time.time()
            with self.lock:
                s = self.state
                s.attempts += 1
                outcome, attempts = answer.outcome, s.attempts
                if outcome == REJECTED:
                    s.rejections += 1
                give_up = outcome == REJECTED and 0 < self.hook.max_rejections <= s.rejections
            if outcome == DELIVERED:
                self._delivered(p.idx)
                return True
            if give_up:
                self._skip(Unsendable(p.idx, "rejected",
                                      f"{answer.error} (after {attempts} attempts)"))
                return True
            delay = self._delay(attempts)
            if answer.retry_after is not None:
                delay = min(answer.retry_after, self.sender.backoff[1])
            with self.lock:
                s.failing_since = s.failing_since or now
                s.last_error, s.next_attempt = answer.error, now + delay
            self._persist()
            if attempts & (attempts - 1) == 0:  # 1, 2, 4, 8, ...: a down webhook logs rarely
                log.warning("webhook %s: %s attempt %d failed: %s; next in %.1f s",
                            self.hook.name, delivery_id(self.sender.chain, p.idx), attempts,
                            answer.error, delay)
            if self.sender.stop_event.wait(delay):
                return False

    def _delivered(self, idx: int) -> None:
        with self.lock:
            s = self.state
            recovered = s.failing_since is not None
            s.cursor, s.pending, s.attempts, s.rejections = idx, None, 0, 0
            s.failing_since = s.last_error = s.next_attempt = None
            s.delivered += 1
            s.last_delivered_idx = idx
        if recovered:
            log.info("webhook %s: delivering again (%s acknowledged)", self.hook.name,
                     delivery_id(self.sender.chain, idx))
        self._persist()
