"""A GPIO line as the Linux sysfs GPIO interface shows it: ``DIR/gpioN/value`` and friends.

``GpioLineShim(base_dir, 17).create()`` makes ``gpio17/{value,direction,active_low,edge}``;
``set(1)`` rewrites ``value`` atomically (temporary file + rename), so a reader never sees
half a write. ``write_raw`` puts anything in the file (a fault), ``remove`` takes the line
away (unexported). Point ``edge_agent.collectors.door_gpio.DoorCollector`` at ``value_path``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["GpioLineShim"]


class GpioLineShim:
    def __init__(self, base_dir: Path, number: int) -> None:
        self.folder = Path(base_dir) / f"gpio{number}"

    @property
    def value_path(self) -> Path:
        return self.folder / "value"

    def create(self, value: int = 0) -> GpioLineShim:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("direction", "in"), ("active_low", "0"), ("edge", "both")):
            (self.folder / name).write_text(text + "\n")
        self.set(value)
        return self

    def set(self, value: int) -> None:
        self.write_raw(f"{1 if value else 0}\n")

    def write_raw(self, text: str) -> None:
        tmp = self.folder / f".value.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, self.value_path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
