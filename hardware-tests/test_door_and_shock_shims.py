"""Door contact (sysfs GPIO value file) and shock (ADXL345 over I2C) against their shims.

The GPIO shim is a real sysfs-style folder; the ADXL345 shim is a register map behind
smbus2's SMBus interface (no i2c-stub kernel module here, see firmware_shims.adxl345).
With TF_DOOR_GPIO (a value file) or TF_I2C_BUS (a bus number) set, real devices are read.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import smbus2

from edge_agent.collectors.door_gpio import DoorCollector
from edge_agent.collectors.errors import DeviceUnavailable, SensorReadError
from edge_agent.collectors.shock_i2c import ShockCollector, open_i2c_bus
from firmware_shims.adxl345 import Adxl345Shim
from firmware_shims.gpio_sysfs import GpioLineShim

pytestmark = pytest.mark.hardware


class StepClock:
    def __init__(self, step_ms: int = 100) -> None:
        self.t, self.step = 1_767_225_600_000, step_ms

    def __call__(self) -> tuple[int, str]:
        self.t += self.step
        return self.t, "gps"


def test_door_opening_and_closing_become_one_reading_each_after_debounce(
        tmp_path: Path) -> None:
    line = GpioLineShim(tmp_path, 17).create(value=0)
    door = DoorCollector(line.value_path, clock=StepClock())
    readings = []
    for value in (0, 0, 1, 0, 1, 1, 1, 0, 0):  # closed, a bounce, opened, closed
        line.set(value)
        readings += door.read_available()
    assert [r.values["open"] for r in readings] == [False, True, False]
    assert all(r.kind == "door" and r.values["line"] == "gpio17" for r in readings)
    assert door.stats["bounces"] == 1


def test_active_low_contact_reads_zero_as_open(tmp_path: Path) -> None:
    line = GpioLineShim(tmp_path, 4).create(value=0)
    door = DoorCollector(line.value_path, clock=StepClock(), active_low=True, debounce_reads=1)
    assert door.read_available()[0].values["open"] is True


def test_garbage_or_a_missing_gpio_value_is_counted_not_fatal(tmp_path: Path) -> None:
    line = GpioLineShim(tmp_path, 17).create(value=1)
    door = DoorCollector(line.value_path, clock=StepClock(), debounce_reads=1)
    line.write_raw("x\n")
    with pytest.raises(SensorReadError, match="bad_value"):
        door.read_available()
    line.remove()
    with pytest.raises(DeviceUnavailable):
        door.read_available()
    line.create(value=1)
    assert door.read_available()[0].values["open"] is True
    assert door.stats["errors"] == 2


def test_the_adxl345_shim_offers_the_smbus2_methods_the_collector_uses() -> None:
    for name in ("read_byte_data", "write_byte_data", "read_i2c_block_data", "close"):
        ours = list(inspect.signature(getattr(Adxl345Shim, name)).parameters)
        theirs = list(inspect.signature(getattr(smbus2.SMBus, name)).parameters)
        assert ours == theirs[:len(ours)], name


def test_a_shock_above_the_floor_is_reported_with_its_peak_and_rest_is_not() -> None:
    chip = Adxl345Shim()
    shock = ShockCollector(chip, clock=StepClock(250), floor_g=2.0, window_s=1.0)
    assert shock.read_available() == []  # set-up: the chip now measures, FIFO in stream mode
    assert chip.registers[0x31] == 0x0B and chip.registers[0x2D] & 0x08
    out = []
    for _ in range(8):  # two windows at rest
        chip.rest(25)
        out += shock.read_available()
    assert out == []
    chip.rest(10)
    chip.shock(3.5, n=11)
    for _ in range(4):
        out += shock.read_available()
    assert len(out) == 1 and out[0].kind == "shock"
    assert out[0].values["peak_g"] == pytest.approx((3.5**2 + 1) ** 0.5, abs=0.02)
    assert out[0].values["x"] == pytest.approx(3.5, abs=0.02)


def test_an_i2c_error_is_counted_and_the_chip_is_set_up_again() -> None:
    chip = Adxl345Shim()
    shock = ShockCollector(chip, clock=StepClock(600), floor_g=2.0, window_s=1.0)
    shock.read_available()
    chip.fail_next(1)
    with pytest.raises(SensorReadError, match="i2c_error"):
        shock.read_available()
    chip.write_byte_data(0x53, 0x2D, 0x00)  # the chip browned out: back in standby
    shock.read_available()  # set up again
    chip.shock(4.0, n=5)
    out = shock.read_available() + shock.read_available()
    assert [s.kind for s in out] == ["shock"]
    assert shock.stats["error:i2c_error"] == 1


def test_a_device_that_is_not_an_adxl345_is_refused() -> None:
    chip = Adxl345Shim()
    chip.registers[0x00] = 0x1D
    with pytest.raises(SensorReadError, match="bad_devid"):
        ShockCollector(chip).read_available()


@pytest.mark.skipif("TF_DOOR_GPIO" not in os.environ,
                    reason="no real door contact: set TF_DOOR_GPIO=/sys/class/gpio/gpioN/value")
def test_a_real_door_contact_reads_open_or_closed() -> None:
    door = DoorCollector(Path(os.environ["TF_DOOR_GPIO"]), debounce_reads=1)
    assert door.read_available()[0].values["open"] in (True, False)


@pytest.mark.skipif("TF_I2C_BUS" not in os.environ,
                    reason="no real ADXL345: set TF_I2C_BUS=1 (and TF_I2C_ADDRESS=0x53)")
def test_a_real_adxl345_answers_and_reads_about_one_g_at_rest() -> None:
    bus = open_i2c_bus(os.environ["TF_I2C_BUS"])
    shock = ShockCollector(bus, int(os.environ.get("TF_I2C_ADDRESS", "0x53"), 16), floor_g=0.5)
    try:
        shock.setup()
    finally:
        shock.close()
