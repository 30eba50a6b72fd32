"""Errors raised by the ledger node.

    LedgerError
     ├── ProofError                 a proof is malformed or does not fit the tree sizes given
     │    └── RootMismatchError      a proof recomputes to a root other than the one expected
     ├── StoreError                 the on-disk store cannot be opened or is inconsistent
     │    └── TamperError            stored data no longer matches what was committed
     └── ConfigError                node configuration is invalid
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error the ledger node raises on purpose."""


class ProofError(LedgerError):
    """A Merkle proof is malformed, or its preconditions (index < size, ...) do not hold."""


class RootMismatchError(ProofError):
    """A proof was well formed but recomputed a root other than the expected one."""

    def __init__(self, expected_root: bytes, calculated_root: bytes) -> None:
        super().__init__(
            f"root mismatch: expected {expected_root.hex()}, calculated {calculated_root.hex()}"
        )
        self.expected_root = expected_root
        self.calculated_root = calculated_root


class StoreError(LedgerError):
    """The on-disk store cannot be opened, or holds something it should not."""


class TamperError(StoreError):
    """Stored data no longer matches what was committed; `where` names the damaged item."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where
        self.detail = detail


class ConfigError(LedgerError):
    """Node configuration is invalid."""
