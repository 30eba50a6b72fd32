"""Errors raised by the `hsm` package, and the one place PKCS#11 exceptions are translated.

    HsmError                  root; every failure the hsm package reports is one of these
    ├── ModuleNotFound        the PKCS#11 module (.so) is missing or cannot be loaded
    ├── TokenNotFound         no token with that label (or the label is ambiguous)
    ├── PinIncorrect          login refused: wrong PIN (retrying burns PIN attempts)
    ├── PinLocked             PIN locked or expired: a security officer must reset it
    ├── PinSourceError        PIN env var / PIN file missing or unreadable (names which)
    ├── KeyNotFound           no key with that label on the token (or it changed)
    ├── BadPublicKey          bytes that are not a canonical P-256 SubjectPublicKeyInfo
    ├── MechanismUnsupported  the token cannot do ECDSA P-256 (or another needed mechanism)
    ├── SessionLost           the session or token went away; `retryable` is True
    ├── CertificateRejected   a certificate the fleet must not trust; `reason` (CERT_REASONS)
    ├── CsrRejected           the CA refused a CSR; `reason` (CSR_REASONS)
    └── CaCertificateInvalid  the fleet CA certificate (trust anchor) or CA key is unusable

`translate(exc)` maps every `pkcs11.exceptions` type exactly once (see `_GROUPS`); call it
only where a python-pkcs11 call enters our code, and raise its result `from` the original.
"""

from __future__ import annotations

from typing import ClassVar, Final

import pkcs11.exceptions as p11


class HsmError(Exception):
    """Root of the hsm package's errors. `retryable` says whether trying again can help."""

    retryable: ClassVar[bool] = False


class ModuleNotFound(HsmError):
    """The PKCS#11 module file is missing or is not a loadable PKCS#11 library."""


class TokenNotFound(HsmError):
    """No token with the requested label is present."""


class PinIncorrect(HsmError):
    """The token refused the PIN. Do not retry blindly: each try burns a PIN attempt."""


class PinLocked(HsmError):
    """The user PIN is locked or expired; a security officer must reset it."""


class PinSourceError(HsmError):
    """The PIN could not be read from the named environment variable or file."""


class KeyNotFound(HsmError):
    """The token has no usable key with the requested label."""


class BadPublicKey(HsmError):
    """Bytes that are not a canonical DER SubjectPublicKeyInfo of a P-256 key."""


class MechanismUnsupported(HsmError):
    """The token does not support a mechanism we need (ECDSA on P-256)."""


class SessionLost(HsmError):
    """The PKCS#11 session or the token went away. Retrying later may succeed."""

    retryable: ClassVar[bool] = True


# Machine-readable reasons of CertificateRejected (hsm.certcheck.check_certificate).
CERT_REASONS: Final = frozenset(
    {
        "cert_malformed",  # not a strict-DER v3 certificate we can read, or a non-canonical one
        "cert_chain",  # not signed by the fleet CA, wrong issuer / AKI, or the CA not valid then
        "cert_expired",
        "cert_not_yet_valid",
        "cert_key_usage",  # not keyUsage digitalSignature only, or basicConstraints CA:TRUE
        "cert_role",  # no single TrustFleet role, or not the expected one
        "cert_wrong_device",  # subject CN is not the expected id
        "cert_bad_algorithm",  # signature not ES256, or subject key not P-256
    }
)
# Machine-readable reasons of CsrRejected (hsm.ca.FleetCA.issue).
CSR_REASONS: Final = frozenset(
    {
        "csr_malformed",  # not a strict-DER PKCS#10 request, or no single valid CN
        "csr_bad_algorithm",  # not ES256 / P-256
        "csr_signature",  # the request's self-signature does not verify
        "csr_wrong_id",  # CN is not the id the caller expected
        "csr_wrong_key",  # key is not the one the caller expected
    }
)


class CertificateRejected(HsmError):
    """A certificate the fleet must not trust. `reason` is one of CERT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in CERT_REASONS:
            raise ValueError(f"unknown certificate rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class CsrRejected(HsmError):
    """The fleet CA refused a certificate signing request. `reason` is one of CSR_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in CSR_REASONS:
            raise ValueError(f"unknown CSR rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class CaCertificateInvalid(HsmError):
    """The fleet CA certificate is unusable as a trust anchor, or does not match the CA key."""


_TOKEN_HINT: Final = "check the token label (`trustfleet hsm list --dir DIR` shows a rig's tokens)"
_GENERIC: Final = "the PKCS#11 module rejected the operation; this is a bug or a token fault"

# (our error, what to do, the python-pkcs11 exceptions it covers). Each pkcs11 type once.
_GROUPS: Final[tuple[tuple[type[HsmError], str, tuple[type[p11.PKCS11Error], ...]], ...]] = (
    (
        TokenNotFound,
        f"no such token; {_TOKEN_HINT}",
        (p11.NoSuchToken, p11.TokenNotRecognised, p11.SlotIDInvalid),
    ),
    (
        TokenNotFound,
        "several tokens share that label; give every token a unique label",
        (p11.MultipleTokensReturned,),
    ),
    (
        PinIncorrect,
        "the token refused the PIN; check the PIN source (each wrong try counts)",
        (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange),
    ),
    (
        PinLocked,
        "the user PIN is locked or expired; a security officer must reset it",
        (p11.PinLocked, p11.PinExpired),
    ),
    (
        KeyNotFound,
        "no such key on the token; check the key label or provision the token",
        (p11.NoSuchKey, p11.KeyHandleInvalid, p11.ObjectHandleInvalid),
    ),
    (
        KeyNotFound,
        "several keys share that label; give the signing key a unique label",
        (p11.MultipleObjectsReturned,),
    ),
    (
        MechanismUnsupported,
        "the token does not support ECDSA on P-256; use a token that does",
        (
            p11.MechanismInvalid,
            p11.MechanismParamInvalid,
            p11.FunctionNotSupported,
            p11.KeyTypeInconsistent,
            p11.DomainParamsInvalid,
            p11.KeySizeRange,
            p11.KeyIndigestible,
            p11.RandomNoRNG,
            p11.RandomSeedNotSupported,
        ),
    ),
    (
        SessionLost,
        "the session or token went away; reopen the signer and retry",
        (
            p11.SessionHandleInvalid,
            p11.SessionClosed,
            p11.DeviceRemoved,
            p11.TokenNotPresent,
            p11.DeviceError,
            p11.UserNotLoggedIn,
        ),
    ),
    (
        HsmError,
        "the private key is sensitive and never leaves the HSM (by design)",
        (p11.AttributeSensitive, p11.KeyUnextractable, p11.KeyNotWrappable),
    ),
    (HsmError, "the user PIN was never set; re-initialise the token", (p11.UserPinNotInitialized,)),
    (
        HsmError,
        "another login is active on this token in this process; share one signer",
        (
            p11.UserAlreadyLoggedIn,
            p11.AnotherUserAlreadyLoggedIn,
            p11.UserTooManyTypes,
            p11.SessionReadWriteSOExists,
            p11.SessionReadOnlyExists,
            p11.SessionExists,
        ),
    ),
    (
        HsmError,
        "the token is out of sessions or memory; close unused signers and retry",
        (p11.SessionCount, p11.DeviceMemory, p11.HostMemory),
    ),
    (
        HsmError,
        "the token is write-protected or the session is read-only",
        (p11.TokenWriteProtected, p11.SessionReadOnly),
    ),
    (
        HsmError,
        _GENERIC,
        (
            p11.PKCS11Error,
            p11.ArgumentsBad,
            p11.AttributeReadOnly,
            p11.AttributeTypeInvalid,
            p11.AttributeValueInvalid,
            p11.DataInvalid,
            p11.DataLenRange,
            p11.EncryptedDataInvalid,
            p11.EncryptedDataLenRange,
            p11.ExceededMaxIterations,
            p11.FunctionCancelled,
            p11.FunctionFailed,
            p11.FunctionRejected,
            p11.GeneralError,
            p11.KeyNeeded,
            p11.KeyNotNeeded,
            p11.NoEvent,
            p11.OperationActive,
            p11.OperationNotInitialized,
            p11.PinTooWeak,
            p11.PublicKeyInvalid,
            p11.SignatureInvalid,
            p11.SignatureLenRange,
            p11.TemplateIncomplete,
            p11.TemplateInconsistent,
            p11.UnwrappingKeyHandleInvalid,
            p11.UnwrappingKeySizeRange,
            p11.UnwrappingKeyTypeInconsistent,
            p11.WrappedKeyInvalid,
            p11.WrappedKeyLenRange,
            p11.WrappingKeyHandleInvalid,
            p11.WrappingKeySizeRange,
            p11.WrappingKeyTypeInconsistent,
        ),
    ),
)


def _build_table() -> dict[type[BaseException], tuple[type[HsmError], str]]:
    table: dict[type[BaseException], tuple[type[HsmError], str]] = {}
    for ours, advice, theirs in _GROUPS:
        for exc_type in theirs:
            if exc_type in table:
                raise AssertionError(f"{exc_type.__name__} is mapped twice in hsm.errors")
            table[exc_type] = (ours, advice)
    return table


_TABLE: Final = _build_table()


def translate(exc: BaseException, *, context: str | None = None) -> HsmError:
    """Return the HsmError for a foreign exception (raise it `from exc`).

    `context` (e.g. "token 'truck-1'") prefixes the message. HsmErrors pass through unchanged;
    subclasses of a mapped pkcs11 type map like their base; anything else becomes a plain
    HsmError naming the exception's class. Never put a PIN in `context`.
    """
    if isinstance(exc, HsmError):
        return exc
    name = type(exc).__name__
    for klass in type(exc).__mro__:
        entry = _TABLE.get(klass)
        if entry is not None:
            ours, advice = entry
            detail = f": {exc}" if str(exc) else ""
            message = f"{advice} (PKCS#11 {name}{detail})"
            break
    else:
        ours, message = HsmError, f"unexpected {name} from the HSM layer: {exc}"
    return ours(f"{context}: {message}" if context else message)
