"""The node's verification workers: processes that open envelopes and check signatures.

P-256 verification is most of the cost of a reading, and the node's own process is busy
with MQTT and the store under one interpreter lock. So the chain hands chunks of envelope
bytes (with the key each one's topic device would need) to worker processes
(ledger_node.validate.open_envelopes) and gets flat tuples back. The results are a
function of the bytes and the keys only: blocks are the same with or without workers.

Workers are started with `spawn` (a fresh interpreter: nothing of the node's threads, HSM
session or SQLite connection is inherited), warmed at start, ignore SIGINT (a Ctrl-C in a
terminal reaches the whole process group; the node then finishes its block, with them), and
exit on their own when the node is gone, even after `kill -9`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor

from ledger_node.validate import warm_worker

PARENT_CHECK_S = 0.5


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(PARENT_CHECK_S)


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch",
                     daemon=True).start()


def start_verify_pool(workers: int) -> Executor | None:
    """`workers` processes, started and warmed in the background; None for 0."""
    if workers <= 0:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    for _ in range(workers):
        pool.submit(warm_worker)  # starts the processes now, not at the first block
    return pool
