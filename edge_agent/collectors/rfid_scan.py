"""From a tag read to an ``rfid`` sample, the same for every kind of reader (pure but for the
clock it is given).

A reader reports a tag in its field many times a second. :class:`ScanFilter` keeps the
first read of an EPC and counts the same EPC again within ``repeat_s`` (on the agent's
clock) as ``repeats``; it decodes the EPC (edge_agent.collectors.epc) and keeps an
undecodable one raw, flagged and counted (``undecodable``). The sample's values::

    {"epc": URI or None, "hex": ..., "scheme": ..., "decoded": bool, "rssi": dBm or None,
     "antenna": port or None}
"""

from __future__ import annotations

import logging
from collections import Counter

from edge_agent.collectors.base import Clock, Sample
from edge_agent.collectors.epc import decode_epc

__all__ = ["ScanFilter"]

log = logging.getLogger(__name__)

_REMEMBER = 10_000


class ScanFilter:
    """Repeat suppression and EPC decoding; counts into the collector's ``stats``."""

    def __init__(self, clock: Clock, repeat_s: float, stats: Counter[str], where: str) -> None:
        self.clock = clock
        self.repeat_ms = int(repeat_s * 1000)
        self.stats = stats
        self.where = where
        self._seen: dict[str, int] = {}

    def sample(self, epc: str, rssi: float | None, antenna: int | None) -> Sample | None:
        """The sample for one read of ``epc`` (from normalise_hex), or None for a repeat."""
        t_ms, source = self.clock()
        last = self._seen.get(epc)
        if last is not None and last <= t_ms < last + self.repeat_ms:
            self.stats["repeats"] += 1
            return None
        self._seen[epc] = t_ms
        if len(self._seen) > _REMEMBER:  # forget the oldest tags
            for key in list(self._seen)[:_REMEMBER // 2]:
                del self._seen[key]
        result = decode_epc(epc)
        if not result.decoded:
            self.stats["undecodable"] += 1
            log.info("rfid %s: tag %s kept raw (%s)", self.where, epc, result.reason)
        self.stats["samples"] += 1
        return Sample("rfid", {"epc": result.uri, "hex": epc, "scheme": result.scheme,
                               "decoded": result.decoded, "rssi": rssi, "antenna": antenna},
                      t_ms, source)
