"""The agent's report on itself: `status` readings, and `trustfleet agent status`.

A `status` reading (kind "status") goes through the outbox and the ledger like any other,
so the fleet sees an agent's backlog and health from the chain itself. Its values:

| key | meaning |
|---|---|
| `backlog` | readings not yet covered by a ledger receipt (`unsealed` + `in_flight`) |
| `unsealed` | stored, waiting for the send window |
| `in_flight` | sealed (seq assigned, signed), not yet receipted |
| `last_seq` | highest seq sealed |
| `receipt_seq`, `receipt_height` | the last ledger receipt: contiguous seq, block height |
| `receipt_age_s` | seconds since this run last got a receipt (None: none yet) |
| `outbox_kb`, `budget_kb` | live bytes of the outbox file, and its budget |
| `disk_free_mb` | free space on the outbox's file system |
| `thinned`, `dropped` | readings given up under the retention policy, ever |
| `collector_errors` | collector errors this run |
| `clock` | where time comes from now: `gps` or `rtc` |
| `rtc_ok` | false when the host clock is before 2024 (a reset RTC) |
| `uptime_s` | seconds since the agent started |
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edge_agent.collectors.base import Sample, SampleValue
from edge_agent.outbox import Outbox, OutboxStats

__all__ = ["disk_free_bytes", "read_status", "status_values"]


def disk_free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return -1


def status_values(st: OutboxStats, *, budget_bytes: int, disk_free: int,
                  receipt_age_s: float | None, collector_errors: int, clock_source: str,
                  rtc_ok: bool, uptime_s: float) -> dict[str, SampleValue]:
    return {
        "backlog": st.backlog, "unsealed": st.unsealed, "in_flight": st.unreceipted,
        "last_seq": st.last_seq, "receipt_seq": st.receipt_seq,
        "receipt_height": st.receipt_height,
        "receipt_age_s": None if receipt_age_s is None else round(receipt_age_s, 1),
        "outbox_kb": st.used_bytes // 1024, "budget_kb": budget_bytes // 1024,
        "disk_free_mb": disk_free // (1024 * 1024) if disk_free >= 0 else None,
        "thinned": st.thinned, "dropped": st.dropped, "collector_errors": collector_errors,
        "clock": clock_source, "rtc_ok": rtc_ok, "uptime_s": round(uptime_s, 1),
    }


def status_sample(values: dict[str, SampleValue], t_ms: int, source: str) -> Sample:
    return Sample("status", values, t_ms, source)


def read_status(outbox_path: Path) -> dict[str, Any]:
    """What `trustfleet agent status` prints: read-only, safe while the agent runs."""
    box = Outbox(outbox_path, readonly=True)
    try:
        st = box.stats()
        newest = box.conn.execute("SELECT MAX(t) FROM outbox").fetchone()[0]
    finally:
        box.close()
    return {"outbox": str(outbox_path), "backlog": st.backlog, "unsealed": st.unsealed,
            "in_flight": st.unreceipted, "last_seq": st.last_seq,
            "receipt_seq": st.receipt_seq, "receipt_height": st.receipt_height,
            "receipt_at_ms": st.receipt_at_ms or None, "thinned": st.thinned,
            "dropped": st.dropped, "outbox_bytes": st.used_bytes,
            "newest_reading_t_ms": newest}
