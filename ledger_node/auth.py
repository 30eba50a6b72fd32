"""API tokens and principals: who may call the node's API (DESIGN.md §8).

Principals are `operator` (everything), `auditor` (reads everything) and `partner` (bound to
one organisation: sees only the shipments it is a party to). Each holds API tokens:

    tf_<43 characters of base64url>        32 random bytes, shown once when created

The node keeps only the SHA-256 of a token, with its name (unique, also after revocation),
kind, organisation, creation and revocation time, in `tokens.db` (SQLite, mode 0600) in the
node's data folder, next to `ledger.sqlite` (`tokens_path`). Tokens are node-local: they are
not part of the log, and another node of the consortium has its own.

`TokenBook.authenticate` hashes the presented token and looks the hash up; the stored hash is
then compared with `hmac.compare_digest`, so no comparison of secret material depends on how
many leading bytes match. A revoked token authenticates nothing. The book opens the database
for every call (read-only for lookups), so a token created or revoked with `trustfleet token`
counts at the API's next request, without restarting the node.

The HTTP side (`AuthMiddleware`, the `require_*` dependencies) lives here too, so that one
module answers "who is this and what may they read":

    401  no token, or one that is malformed, unknown or revoked (with `WWW-Authenticate`)
    403  a principal whose kind may not use this endpoint (a partner asking for devices)
    404  a partner asking for a shipment (or an entry) of another organisation: exactly the
         answer for one that does not exist (the endpoints build it, not this module)

Errors (all LedgerError):
    TokenError          the token book refuses a request (the CLI prints it)
     ├── BadTokenSpec      a name, kind or organisation that is not allowed
     ├── TokenExists       the name is taken (names are never reused)
     └── NoSuchToken       revoke of a name that was never created
    TokenStoreError     tokens.db cannot be read or written (HTTP 503)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import anyio.to_thread
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger_node.errors import LedgerError

__all__ = [
    "AUDITOR", "KINDS", "OPERATOR", "PARTNER", "STREAM_PATH", "AuditRecord", "AuthMiddleware",
    "BadTokenSpec", "NoSuchToken", "Principal", "TokenBook", "TokenError", "TokenExists",
    "TokenInfo", "TokenStoreError", "authenticated", "hash_token", "new_token",
    "parse_bearer", "require_any", "require_staff", "require_stream", "tokens_path",
    "wall_clock_ms",
]  # fmt: skip

log = logging.getLogger("trustfleet.api")

OPERATOR: Final = "operator"
PARTNER: Final = "partner"
AUDITOR: Final = "auditor"
KINDS: Final = (OPERATOR, PARTNER, AUDITOR)
TOKENS_FILE: Final = "tokens.db"
TOKEN_PREFIX: Final = "tf_"
TOKEN_BYTES: Final = 32
MAX_PRESENTED: Final = 512
"""Longest Authorization value looked at; a real token is 46 characters."""
STREAM_PATH: Final = "/v1/events/stream"
"""The one path that also takes the token as `?access_token=` (EventSource sends no headers)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(r"tf_[A-Za-z0-9_-]{43}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, org TEXT, hash BLOB NOT NULL UNIQUE,
  created INTEGER NOT NULL, revoked INTEGER);
"""


class TokenError(LedgerError):
    """The token book refuses the request."""


class BadTokenSpec(TokenError):
    """A token name, kind or organisation that is not allowed."""


class TokenExists(TokenError):
    """A token of that name exists (or existed: names are never reused)."""


class NoSuchToken(TokenError):
    """No token of that name was ever created."""


class TokenStoreError(LedgerError):
    """tokens.db cannot be opened, read or written."""


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    name: str
    kind: str
    org: str | None = None

    @property
    def sees_everything(self) -> bool:
        """Operators and auditors read every shipment, device and entry."""
        return self.kind in (OPERATOR, AUDITOR)

    @property
    def audited(self) -> bool:
        """Partners' and auditors' requests are recorded (DESIGN.md §8)."""
        return self.kind in (PARTNER, AUDITOR)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "org": self.org}


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret, nor its hash."""

    name: str
    kind: str
    org: str | None
    created: int
    revoked: int | None


def wall_clock_ms() -> int:
    """The node's clock, ms since the Unix epoch: token dates and audit records only (never
    anything derived from the log)."""
    return time.time_ns() // 1_000_000


def tokens_path(db_path: Path) -> Path:
    """Where a node keeps its tokens: `tokens.db` in the folder of its ledger store."""
    return db_path.parent / TOKENS_FILE


def new_token() -> str:
    """A fresh token: `tf_` and 32 random bytes in unpadded base64url."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_spec(name: str, kind: str, org: str | None) -> None:
    """Raise BadTokenSpec unless (name, kind, org) may be a token."""
    if not _NAME.fullmatch(name):
        raise BadTokenSpec(f"token name {name!r}: 1-64 characters, letters, digits and ._@- "
                           f"(starting with a letter or digit)")
    if kind not in KINDS:
        raise BadTokenSpec(f"kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == PARTNER:
        if org is None or not _NAME.fullmatch(org):
            raise BadTokenSpec("a partner token needs --org: the organisation id as the "
                               "shipments name it (1-64 letters, digits, ._@-)")
    elif org is not None:
        raise BadTokenSpec(f"an {kind} token is not bound to an organisation; leave out --org")


class TokenBook:
    """The tokens of one node, in one SQLite file. Safe to use from several threads and
    processes at once (every call opens its own connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _writer(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)  # journal files take the database file's mode
            conn = sqlite3.connect(self.path, timeout=10)
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise TokenStoreError(f"cannot open token store {self.path}: {exc}") from None
        return conn

    def _reader(self) -> sqlite3.Connection | None:
        """A read-only connection, or None when no token was ever created here."""
        if not self.path.exists():
            return None
        try:
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot open token store {self.path}: {exc}") from None

    def create(self, name: str, kind: str, org: str | None = None, *,
               now_ms: int) -> str:
        """Store a new token and return it: the only time it is ever shown."""
        check_spec(name, kind, org)
        token = new_token()
        conn = self._writer()
        try:
            with conn:
                conn.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                             (name, kind, org, hash_token(token), now_ms))
        except sqlite3.IntegrityError:
            raise TokenExists(f"a token named {name!r} exists or existed; names are not "
                              f"reused (pick another)") from None
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot write token store {self.path}: {exc}") from None
        finally:
            conn.close()
        return token

    def revoke(self, name: str, *, now_ms: int) -> TokenInfo:
        """Revoke a token (at once: the next request with it gets 401). Revoking a revoked
        token keeps its first revocation time."""
        conn = self._writer()
        try:
            with conn:
                conn.execute("UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL",
                             (now_ms, name))
            row = conn.execute("SELECT name, kind, org, created, revoked FROM tokens "
                               "WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot write token store {self.path}: {exc}") from None
        finally:
            conn.close()
        if row is None:
            raise NoSuchToken(f"no token named {name!r}")
        return TokenInfo(*row)

    def list(self) -> list[TokenInfo]:
        conn = self._reader()
        if conn is None:
            return []
        try:
            rows = conn.execute("SELECT name, kind, org, created, revoked FROM tokens "
                                "ORDER BY name").fetchall()
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot read token store {self.path}: {exc}") from None
        finally:
            conn.close()
        return [TokenInfo(*r) for r in rows]

    def active(self, name: str) -> bool:
        """Whether the token called `name` exists and is not revoked."""
        conn = self._reader()
        if conn is None:
            return False
        try:
            row = conn.execute("SELECT revoked FROM tokens WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot read token store {self.path}: {exc}") from None
        finally:
            conn.close()
        return row is not None and row[0] is None

    def authenticate(self, presented: str) -> Principal | None:
        """The principal of a valid, unrevoked token; None for anything else."""
        if len(presented) > MAX_PRESENTED or not _TOKEN.fullmatch(presented):
            return None
        digest = hash_token(presented)
        conn = self._reader()
        if conn is None:
            return None
        try:
            row = conn.execute("SELECT name, kind, org, hash, revoked FROM tokens "
                               "WHERE hash = ?", (digest,)).fetchone()
        except sqlite3.Error as exc:
            raise TokenStoreError(f"cannot read token store {self.path}: {exc}") from None
        finally:
            conn.close()
        if row is None or not hmac.compare_digest(bytes(row[3]), digest) or row[4] is not None:
            return None
        name, kind, org = row[0], row[1], row[2]
        if kind not in KINDS or (kind == PARTNER) != (org is not None):
            return None  # a row no `create` wrote: trust nothing in it
        return Principal(name, kind, org)


# -- HTTP ---------------------------------------------------------------------------------------

AuditRecord = dict[str, Any]
"""{"who", "kind", "org", "method", "path", "query", "status", "at"} (see create_app)."""

SCOPE_KEY: Final = "trustfleet.auth"
MAX_AUDIT_TEXT: Final = 1024
"""Longest path or query string copied into an audit record (they go on the ledger)."""
_REALM = 'Bearer realm="trustfleet"'


@dataclass(frozen=True)
class _Credential:
    """What the middleware found: a principal, or why there is none."""

    principal: Principal | None
    problem: str | None  # None: no credential presented


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header ('' when the header is there
    but is not a bearer credential), None when there is no header."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return value.strip()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _query_token(scope: Scope) -> str | None:
    from urllib.parse import parse_qs

    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    values = parse_qs(query).get("access_token")
    return values[-1] if values else None


def redact_query(query: str) -> str:
    """The query string without the value of `access_token`, however its name is encoded
    (audit records go on the log)."""
    from urllib.parse import unquote_plus

    parts = [("access_token=REDACTED" if unquote_plus(p.split("=", 1)[0]) == "access_token"
              else p) for p in query.split("&")]
    return "&".join(parts)


def _cut(text: str) -> str:
    if len(text) <= MAX_AUDIT_TEXT:
        return text
    return f"{text[:MAX_AUDIT_TEXT]}…(+{len(text) - MAX_AUDIT_TEXT} characters)"


class AuthMiddleware:
    """Finds the principal of every HTTP request that carries a credential (the Bearer header;
    on STREAM_PATH also `?access_token=`) and puts it in the request scope for the endpoints'
    dependencies; then, for a partner or an auditor, calls `audit` with the record of the
    request as soon as its status is known (a stream: when it starts).

    `audit` runs on the server's event loop: it must only queue the record. If it raises,
    the error is logged and the answer goes out regardless."""

    def __init__(self, app: ASGIApp, book: TokenBook,
                 audit: Callable[[AuditRecord], None] | None,
                 clock: Callable[[], int]) -> None:
        self.app = app
        self.book = book
        self.audit = audit
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = parse_bearer(_header(scope, b"authorization"))
        if presented is None and scope.get("path") == STREAM_PATH:
            presented = _query_token(scope)
        if presented is None:
            cred = _Credential(None, None)
        else:
            try:
                principal = await anyio.to_thread.run_sync(self.book.authenticate, presented)
            except TokenStoreError as exc:
                log.error("%s", exc)
                await JSONResponse({"detail": "this node cannot check API tokens now"},
                                   status_code=503)(scope, receive, send)
                return
            cred = _Credential(principal, None if principal else "invalid_token")
        scope[SCOPE_KEY] = cred
        principal = cred.principal
        if principal is None or not principal.audited or self.audit is None:
            await self.app(scope, receive, send)
            return
        fired = False

        def record(status: int) -> None:
            nonlocal fired
            fired = True
            query = bytes(scope.get("query_string", b"")).decode("latin-1")
            rec: AuditRecord = {"who": principal.name, "kind": principal.kind,
                                "org": principal.org, "method": scope.get("method", ""),
                                "path": _cut(scope.get("path", "")),
                                "query": _cut(redact_query(query)), "status": status,
                                "at": self.clock()}
            try:
                assert self.audit is not None
                self.audit(rec)
            except Exception:
                log.exception("audit callback failed for %s %s", rec["method"], rec["path"])

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start" and not fired:
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if not fired:
                record(500)  # the app failed before answering; the server answers 500


_BEARER = HTTPBearer(auto_error=False, scheme_name="token",
                     description="An API token: `Authorization: Bearer tf_...`")
_QUERY = APIKeyQuery(name="access_token", auto_error=False, scheme_name="access_token",
                     description="The same token in the query, for EventSource clients "
                                 "(this endpoint only)")


def _unauthorized(problem: str | None) -> HTTPException:
    if problem is None:
        return HTTPException(401, "an API token is needed: Authorization: Bearer <token>",
                             headers={"WWW-Authenticate": _REALM})
    return HTTPException(401, "the API token is malformed, unknown or revoked",
                         headers={"WWW-Authenticate": f'{_REALM}, error="{problem}"'})


def authenticated(request: Request) -> Principal:
    """The request's principal, or 401."""
    cred = request.scope.get(SCOPE_KEY)
    if not isinstance(cred, _Credential) or cred.principal is None:
        raise _unauthorized(cred.problem if isinstance(cred, _Credential) else None)
    return cred.principal


def require_any(request: Request,
                _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
                ) -> Principal:
    """Any principal (partners then see only their own)."""
    return authenticated(request)


def require_staff(request: Request,
                  _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
                  ) -> Principal:
    """An operator or an auditor; 403 for a partner."""
    principal = authenticated(request)
    if not principal.sees_everything:
        raise HTTPException(403, f"a {principal.kind} token may not use this endpoint "
                                 f"(operators and auditors only)")
    return principal


Staff = Annotated[Principal, Depends(require_staff)]
"""An endpoint parameter: the caller, an operator or an auditor."""
Caller = Annotated[Principal, Depends(require_any)]
"""An endpoint parameter: the caller, any principal."""


def require_stream(request: Request,
                   _h: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
                   _q: Annotated[str | None, Depends(_QUERY)]) -> Principal:
    """Any principal, by header or by `?access_token=` (the event stream only)."""
    return authenticated(request)


def local_token(data_dir: Path, kind: str = OPERATOR, prefix: str = "local") -> str:
    """A new token of `kind` for the node whose data folder is `data_dir`, made by a process
    on the node's machine (benchmarks, `trustfleet up`): the node need not be running."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    return TokenBook(data_dir / TOKENS_FILE).create(name, kind, now_ms=wall_clock_ms())
