"""Operator endpoints: the contracts on the ledger, and Prometheus metrics.

    GET /v1/contracts              every version of every contract: status, effective, entry
    GET /v1/contracts/{name}       one contract's versions, with their documents
    GET /metrics                   Prometheus text format (ledger_node.metrics)

All three need an operator or auditor token (a scraper sends `Authorization: Bearer`):
contract documents are business terms between the parties, and the metrics say as much as
`/v1/node/status`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import Response

from ledger_node.auth import Staff
from ledger_node.contracts.document import NAME_RE
from ledger_node.metrics import MetricsError, metrics_endpoint
from ledger_node.store import reading

ContractName = Annotated[str, PathParam(min_length=1, max_length=64,
                                        pattern=f"^{NAME_RE.pattern}$")]


def create_router(db_path: Path, status: Callable[[], dict[str, Any]] | None) -> APIRouter:
    router = APIRouter()

    def rows(where: str = "", args: tuple[Any, ...] = (), *, with_doc: bool = True
             ) -> list[dict[str, Any]]:
        doc = ", doc" if with_doc else ""
        with reading(db_path) as conn:
            found = conn.execute("SELECT name, version, status, effective, retired, entry"
                                 f"{doc} FROM contracts {where} ORDER BY name, version", args)
            return [{"name": r["name"], "version": r["version"], "status": r["status"],
                     "effective": r["effective"], "until": r["retired"], "entry": r["entry"],
                     **({"doc": r["doc"]} if with_doc else {})} for r in found.fetchall()]

    @router.get("/v1/contracts", tags=["contracts"])
    def contracts(who: Staff) -> dict[str, Any]:
        """Every version of every contract registered on the ledger (active, superseded by
        an upgrade, or retired), with the entry that registered it."""
        return {"items": rows(with_doc=False)}

    @router.get("/v1/contracts/{name}", tags=["contracts"])
    def contract(name: ContractName, who: Staff) -> dict[str, Any]:
        """One contract's versions, each with its document as registered."""
        found = rows("WHERE name = ?", (name,))
        if not found:
            raise HTTPException(404, f"no contract {name!r}")
        return {"name": name, "versions": found}

    @router.get("/metrics", tags=["node"], response_class=Response,
                responses={200: {"content": {"text/plain": {}}}})
    def metrics(who: Staff) -> Response:
        """Prometheus metrics of this node (docs/metrics.md)."""
        try:
            body, content_type = metrics_endpoint(status or dict, db_path=db_path)
        except MetricsError as exc:
            raise HTTPException(503, str(exc)) from None
        return Response(body, media_type=content_type)

    return router
