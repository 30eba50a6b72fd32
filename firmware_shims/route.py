"""Synthetic delivery routes: one closed loop per truck around a real logistics hub.

Pure functions of (truck index, time). Truck ``i`` drives a loop starting and ending at hub
``HUBS[i % len(HUBS)]``; the waypoints, leg speeds (10-25 m/s) and direction come from a
generator seeded with the index, so every run gives truck ``i`` the same loop and two
trucks at the same hub get different loops. Position is interpolated linearly in latitude
and longitude along each leg, and speed and course are those of the leg, consistent with
the displacement on a local flat-earth approximation (legs are a few km long).

``Route.at(t_s)`` takes seconds on any clock (Unix time works): the loop repeats every
``period_s`` seconds, so the position is a function of time alone.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "EARTH_RADIUS_M",
    "HUBS",
    "Hub",
    "Route",
    "RoutePoint",
    "point_at",
    "route_for_truck",
]

EARTH_RADIUS_M = 6_371_008.8
MIN_SPEED_MPS = 10.0
MAX_SPEED_MPS = 25.0


@dataclass(frozen=True)
class Hub:
    """A real logistics hub: a depot the loop starts from."""

    name: str
    lat: float
    lon: float


HUBS: tuple[Hub, ...] = (
    Hub("Rotterdam Waalhaven", 51.8790, 4.4300),
    Hub("Hamburg Altenwerder", 53.5050, 9.9300),
    Hub("Duisburg logport", 51.4030, 6.7100),
    Hub("Venlo Trade Port", 51.3830, 6.1560),
    Hub("Frankfurt CargoCity Sued", 50.0330, 8.5600),
    Hub("Antwerp Port", 51.2750, 4.3300),
    Hub("Leipzig/Halle air hub", 51.4240, 12.2240),
    Hub("Memphis intermodal", 35.0420, -89.9770),
)


@dataclass(frozen=True)
class RoutePoint:
    """Where a truck is: degrees, m/s over ground, course in degrees true [0, 360)."""

    lat: float
    lon: float
    speed: float
    course: float


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


def _leg_vector(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(north_m, east_m) from a to b on the local flat-earth approximation."""
    mid_lat = math.radians((a[0] + b[0]) / 2.0)
    north = math.radians(b[0] - a[0]) * EARTH_RADIUS_M
    east = math.radians(b[1] - a[1]) * EARTH_RADIUS_M * math.cos(mid_lat)
    return north, east


@dataclass(frozen=True)
class Route:
    """A closed loop: leg ``i`` runs from ``waypoints[i]`` to ``waypoints[i + 1]`` (wrapping)
    at ``speeds[i]`` m/s. Requires at least 2 distinct waypoints and positive speeds."""

    hub: Hub
    waypoints: tuple[tuple[float, float], ...]
    speeds: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.waypoints) < 2 or len(self.speeds) != len(self.waypoints):
            raise ValueError("a route needs >= 2 waypoints and one speed per leg")
        if any(s <= 0 for s in self.speeds):
            raise ValueError("leg speeds must be positive")

    @cached_property
    def _legs(self) -> tuple[tuple[float, float, float], ...]:
        """(north_m, east_m, duration_s) per leg."""
        legs = []
        for i, a in enumerate(self.waypoints):
            b = self.waypoints[(i + 1) % len(self.waypoints)]
            north, east = _leg_vector(a, b)
            legs.append((north, east, math.hypot(north, east) / self.speeds[i]))
        return tuple(legs)

    @cached_property
    def _starts(self) -> tuple[float, ...]:
        starts = [0.0]
        for _, _, duration in self._legs:
            starts.append(starts[-1] + duration)
        return tuple(starts)

    @property
    def length_m(self) -> float:
        return sum(math.hypot(n, e) for n, e, _ in self._legs)

    @property
    def period_s(self) -> float:
        """Seconds to drive the whole loop once."""
        return self._starts[-1]

    def at(self, t_s: float) -> RoutePoint:
        """The truck's position, speed and course at time ``t_s`` (loop repeats)."""
        legs, starts = self._legs, self._starts
        t = math.fmod(t_s, starts[-1])
        if t < 0:
            t += starts[-1]
        i = min(bisect.bisect_right(starts, t) - 1, len(legs) - 1)
        north, east, duration = legs[i]
        frac = (t - starts[i]) / duration if duration > 0 else 0.0
        a = self.waypoints[i]
        b = self.waypoints[(i + 1) % len(self.waypoints)]
        lat = a[0] + (b[0] - a[0]) * frac
        lon = a[1] + (b[1] - a[1]) * frac
        course = math.degrees(math.atan2(east, north)) % 360.0
        return RoutePoint(lat=lat, lon=lon, speed=self.speeds[i], course=course)


def route_for_truck(index: int, *, seed: int | None = None) -> Route:
    """The loop truck ``index`` drives. Same index (and seed) gives the same route.

    7 to 11 waypoints on a ragged ring of 3-12 km around the hub, the hub itself first.
    """
    if index < 0:
        raise ValueError("truck index must be >= 0")
    hub = HUBS[index % len(HUBS)]
    rng = random.Random(f"trustfleet-route/{index}/{seed if seed is not None else 0}")
    count = rng.randint(7, 11)
    radius = rng.uniform(5_000.0, 9_000.0)
    start = rng.uniform(0.0, 2.0 * math.pi)
    turn = rng.choice((-1.0, 1.0))
    points = [(hub.lat, hub.lon)]
    for k in range(count - 1):
        angle = start + turn * 2.0 * math.pi * (k + rng.uniform(0.1, 0.6)) / (count - 1)
        r = radius * rng.uniform(0.6, 1.35)
        # the ring is centred one radius away from the hub, so the loop passes the depot
        north = radius * math.cos(start) + r * math.cos(angle + math.pi)
        east = radius * math.sin(start) + r * math.sin(angle + math.pi)
        points.append(_offset(hub.lat, hub.lon, north, east))
    speeds = tuple(round(rng.uniform(MIN_SPEED_MPS, MAX_SPEED_MPS), 1) for _ in points)
    return Route(hub=hub, waypoints=tuple(points), speeds=speeds)


def point_at(index: int, t_s: float) -> RoutePoint:
    """Shortcut: ``route_for_truck(index).at(t_s)``."""
    return route_for_truck(index).at(t_s)
