"""The agent builds one collector per configured interface and reads each from its shim."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from edge_agent.clock import AgentClock
from edge_agent.collectors.base import Sample
from edge_agent.collectors.errors import CollectorError, DeviceUnavailable
from edge_agent.config import AgentConfig
from edge_agent.sensors import build_collectors
from firmware_shims.gpio_sysfs import GpioLineShim
from firmware_shims.rfid_reader import RfidReaderShim

pytestmark = pytest.mark.hardware


def test_rfid_and_door_from_config_read_their_shims(tmp_path: Path) -> None:
    door = GpioLineShim(tmp_path / "gpio", 17).create(value=1)
    with RfidReaderShim(link=tmp_path / "rfid.tty") as reader:
        cfg = AgentConfig(rfid_port=str(tmp_path / "rfid.tty"), door_gpio=door.value_path)
        collectors = build_collectors(cfg, AgentClock())
        reader.scan("urn:epc:id:sscc:0614141.1234567890")
        got: list[Sample] = []
        deadline = time.monotonic() + 5
        while {s.kind for s in got} != {"rfid", "door"} and time.monotonic() < deadline:
            for c in collectors:
                with contextlib.suppress(CollectorError):
                    got += c.read_available()
        for c in collectors:
            c.close()
    assert {s.kind for s in got} == {"rfid", "door"}
    assert next(s for s in got if s.kind == "door").values["open"] is True


def test_a_missing_i2c_bus_is_reported_when_the_agent_starts() -> None:
    with pytest.raises(DeviceUnavailable, match="i2c_missing"):
        build_collectors(AgentConfig(i2c_bus="/dev/i2c-tf-none"), AgentClock())
