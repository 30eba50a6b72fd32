"""Errors raised by the collectors.

The whole tree::

    EdgeAgentError                 (edge_agent.errors) root of the edge agent's errors
    └── CollectorError             root of everything a collector raises
        ├── SerialLineError        one bad line from a serial device: log it, count it, go on
        ├── SensorReadError        one bad reading from a sensor (e.g. a DS18B20 CRC mismatch):
        │                          log it, count it, try again at the next read
        ├── ProtocolError          one bad message from a device on the network (a gpsd JSON
        │                          line, an LLRP message): log it, count it, go on
        └── DeviceUnavailable      the port, socket or sysfs file is missing or went away:
                                   retry later

Each error carries a machine-readable ``reason`` (a short snake_case string such as
``bad_checksum`` or ``power_on_reset``) so counters and logs can group them; the message is
for people.

Foreign exceptions (``serial.SerialException``, ``OSError``, ``pynmea2.ParseError``,
``json.JSONDecodeError``, sllurp's ``LLRPError``, ``ValueError`` from field conversion) are
translated into these at the one place where they enter our code and nowhere else.
"""

from __future__ import annotations

from edge_agent.errors import EdgeAgentError

__all__ = [
    "CollectorError",
    "DeviceUnavailable",
    "ProtocolError",
    "SensorReadError",
    "SerialLineError",
]


class CollectorError(EdgeAgentError):
    """Root of every error a collector raises."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)


class SerialLineError(CollectorError):
    """One line read from a serial device was rejected.

    ``line`` holds the offending bytes (cut to 200 bytes) as evidence. The collector logs
    and counts the error and carries on with the next line.
    """

    MAX_EVIDENCE = 200

    def __init__(self, reason: str, line: bytes = b"", message: str | None = None) -> None:
        self.line = bytes(line[: self.MAX_EVIDENCE])
        super().__init__(reason, message)


class SensorReadError(CollectorError):
    """One reading from a sensor was rejected (bad CRC, known bogus value, garbled file)."""

    def __init__(self, reason: str, device: str = "", message: str | None = None) -> None:
        self.device = device
        super().__init__(reason, f"{device}: {message}" if device and message else message)


class ProtocolError(CollectorError):
    """One message from a network device was rejected (bad JSON, bad framing, bad field).

    ``evidence`` holds the offending bytes (cut to 200 bytes). The collector logs and counts
    the error and carries on with the next message.
    """

    MAX_EVIDENCE = 200

    def __init__(self, reason: str, evidence: bytes = b"", message: str | None = None) -> None:
        self.evidence = bytes(evidence[: self.MAX_EVIDENCE])
        super().__init__(reason, message)


class DeviceUnavailable(CollectorError):
    """The device (serial port, sysfs directory or file) is missing or went away.

    Transient by assumption: the caller retries later, with backoff.
    """

    def __init__(self, reason: str, device: str = "", message: str | None = None) -> None:
        self.device = device
        super().__init__(reason, f"{device}: {message}" if device and message else message)
