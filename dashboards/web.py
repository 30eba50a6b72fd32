"""Serving the fleet dashboard's files from a ledger node's FastAPI app.

The dashboard is plain files under ``dashboards/static/``: ``index.html`` (served at ``/`` by
``ledger_node.api``), ES modules, a style sheet and the vendored libraries and offline basemap
under ``vendor/`` (see ``vendor/README.md``). :func:`mount` serves the whole folder at
``/static/``, read-only, with ``Cache-Control: no-cache`` (the browser revalidates with the
ETag, so a new version of a module is picked up on reload) and ``X-Content-Type-Options:
nosniff``. Nothing is fetched from outside the node: the page's Content-Security-Policy
(in ``index.html``) allows only its own origin.

    DashboardError            the dashboard's files are not where they should be
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["PREFIX", "STATIC", "DashboardError", "mount"]

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/static"
REQUIRED = ("index.html", "app.js", "api.js", "style.css", "vendor/leaflet/leaflet.js",
            "vendor/world-atlas/countries-50m.json")


class DashboardError(RuntimeError):
    """The dashboard's files are missing (a broken install): names the first one missing."""


class _DashboardFiles(StaticFiles):
    """StaticFiles with the two headers every dashboard file gets."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount(app: FastAPI, directory: Path = STATIC, prefix: str = PREFIX) -> None:
    """Serve ``directory`` (the dashboard's files) under ``prefix`` in ``app``.

    Requires every file in ``REQUIRED`` to exist under ``directory``, else DashboardError, so
    a broken install fails when the node starts rather than as a blank page. Paths that leave
    the folder, or name no file, answer 404.
    """
    for name in REQUIRED:
        if not (directory / name).is_file():
            raise DashboardError(f"dashboard file missing: {directory / name}")
    app.mount(prefix, _DashboardFiles(directory=directory), name="dashboard")
