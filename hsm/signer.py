"""Signers: the one boundary through which TrustFleet signs (ES256, raw r||s, DESIGN.md §4).

`Signer` is the protocol. `Pkcs11Signer` signs inside a PKCS#11 token (SoftHSM2 in test
rigs); `SoftwareSigner` holds its key in memory and exists for unit tests and benchmarks.

Concurrency rule (PKCS#11 sessions are not thread-safe):
    ONE lock per Pkcs11Signer guards its session. Every use of the session (sign, reopen,
    close) holds `self._lock`, so one signer may be shared by any number of threads; calls
    are serialised. Different signers have different sessions and run in parallel
    (python-pkcs11 releases the GIL inside the module).
    PKCS#11 login state is per process and token, and closing a session logs out every
    session of that token. So a process holds at most ONE open Pkcs11Signer per
    (module, token); a second one raises HsmError: share the first instead.

One SoftHSM config per process:
    SoftHSM2 reads SOFTHSM2_CONF when the module is initialised, and python-pkcs11 loads a
    module once per process. Set SOFTHSM2_CONF in the environment before the first
    Pkcs11Signer is created (`SoftHsmRig.env()` gives the value); to use several rigs, use
    several processes. See hsm._module.

Session loss: if a sign fails because the session or token went away (or the key handle
went stale), the signer reopens its session once and retries; if that fails too it raises
SessionLost (retryable). A wrong or locked PIN, or a missing or different key, on reopen
is raised as such: retrying a PIN would burn PIN attempts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, cast, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import KeyHandleInvalid, ObjectHandleInvalid, PKCS11Error
from pkcs11.util.ec import encode_ec_public_key

from hsm._module import load_module
from hsm.errors import (
    BadPublicKey,
    HsmError,
    KeyNotFound,
    PinIncorrect,
    PinLocked,
    PinSourceError,
    SessionLost,
    translate,
)
from hsm.verify import SIGNATURE_LEN, kid_for, load_public_key

if TYPE_CHECKING:
    from pkcs11.types import PublicKey, Session, SignMixin


@runtime_checkable
class Signer(Protocol):
    """Signs TrustFleet envelopes with ES256."""

    def sign(self, message: bytes) -> bytes:
        """SHA-256 of `message`, ECDSA P-256, returned as raw r||s (64 bytes)."""
        ...

    def public_key_der(self) -> bytes:
        """The public key as DER SubjectPublicKeyInfo."""
        ...

    @property
    def kid(self) -> bytes:
        """kid_for(public_key_der()): SHA-256 of the SPKI."""
        ...


class SoftwareSigner:
    """ES256 signer with the private key in process memory.

    For unit tests and benchmarks ONLY: the key is extractable and unprotected. Production
    devices and nodes sign with Pkcs11Signer.
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise BadPublicKey(f"SoftwareSigner needs a P-256 key, not {private_key.curve.name}")
        self._key = private_key
        self._spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._kid = kid_for(self._spki)

    @classmethod
    def generate(cls) -> SoftwareSigner:
        """A signer with a fresh random P-256 key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_key_der(self) -> bytes:
        return self._spki

    @property
    def kid(self) -> bytes:
        return self._kid


# A key handle that stopped working: the token was reset or replaced under us. Reopening
# either finds the same key again or fails with a clear error.
_STALE_HANDLE = (KeyHandleInvalid, ObjectHandleInvalid)

# (realpath of module, token label) of every open Pkcs11Signer in this process.
_open_tokens: set[tuple[str, str]] = set()
_open_tokens_lock = threading.Lock()


def _release_token(key: tuple[str, str]) -> None:
    with _open_tokens_lock:
        _open_tokens.discard(key)


class Pkcs11Signer:
    """ES256 signer whose P-256 private key never leaves a PKCS#11 token.

    Opens the token labelled `token_label` in module `module_path`, logs in with `pin` and
    finds the EC key pair labelled `key_label`. Thread-safe (one lock per signer, see the
    module docstring). The PIN is kept in memory to reopen a lost session; it is never
    logged or shown in repr(). Use as a context manager or call close().
    """

    def __init__(
        self, module_path: str, token_label: str, pin: str, key_label: str = "signing"
    ) -> None:
        self._module_path = module_path
        self._token_label = token_label
        self._key_label = key_label
        self._pin = pin
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._key: SignMixin | None = None
        self._closed = False
        lib = load_module(module_path)
        claim = (os.path.realpath(module_path), token_label)
        with _open_tokens_lock:
            if claim in _open_tokens:
                raise HsmError(
                    f"token {token_label!r} is already open by another Pkcs11Signer in this "
                    "process; PKCS#11 login is per process, so share that signer (thread-safe)"
                )
            _open_tokens.add(claim)
        self._release = weakref.finalize(self, _release_token, claim)
        self._lib = lib
        try:
            with self._lock:
                self._spki = self._open_locked()
        except BaseException:
            self._release()
            raise
        self._kid = kid_for(self._spki)

    def __repr__(self) -> str:
        return (
            f"Pkcs11Signer(module={self._module_path!r}, token={self._token_label!r}, "
            f"key={self._key_label!r}, kid={self._kid.hex()[:16]}…)"
        )

    @property
    def token_label(self) -> str:
        return self._token_label

    @property
    def kid(self) -> bytes:
        return self._kid

    def public_key_der(self) -> bytes:
        return self._spki

    def sign(self, message: bytes) -> bytes:
        """ES256: ECDSA P-256 (CKM_ECDSA) over SHA-256(message), raw r||s (64 bytes)."""
        digest = hashlib.sha256(message).digest()
        with self._lock:
            if self._closed:
                raise HsmError(f"signer for token {self._token_label!r} is closed; open a new one")
            if self._key is not None:
                try:
                    return self._sign_locked(digest)
                except PKCS11Error as exc:
                    err = translate(exc, context=f"signing with token {self._token_label!r}")
                    if not isinstance(err, SessionLost) and not isinstance(exc, _STALE_HANDLE):
                        raise err from exc
            # The session is gone (now or on an earlier call): reopen once, retry once.
            try:
                self._reopen_locked()
                return self._sign_locked(digest)
            except (PinIncorrect, PinLocked, KeyNotFound, BadPublicKey):
                raise
            except (HsmError, PKCS11Error) as exc:
                raise SessionLost(
                    f"token {self._token_label!r} went away and reopening failed ({exc!r}); "
                    "retry later or check the HSM"
                ) from exc

    def close(self) -> None:
        """Close the session (idempotent). The signer cannot sign afterwards."""
        with self._lock:
            self._closed = True
            self._close_session_locked()
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals; every method named *_locked requires self._lock held -----------------

    def _sign_locked(self, digest: bytes) -> bytes:
        assert self._key is not None
        signature = bytes(self._key.sign(digest, mechanism=Mechanism.ECDSA))
        if len(signature) != SIGNATURE_LEN:
            raise HsmError(
                f"token {self._token_label!r} returned a {len(signature)}-byte ECDSA signature; "
                "expected raw r||s of 64 bytes (is the key P-256?)"
            )
        return signature

    def _open_locked(self) -> bytes:
        """Open a session, log in, find the key pair; return the public key's SPKI DER."""
        where = f"token {self._token_label!r}, key {self._key_label!r}"
        session: Session | None = None
        try:
            token = self._lib.get_token(token_label=self._token_label)
            session = token.open(user_pin=self._pin)
            key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label=self._key_label)
            public = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, label=self._key_label)
            spki = encode_ec_public_key(cast("PublicKey", public))
        except PKCS11Error as exc:
            if session is not None:
                with contextlib.suppress(PKCS11Error):
                    session.close()
            raise translate(exc, context=where) from exc
        load_public_key(spki)  # BadPublicKey unless P-256
        self._session, self._key = session, cast("SignMixin", key)
        return spki

    def _reopen_locked(self) -> None:
        self._close_session_locked()
        spki = self._open_locked()
        if spki != self._spki:
            self._close_session_locked()
            raise KeyNotFound(
                f"token {self._token_label!r} now holds a different {self._key_label!r} key "
                f"(kid {kid_for(spki).hex()}, expected {self._kid.hex()}); refusing to sign"
            )

    def _close_session_locked(self) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            with contextlib.suppress(PKCS11Error):  # a lost session cannot be closed cleanly
                session.close()


def pin_from_env_or_file(
    env_var: str, file_var: str | None = None, *, environ: Mapping[str, str] | None = None
) -> str:
    """Read a PIN from env var `env_var`, else from the file named by env var `file_var`.

    Call it at an entry point. The PIN is never logged; a trailing newline in the file is
    dropped. Raises PinSourceError naming the variable (and file) when neither yields a PIN.
    """
    env = os.environ if environ is None else environ
    pin = env.get(env_var)
    if pin:
        return pin
    if file_var is None:
        raise PinSourceError(f"no PIN: set the environment variable {env_var}")
    path = env.get(file_var)
    if not path:
        raise PinSourceError(
            f"no PIN: set {env_var}, or set {file_var} to the path of a file holding the PIN"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PinSourceError(
            f"cannot read the PIN file {path} named by {file_var}: {type(exc).__name__}; "
            "check the path and that this user may read it"
        ) from exc
    pin = text.removesuffix("\n").removesuffix("\r")
    if not pin:
        raise PinSourceError(f"the PIN file {path} named by {file_var} is empty")
    return pin
