"""Errors of the contract engine (DESIGN.md §7).

    LedgerError                          (ledger_node.errors)
     └── ContractError                   root of everything the contract engine raises on purpose
          ├── ContractDocumentError       a document is rejected at registration: .line .column
          ├── ContractRegistrationError   register/upgrade/retire refused (name taken, version
          │                               not higher, unknown contract)
          ├── CelCompileError             a CEL expression does not compile or costs too much
          │                               (.line .column inside the expression, 1-based)
          ├── CelEvalError                a CEL expression failed on one input (.kind); the
          │                               engine turns it into a `contract_fault` event
          └── ScenarioError               a dry-run scenario file is malformed (.where)

CelEvalError never leaves the engine: a contract that fails at run time is isolated, the
other contracts go on. Everything the CEL library raises is translated in `cel.py` only.
"""

from __future__ import annotations

from ledger_node.errors import LedgerError


class ContractError(LedgerError):
    """Root of every error the contract engine raises on purpose."""


class ContractDocumentError(ContractError):
    """A contract document is rejected; `line` and `column` are 1-based (0 if unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0,
                 source: str = "<contract>") -> None:
        super().__init__(f"{source}:{line}:{column}: {message}")
        self.message = message
        self.line = line
        self.column = column
        self.source = source


class ContractRegistrationError(ContractError):
    """register/upgrade/retire refused; `reason` is machine readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CelCompileError(ContractError):
    """A CEL expression does not compile, or is too costly; position inside the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.message = message
        self.line = line
        self.column = column


class CelEvalError(ContractError):
    """A CEL expression failed at run time; `kind` is one of the FAULT_* codes of cel.py."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class ScenarioError(ContractError):
    """A dry-run scenario file is malformed; `where` names the file and item."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
