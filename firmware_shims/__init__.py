"""Hardware emulators that speak the hardware's own interface.

The agent's collectors cannot tell them from the real devices:

- ``nmea_pty``: a GPS receiver on a pseudo-terminal (NMEA 0183, synthetic route or a
  replayed gpsfake log), optionally behind a symlink such as ``DIR/gps.tty``;
- ``w1_sysfs``: a Linux 1-wire bus with DS18B20 probes as ``w1_therm`` shows it in sysfs;
- ``gpsfake``: the real gpsd fed by ``gpsfake`` replaying a receiver log, on a loopback port;
- ``rfid_reader``: a serial RFID reader on a pty (one tag per line; EPC encoder);
- ``llrp_reader`` and ``llrp_codec``: a fixed UHF reader speaking LLRP 1.0.1 on a loopback
  TCP port (capabilities, ROSpecs, RO_ACCESS_REPORTs, keepalives);
- ``gpio_sysfs``: a sysfs GPIO line (door contact);
- ``adxl345``: an ADXL345 register map behind smbus2's interface (in-process only);
- ``scenario`` and ``scenarios/*.yaml``: scripted trips (excursions, doors, scans, shocks);
- ``truck``: all of them for one emulated truck, and the ``shim truck`` command;
- ``route`` and ``nmea_gen``: the pure parts (routes around real hubs, sentence builders,
  the gpsfake log reader).

Run one truck: ``python -m firmware_shims shim truck --dir DIR --index N``.
"""
