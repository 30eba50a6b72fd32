"""Errors of the consortium side of a ledger node.

    LedgerError (ledger_node.errors)
     └── ConsortiumError            the consortium machinery refused or failed
          ├── EtcdError              etcd unreachable, or it refused a request
          │    ├── EtcdCompacted      the revision asked for was compacted away
          │    └── EtcdNoSpace        etcd's storage quota is exhausted (NOSPACE alarm)
          ├── BatchDecodeError       bytes in the log that are not a well-formed message
          ├── QuorumError            a node set, signature or quorum certificate does not check
          ├── DivergenceError        this node's block differs from the one the quorum signed
          └── SyncError              catching up from peers failed
"""

from __future__ import annotations

from ledger_node.errors import LedgerError


class ConsortiumError(LedgerError):
    """Root of the consortium errors."""


class EtcdError(ConsortiumError):
    """etcd could not be reached, or answered with an error (`code` is its gRPC code)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdCompacted(EtcdError):
    """The revision asked for is older than etcd's compaction revision."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd has compacted its history up to revision {compact_revision}")
        self.compact_revision = compact_revision


class EtcdNoSpace(EtcdError):
    """etcd's storage quota is exhausted: it takes no writes until compacted and defragmented."""


class BatchDecodeError(ConsortiumError):
    """A value in the etcd log is not a well-formed message of ours; `reason` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class QuorumError(ConsortiumError):
    """A node set, a node signature or a quorum certificate does not check."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DivergenceError(ConsortiumError):
    """The block this node computed at `height` is not the block the quorum signed."""

    def __init__(self, height: int, ours: bytes, theirs: bytes, detail: str = "") -> None:
        super().__init__(f"block {height}: this node computed {ours.hex()[:16]}…, the quorum "
                         f"signed {theirs.hex()[:16]}…" + (f" ({detail})" if detail else ""))
        self.height = height
        self.ours = ours
        self.theirs = theirs


class SyncError(ConsortiumError):
    """Catching up from peers failed (no peer answered, or what they sent does not check)."""
