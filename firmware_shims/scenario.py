"""Trip scenarios (YAML): temperature excursions, door openings, RFID scans, shocks.

A scenario scripts what a truck's hardware sees, in seconds after the shim starts, and
repeats every ``loop_s`` (see ``scenarios/cold-chain-trip.yaml``)::

    name: cold-chain-trip
    loop_s: 300
    temperature: {base_c: 5.0, excursions: [{at_s: 90, duration_s: 120, peak_c: 11.0}]}
    doors: [{at_s: 20, open_s: 15}]
    rfid: [{at_s: 10, depot: Rotterdam Waalhaven, tags: [urn:epc:id:sscc:..., HEX]}]
    shocks: [{at_s: 120, peak_g: 3.5}]

:func:`load_scenario` validates it (errors name the file and the key). The pure parts
answer "what at time t": :meth:`Scenario.temperature`, :meth:`Scenario.door_open`,
:meth:`Scenario.due_scans`; :class:`ScenarioDriver` applies them to a door GPIO shim and an
RFID reader shim. Shocks drive an in-process ADXL345 shim only (``due_shocks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from firmware_shims.gpio_sysfs import GpioLineShim
from firmware_shims.rfid_reader import RfidReaderShim
from firmware_shims.w1_sysfs import Excursion, cold_chain_profile

__all__ = ["DoorOpening", "Scan", "Scenario", "ScenarioDriver", "Shock", "load_scenario"]


@dataclass(frozen=True)
class DoorOpening:
    at_s: float
    open_s: float


@dataclass(frozen=True)
class Scan:
    at_s: float
    depot: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Shock:
    at_s: float
    peak_g: float


@dataclass(frozen=True)
class Scenario:
    name: str
    loop_s: float
    base_c: float = 5.0
    excursions: tuple[Excursion, ...] = ()
    doors: tuple[DoorOpening, ...] = ()
    scans: tuple[Scan, ...] = ()
    shocks: tuple[Shock, ...] = ()

    def temperature(self, t_s: float) -> float:
        return cold_chain_profile(t_s % self.loop_s, base_c=self.base_c,
                                  excursions=self.excursions)

    def door_open(self, t_s: float) -> bool:
        t = t_s % self.loop_s
        return any(d.at_s <= t < d.at_s + d.open_s for d in self.doors)

    def due_scans(self, after_s: float, until_s: float) -> list[Scan]:
        """Scans whose time falls in (after_s, until_s], across loop boundaries."""
        return [e for e in self.scans if _crossed(e.at_s, after_s, until_s, self.loop_s)]

    def due_shocks(self, after_s: float, until_s: float) -> list[Shock]:
        return [e for e in self.shocks if _crossed(e.at_s, after_s, until_s, self.loop_s)]


def _crossed(at_s: float, after_s: float, until_s: float, loop_s: float) -> bool:
    k = (after_s - at_s) // loop_s + 1  # first occurrence after `after_s`
    return at_s + k * loop_s <= until_s


def _num(doc: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < -1e6:
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file. Raises ValueError naming the file and the key."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a scenario is a mapping")
    known = {"name", "loop_s", "temperature", "doors", "rfid", "shocks"}
    if unknown := set(doc) - known:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    loop_s = _num(doc, "loop_s", str(path), 3600.0)
    if loop_s <= 0:
        raise ValueError(f"{path}: loop_s must be > 0")
    temp = doc.get("temperature") or {}
    excursions = tuple(Excursion(_num(e, "at_s", f"{path}: temperature.excursions"),
                                 _num(e, "duration_s", f"{path}: temperature.excursions"),
                                 _num(e, "peak_c", f"{path}: temperature.excursions"))
                       for e in temp.get("excursions") or [])
    doors = tuple(DoorOpening(_num(d, "at_s", f"{path}: doors"), _num(d, "open_s",
                                                                       f"{path}: doors"))
                  for d in doc.get("doors") or [])
    scans = []
    for i, s in enumerate(doc.get("rfid") or []):
        tags = s.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{path}: rfid[{i}].tags must be a list of EPC URIs or hex")
        scans.append(Scan(_num(s, "at_s", f"{path}: rfid[{i}]"), str(s.get("depot", "")),
                          tuple(tags)))
    shocks = tuple(Shock(_num(s, "at_s", f"{path}: shocks"), _num(s, "peak_g",
                                                                  f"{path}: shocks"))
                   for s in doc.get("shocks") or [])
    return Scenario(str(doc.get("name", Path(path).stem)), loop_s,
                    _num(temp, "base_c", f"{path}: temperature", 5.0), excursions, doors,
                    tuple(scans), shocks)


@dataclass
class ScenarioDriver:
    """Applies a scenario to a truck's door line and RFID reader as time goes by."""

    scenario: Scenario
    door: GpioLineShim | None = None
    reader: RfidReaderShim | None = None
    last_s: float = -1e-9
    log: list[str] = field(default_factory=list)

    def step(self, t_s: float) -> None:
        if self.door is not None:
            self.door.set(1 if self.scenario.door_open(t_s) else 0)
        for scan in self.scenario.due_scans(self.last_s, t_s):
            self.log.append(f"{t_s:.1f}s: {len(scan.tags)} tag(s) at {scan.depot}")
            if self.reader is not None:
                for tag in scan.tags:
                    self.reader.scan(tag)
        self.last_s = t_s
