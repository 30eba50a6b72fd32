"""The history query of one device: the SQL behind `GET /v1/devices/{id}/readings`.

One function builds it, so that the API and `make bench-history` (ledger_node.bench_history)
run exactly the same statement. Readings come in seq order, `limit` at a time; the next page
starts after the last seq returned.
"""

from __future__ import annotations

from typing import Any

COLUMNS = "idx, seq, t, ts, k, d, flags, height, ledger_time"


def readings_query(device: str, since: int | None, until: int | None, kind: str | None,
                   after_seq: int, limit: int) -> tuple[str, list[Any]]:
    """SQL and arguments for one page of a device's readings with device time in
    [since, until) (either bound optional), of one kind (optional), seq > after_seq."""
    # With a time range, walk (dev, t) and sort that day by seq; SQLite would otherwise pick
    # the (dev, seq) index to save the sort and scan the device's whole history up to the
    # range (EXPLAIN QUERY PLAN in `make bench-history` shows which one is used).
    index = " INDEXED BY readings_dev_t" if since is not None or until is not None else ""
    sql = f"SELECT {COLUMNS} FROM readings{index} WHERE dev = ? AND seq > ?"
    args: list[Any] = [device, after_seq]
    if since is not None:
        sql += " AND t >= ?"
        args.append(since)
    if until is not None:
        sql += " AND t < ?"
        args.append(until)
    if kind is not None:
        sql += " AND k = ?"
        args.append(kind)
    sql += " ORDER BY seq LIMIT ?"
    args.append(limit)
    return sql, args
