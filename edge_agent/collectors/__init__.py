"""Collectors: one module per hardware interface, each turning raw device data into Samples.

- ``base``: :class:`Sample` and the ``Clock`` type shared by all collectors;
- ``errors``: the collector error tree (``CollectorError`` and its subclasses);
- ``nmea``: pure NMEA 0183 parsing (``NmeaAssembler``);
- ``gps_serial``: GPS on a serial port (``SerialGpsCollector``, needs pyserial);
- ``gpsd_json`` and ``gps_gpsd``: GPS from gpsd's JSON protocol (``GpsdCollector``);
- ``w1_temp``: DS18B20 probes on the Linux 1-wire bus (``W1TemperatureCollector``);
- ``rfid_serial`` and ``epc``: a serial RFID reader, EPCs decoded by epcpy (needs epcpy);
- ``rfid_llrp``: fixed UHF readers over LLRP (``LlrpRfidCollector``, needs sllurp);
- ``shock_i2c``: an ADXL345 accelerometer over I2C, peak g per window (smbus2 on a device);
- ``door_gpio``: a door contact on a sysfs GPIO line.

Importing this package loads only the light shared types below.
"""

from edge_agent.collectors.base import Clock, Sample, SampleValue, system_clock
from edge_agent.collectors.errors import (
    CollectorError,
    DeviceUnavailable,
    ProtocolError,
    SensorReadError,
    SerialLineError,
)

__all__ = [
    "Clock",
    "CollectorError",
    "DeviceUnavailable",
    "ProtocolError",
    "Sample",
    "SampleValue",
    "SensorReadError",
    "SerialLineError",
    "system_clock",
]
