"""Which collectors an agent runs, from its config: one per configured hardware interface.

Collectors are imported only when configured, so a terminal without an I2C bus does not
need smbus2, one without RFID does not need epcpy, and one without an LLRP reader does not
need sllurp.
"""

from __future__ import annotations

from edge_agent.agent import Collector, Polled
from edge_agent.clock import AgentClock
from edge_agent.config import AgentConfig
from edge_agent.errors import AgentConfigError

__all__ = ["build_collectors"]


def build_collectors(cfg: AgentConfig, clock: AgentClock) -> list[Collector]:
    collectors: list[Collector] = []
    if cfg.gps_source == "gpsd":
        from edge_agent.collectors.gps_gpsd import GpsdCollector

        collectors.append(GpsdCollector(cfg.gpsd_host, cfg.gpsd_port))
    elif cfg.gps_port:
        from edge_agent.collectors.gps_serial import SerialGpsCollector

        collectors.append(SerialGpsCollector(cfg.gps_port, cfg.gps_baudrate))
    if cfg.w1_dir:
        from edge_agent.collectors.w1_temp import W1TemperatureCollector

        w1 = W1TemperatureCollector(cfg.w1_dir, clock=clock.now)
        collectors.append(Polled(w1.read, cfg.temp_interval_s, "w1"))
    if cfg.rfid_port:
        from edge_agent.collectors.rfid_serial import SerialRfidCollector

        collectors.append(SerialRfidCollector(cfg.rfid_port, cfg.rfid_baudrate,
                                              clock=clock.now, repeat_s=cfg.rfid_repeat_s))
    if cfg.llrp_host:
        try:
            from edge_agent.collectors.rfid_llrp import LlrpRfidCollector
        except ImportError as exc:
            raise AgentConfigError(f"llrp_host needs sllurp ({exc}): install it with "
                                   "pip install 'trustfleet[llrp]'") from None
        collectors.append(LlrpRfidCollector(
            cfg.llrp_host, cfg.llrp_port, antennas=cfg.llrp_antenna_ports, clock=clock.now,
            repeat_s=cfg.rfid_repeat_s, keepalive_s=cfg.llrp_keepalive_s))
    if cfg.i2c_bus:
        from edge_agent.collectors.shock_i2c import ShockCollector, open_i2c_bus

        shock = ShockCollector(open_i2c_bus(cfg.i2c_bus), cfg.i2c_address, clock=clock.now,
                               floor_g=cfg.shock_floor_g, window_s=cfg.shock_window_s)
        collectors.append(shock)
    if cfg.door_gpio:
        from edge_agent.collectors.door_gpio import DoorCollector

        collectors.append(DoorCollector(cfg.door_gpio, clock=clock.now,
                                        active_low=cfg.door_active_low))
    return collectors
