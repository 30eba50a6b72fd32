"""Geofences and route corridors, in metres, for the contract engine.

Geofences are GeoJSON Polygons in (lon, lat). "Inside" is tested in lon/lat directly (a
topological test needs no projection); a point on the boundary counts as inside.

A route corridor is the shipment's GeoJSON LineString with a width: a position deviates when
its distance to the line is more than width_m / 2. Distances are computed in metres on a
local equirectangular projection centred on the centroid (lon0, lat0) of the line's
vertices:

    x = R * radians(lon - lon0) * cos(radians(lat0)),   y = R * radians(lat - lat0)

with R = 6,371,008.8 m (the mean Earth radius). Over a route a few hundred kilometres long
the error is well under 1 %, ample for corridors of hundreds of metres; routes that cross
the antimeridian or pass near a pole are not supported (the shipment book refuses nothing
there, but distances would be wrong). Pure functions over shapely geometries; prepared once
per shipment.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import shapely

EARTH_RADIUS_M: Final = 6_371_008.8
SMALL_ROUTE: Final = 32
"""Routes of at most this many vertices are measured in Python (faster than a GEOS call),
longer ones by GEOS; both compute the Euclidean distance in the projected plane (equal up
to the last bits; the choice depends only on the route, so it is deterministic)."""


def _distance_to_polyline(points: list[tuple[float, float]], x: float, y: float) -> float:
    best = math.inf
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        dx, dy = bx - ax, by - ay
        seg = dx * dx + dy * dy
        u = 0.0 if seg == 0 else max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / seg))
        px, py = ax + u * dx - x, ay + u * dy - y
        best = min(best, math.hypot(px, py))
    return best


@dataclass(frozen=True)
class LocalProjection:
    lon0: float
    lat0: float

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        k = EARTH_RADIUS_M * math.pi / 180.0
        return (k * (lon - self.lon0) * math.cos(math.radians(self.lat0)),
                k * (lat - self.lat0))


class Route:
    """A route line, projected once; `distance_m(lon, lat)` to the nearest point of it."""

    def __init__(self, geojson: Mapping[str, Any]) -> None:
        coords = [(float(p[0]), float(p[1])) for p in geojson["coordinates"]]
        lon0 = math.fsum(c[0] for c in coords) / len(coords)
        lat0 = math.fsum(c[1] for c in coords) / len(coords)
        self.projection = LocalProjection(lon0, lat0)
        self.points = [self.projection.xy(lon, lat) for lon, lat in coords]
        self.line = shapely.LineString(self.points)
        shapely.prepare(self.line)

    def distance_m(self, lon: float, lat: float) -> float:
        x, y = self.projection.xy(lon, lat)
        if len(self.points) > SMALL_ROUTE:
            return float(shapely.distance(self.line, shapely.Point(x, y)))
        return _distance_to_polyline(self.points, x, y)


class Fence:
    """A geofence polygon, prepared once; `covers(lon, lat)` (boundary counts as inside)."""

    def __init__(self, geojson: Mapping[str, Any]) -> None:
        rings = geojson["coordinates"]
        self.polygon = shapely.Polygon([(p[0], p[1]) for p in rings[0]],
                                       [[(p[0], p[1]) for p in r] for r in rings[1:]])
        shapely.prepare(self.polygon)
        self.bounds = tuple(float(b) for b in self.polygon.bounds)

    def covers(self, lon: float, lat: float) -> bool:
        x0, y0, x1, y1 = self.bounds
        if lon < x0 or lon > x1 or lat < y0 or lat > y1:
            return False
        return bool(shapely.intersects_xy(self.polygon, lon, lat))


class ShipmentGeo:
    """The prepared geofences (by name, sorted) and route of one shipment."""

    def __init__(self, geofences: Mapping[str, Mapping[str, Any]],
                 route: Mapping[str, Any] | None) -> None:
        self.fences = {name: Fence(geofences[name]) for name in sorted(geofences)}
        self.route = Route(route) if route is not None else None

    def inside(self, lon: float, lat: float) -> list[str]:
        """Names of the geofences covering the position, sorted."""
        return [name for name, f in self.fences.items() if f.covers(lon, lat)]


def position(d: Mapping[str, Any]) -> tuple[float, float] | None:
    """(lon, lat) of a gps reading's values, or None if absent or not finite numbers."""
    lon, lat = d.get("lon"), d.get("lat")
    if (isinstance(lon, int | float) and isinstance(lat, int | float)
            and not isinstance(lon, bool) and not isinstance(lat, bool)
            and math.isfinite(lon) and math.isfinite(lat)
            and -180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        return float(lon), float(lat)
    return None
