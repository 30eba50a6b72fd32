"""Operator endpoints: the contracts on the ledger, and Prometheus metrics.

    GET /v1/contracts              every version of every contract: status, effective, entry
    GET /v1/contracts/{name}       one contract's versions, with their documents
    GET /metrics                   Prometheus text format (ledger_node.metrics)

All three need an operator or auditor token (a scraper sends `Authorization: Bearer`):
contract documents are business terms between the parties, and the metrics say as much as
`/v1/node/status`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import Response

from ledger_node.auth import Principal, require_staff
from ledger_node.metrics import MetricsError, metrics_endpoint
from ledger_node.store import reading

Staff = Annotated[Principal, Depends(require_staff)]
ContractName = Annotated[str, PathParam(min_length=1, max_length=64,
                                        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


def create_router(db_path: Path, status: Callable[[], dict[str, Any]] | None) -> APIRouter:
    router = APIRouter()

    def db() -> AbstractContextManager[sqlite3.Connection]:
        return reading(db_path)

    def rows(where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with db() as conn:
            found = conn.execute("SELECT name, version, status, effective, retired, doc, entry "
                                 f"FROM contracts {where} ORDER BY name, version", args)
            return [{"name": r["name"], "version": r["version"], "status": r["status"],
                     "effective": r["effective"], "until": r["retired"], "entry": r["entry"],
                     "doc": r["doc"]} for r in found.fetchall()]

    @router.get("/v1/contracts", tags=["contracts"])
    def contracts(who: Staff) -> dict[str, Any]:
        """Every version of every contract registered on the ledger (active, superseded by
        an upgrade, or retired), with the entry that registered it."""
        return {"items": [{k: v for k, v in r.items() if k != "doc"} for r in rows()]}

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
