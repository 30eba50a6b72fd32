"""Hardware emulators that speak the hardware's own interface.

The agent's collectors cannot tell them from the real devices:

- ``nmea_pty``: a GPS receiver on a pseudo-terminal (NMEA 0183, synthetic route or a
  replayed gpsfake log), optionally behind a symlink such as ``DIR/gps.tty``;
- ``w1_sysfs``: a Linux 1-wire bus with DS18B20 probes as ``w1_therm`` shows it in sysfs;
- ``truck``: both for one emulated truck, and the ``shim truck`` command;
- ``route`` and ``nmea_gen``: the pure parts (routes around real hubs, sentence builders,
  the gpsfake log reader).

Run one truck: ``python -m firmware_shims shim truck --dir DIR --index N``.
"""
