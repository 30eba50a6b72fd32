"""One emulated truck: a GPS receiver on a pty and a 1-wire bus with two reefer probes.

Layout under ``DIR``::

    DIR/gps.tty          symlink to the pty slave (/dev/pts/N) speaking NMEA at 9600 baud
    DIR/w1/28-.../w1_slave   DS18B20 probes, rewritten every ``interval`` seconds
    DIR/gpio/gpio17/value    door contact, and DIR/rfid.tty an RFID reader (--scenario only)

Command line (registered under the umbrella CLI by :func:`register`)::

    shim truck --dir DIR --index N [--interval 1.0] [--speedup 1.0] [--replay LOGFILE]
               [--probes 2]

It prints one line when the devices are ready (``truck N ready: gps_tty=... device=...
w1=...``), runs until SIGTERM or SIGINT, cleans up (symlink removed, pty closed) and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from firmware_shims.gpio_sysfs import GpioLineShim
from firmware_shims.nmea_pty import NmeaPtyShim
from firmware_shims.rfid_reader import RfidReaderShim
from firmware_shims.scenario import Scenario, ScenarioDriver, load_scenario
from firmware_shims.w1_sysfs import W1SysfsShim

__all__ = ["DOOR_GPIO", "TruckShimInfo", "register", "run_truck_shim"]

DOOR_GPIO = 17


@dataclass(frozen=True)
class TruckShimInfo:
    """Where the emulated truck's devices are, handed to ``on_ready``."""

    index: int
    gps_tty: Path
    device: str
    w1_dir: Path
    probes: tuple[str, ...]

    def ready_line(self) -> str:
        return (
            f"truck {self.index} ready: gps_tty={self.gps_tty} device={self.device} "
            f"w1={self.w1_dir} probes={','.join(self.probes)}"
        )


def run_truck_shim(
    dir: Path,
    index: int,
    interval: float,
    stop: threading.Event,
    *,
    replay: Path | None = None,
    speedup: float = 1.0,
    probes: int = 2,
    on_ready: Callable[[TruckShimInfo], None] | None = None,
    scenario: Scenario | None = None,
) -> None:
    """Run truck ``index``'s devices under ``dir`` until ``stop`` is set.

    GPS: the synthetic route of truck ``index`` (or ``replay``, a gpsfake log, looping),
    one epoch per ``interval`` device seconds, ``speedup`` times faster than real time.
    Temperatures follow ``cold_chain_profile`` of the wall clock, rewritten as often as
    GPS epochs are. With a ``scenario``, temperatures follow it instead, and a door contact
    (``DIR/gpio/gpio17/value``) and a serial RFID reader (``DIR/rfid.tty``) play its script.
    """
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    link = root / "gps.tty"
    if replay is not None:
        gps = NmeaPtyShim.replay(replay, interval=interval, speedup=speedup, link=link)
    else:
        gps = NmeaPtyShim.synthetic(index, interval=interval, speedup=speedup, link=link)
    if scenario is None:
        w1 = W1SysfsShim(root / "w1", index=index, count=probes).create()
        w1.update(time.time())
        with gps:
            if on_ready is not None:
                on_ready(TruckShimInfo(index, link, gps.device_path, w1.base_dir,
                                       tuple(w1.probes)))
            while not stop.wait(interval / speedup):
                w1.update(time.time())
        return
    # A scripted trip: temperatures, door line and RFID reader follow the scenario's clock.
    started = time.monotonic()
    w1 = W1SysfsShim(root / "w1", index=index, count=probes,
                     profile=scenario.temperature).create()
    w1.update(0.0)
    driver = ScenarioDriver(scenario, GpioLineShim(root / "gpio", DOOR_GPIO).create(),
                            RfidReaderShim(link=root / "rfid.tty"))
    assert driver.reader is not None
    with gps, driver.reader:
        if on_ready is not None:
            on_ready(TruckShimInfo(index, link, gps.device_path, w1.base_dir, tuple(w1.probes)))
        while not stop.wait(min(interval, 0.5) / speedup):
            t_s = (time.monotonic() - started) * speedup
            w1.update(t_s)
            driver.step(t_s)
            while driver.log:
                print(f"truck {index} scenario {scenario.name}: {driver.log.pop(0)}",
                      flush=True)


def _cmd_truck(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # set the event from another thread: Event.set() inside a signal handler can
        # deadlock if the main thread is interrupted while holding the event's lock
        threading.Thread(target=stop.set, daemon=True).start()

    def on_ready(info: TruckShimInfo) -> None:
        print(info.ready_line(), flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_truck_shim(
            args.dir,
            args.index,
            args.interval,
            stop,
            replay=args.replay,
            speedup=args.speedup,
            probes=args.probes,
            on_ready=on_ready,
            scenario=load_scenario(args.scenario) if args.scenario else None,
        )
    except (OSError, ValueError) as err:
        print(f"shim truck: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shim truck ...`` to a CLI; the handler is ``args.func(args) -> int``."""
    shim = subparsers.add_parser("shim", help="hardware emulators (firmware shims)")
    kinds = shim.add_subparsers(dest="shim_kind", required=True)
    truck = kinds.add_parser(
        "truck", help="one truck: NMEA GPS on a pty (DIR/gps.tty) and 1-wire probes (DIR/w1)"
    )
    truck.add_argument("--dir", type=Path, required=True, help="folder for the device files")
    truck.add_argument("--index", type=_count, required=True, help="truck number (route, ids)")
    truck.add_argument("--interval", type=_positive, default=1.0, help="seconds between GPS epochs")
    truck.add_argument(
        "--speedup", type=_positive, default=1.0, help="run this many times real time"
    )
    truck.add_argument("--replay", type=Path, help="replay this gpsfake log instead")
    truck.add_argument("--probes", type=_count, default=2, help="DS18B20 probes on the bus")
    truck.add_argument("--scenario", type=Path,
                       help="trip scenario (YAML): excursions, door (DIR/gpio/gpio17/value), "
                            "RFID scans (DIR/rfid.tty)")
    truck.set_defaults(func=_cmd_truck)
