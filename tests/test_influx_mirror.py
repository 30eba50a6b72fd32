"""The InfluxDB mirror: committed readings reach a real InfluxDB v2 write API, nothing is lost
or duplicated when the server is away, and odd values are mirrored safely or counted.

The server is VictoriaMetrics (Debian's `victoria-metrics`), which speaks the InfluxDB v2
write API (`/api/v2/write`, line protocol) and reads back through `/api/v1/export`: the
measurement `reading` with field `c` becomes the series `reading_c`, tags become labels. It is
started by each test on a free loopback port in a temporary folder.

The store is a real ledger Store with real `readings` rows, written block by block by the test
(the mirror reads only the `readings` and `blocks` tables, so block hashes and entries are
stand-ins here; the chain's own tests cover them).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from ledger_node.config import InfluxConfig, NodeConfig, load_config
from ledger_node.errors import ConfigError
from ledger_node.influx_mirror import (
    CURSOR_FILE,
    MAX_TIME_MS,
    Committed,
    InfluxMirror,
    PointsRejected,
    ServerUnavailable,
    map_reading,
    retry_delay,
    write_split,
)
from ledger_node.reading_json import reading_json
from ledger_node.store import BlockRecord, ReadingRow, Store
from trustfleet.procs import free_port, stop_process, wait_for

VM = Path("/usr/bin/victoria-metrics")
T0 = 1_763_700_000_000
LEDGER_T0 = 1_763_800_000_000


# -- a real server -----------------------------------------------------------------------

class Victoria:
    """A VictoriaMetrics process on a fixed port and data folder (restartable)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not VM.exists():
            pytest.fail("victoria-metrics is not installed; `make test` installs it")
        log = self.directory / "vm.log"
        self.directory.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [str(VM), "-httpListenAddr", f"127.0.0.1:{self.port}", "-storageDataPath",
                 str(self.directory / "data"), "-retentionPeriod", "100y",
                 "-loggerLevel", "WARN"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self._get("/health") == b"OK", 30, "victoria-metrics",
                 proc=self.proc, log_file=log)

    def stop(self) -> None:
        """SIGTERM: VictoriaMetrics flushes what it acknowledged and exits."""
        if self.proc is not None:
            stop_process(self.proc, timeout=20)
            self.proc = None

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return bytes(resp.read())

    def series(self) -> dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]]:
        """Every raw sample of the mirrored measurement: (name, labels) -> [(ms, value)]."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": '{__name__=~"reading_.*"}'})
        out: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]] = {}
        for line in self._get("/api/v1/export?" + query).decode().splitlines():
            item = json.loads(line)
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            key = (name, frozenset(labels.items()))
            out.setdefault(key, []).extend(zip(item["timestamps"], item["values"], strict=True))
        return out

    def values(self, field: str) -> dict[int, set[float]]:
        """Device time -> the values stored for `reading_<field>` (all series together)."""
        out: dict[int, set[float]] = {}
        for (name, _), samples in self.series().items():
            if name == f"reading_{field}":
                for t, v in samples:
                    out.setdefault(t, set()).add(v)
        return out


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[Victoria]:
    server = Victoria(tmp_path / "vm", free_port())
    yield server
    server.stop()


# -- a real store, written block by block --------------------------------------------------

class Written(NamedTuple):
    """What the test keeps of a reading it committed."""

    idx: int
    dev: str
    seq: int
    t: int
    d: dict[str, Any]


class Ledger:
    """Blocks of real readings rows committed through the ledger's Store (one writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store(path)
        self.height = -1
        self.size = 0
        self.seqs: dict[str, int] = {}
        self.commit([], genesis=True)

    def commit(self, readings: list[tuple[str, str, dict[str, Any]]], *, genesis: bool = False,
               t: int | None = None) -> list[Written]:
        """One block of readings (device, kind, values); returns what was written."""
        self.height += 1
        rows: list[ReadingRow] = []
        written: list[Written] = []
        entries: list[tuple[str, bytes]] = [("genesis", b"genesis")] if genesis else []
        for dev, kind, values in readings:
            seq = self.seqs[dev] = self.seqs.get(dev, 0) + 1
            idx = self.size + len(entries)
            entries.append(("reading", f"{dev}/{seq}".encode()))
            device_t = t if t is not None else T0 + idx * 10
            rows.append((idx, dev, seq, hashlib.sha256(entries[-1][1]).digest(), device_t,
                         "gps", kind, reading_json(values), "", self.height,
                         LEDGER_T0 + self.height))
            written.append(Written(idx, dev, seq, device_t, values))
        digest = hashlib.sha256(b"block %d" % self.height).digest()
        self.store.commit_block(BlockRecord(
            height=self.height, hash=digest, header=digest, time=LEDGER_T0 + self.height,
            first=self.size, count=len(entries), size=self.size + len(entries),
            frontier=b"", sigs=(), entries=entries, readings=rows, devices=(), quarantine=()))
        self.size += len(entries)
        return written

    def temps(self, n: int, devices: tuple[str, ...] = ("truck-a", "truck-b")) -> list[Written]:
        return self.commit([(devices[i % len(devices)], "temp",
                             {"c": round(4.0 + (self.size + i) / 100, 2),
                              "probe": "28-000000000001"}) for i in range(n)])

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger(tmp_path / "node" / "ledger.sqlite")
    yield book
    book.close()


def mirror_for(ledger: Ledger, url: str, **changes: Any) -> InfluxMirror:
    cfg = replace(InfluxConfig(url=url, org="logistics", bucket="trustfleet",
                               token="test-token", flush_interval_s=0.05,
                               max_retry_backoff_s=0.5), **changes)
    return InfluxMirror(cfg, ledger.path, ledger.path.parent / CURSOR_FILE)


@dataclass
class Running:
    mirror: InfluxMirror

    def __enter__(self) -> InfluxMirror:
        self.mirror.start()
        return self.mirror

    def __exit__(self, *exc: object) -> None:
        self.mirror.stop()


def caught_up(mirror: InfluxMirror) -> bool:
    st = mirror.status()
    return bool(st["lag"] == 0 and st["committed"] is not None and not st["failing"])


# -- mapping, splitting, backoff: pure ------------------------------------------------------

def committed(d: object, t: int = T0, dev: str = "truck-a", idx: int = 7) -> Committed:
    text = d if isinstance(d, str) else json.dumps(d)
    return Committed(idx, dev, 3, t, "gps", "temp", text, 2, LEDGER_T0)


def test_a_reading_maps_to_tags_float_bool_and_allowed_string_fields_and_its_ledger_position(
        ) -> None:
    m = map_reading(committed({"c": 4, "open": False, "epc": "urn:epc:id:sscc:1.2",
                               "probe": "28-01"}), "reading")
    assert m.skipped is None and m.skipped_fields == ()
    assert m.point is not None
    assert dict(m.point.tags) == {"dev": "truck-a", "kind": "temp", "time_source": "gps",
                                  "probe": "28-01"}
    fields = dict(m.point.fields)
    assert fields == {"c": 4.0, "open": False, "epc": "urn:epc:id:sscc:1.2", "seq": 3,
                      "idx": 7, "block": 2}
    assert isinstance(fields["c"], float) and m.point.time_ms == T0


@pytest.mark.parametrize("values, reason", [
    ({"c": float("nan")}, "not_finite"),
    ({"c": float("inf")}, "not_finite"),
    ({"c": -float("inf")}, "not_finite"),
    ({"c": 10 ** 400}, "out_of_range"),
    ({"epc": "x" * 10_000}, "string_too_long"),
    ({"epc": "line\nbreak"}, "string_not_printable"),
    ({"note": "free text"}, "string_not_mirrored"),
    ({"c": [1, [2, [3]]]}, "list"),
    ({"c": {"nested": 1}}, "map"),
    ({"course": None}, "null"),
    ({"seq": 99}, "reserved_key"),
    ({"_value": 1}, "reserved_key"),
    ({"a\\b": 1}, "reserved_key"),
    ({"k" * 200: 1}, "reserved_key"),
    ({"probe": 5}, "bad_tag"),
])
def test_odd_values_are_left_out_with_a_reason_and_the_reading_is_still_mirrored(
        values: dict[str, Any], reason: str) -> None:
    m = map_reading(committed({**values, "ok": 1.5}), "reading")
    assert m.point is not None and m.skipped is None
    assert m.skipped_fields == (reason,)
    assert dict(m.point.fields) == {"ok": 1.5, "seq": 3, "idx": 7, "block": 2}


@pytest.mark.parametrize("row, reason", [
    (committed({"c": 1}, t=MAX_TIME_MS + 1), "time_out_of_range"),
    (committed({"c": 1}, t=-1), "time_out_of_range"),
    (committed("not json"), "bad_values"),
    (committed("[1, 2]"), "bad_values"),
    (committed("[" * 100_000 + "]" * 100_000), "bad_values"),
    (committed("1" * 5000), "bad_values"),  # beyond Python's int digit limit
    (committed({"c": 1}, dev=""), "bad_tags"),
    (committed({"c": 1}, dev="a b\\"), "bad_tags"),
])
def test_a_reading_that_cannot_be_placed_is_skipped_with_a_reason(row: Committed,
                                                                  reason: str) -> None:
    m = map_reading(row, "reading")
    assert (m.point, m.skipped) == (None, reason)


def test_write_split_isolates_the_refused_points_and_writes_the_rest() -> None:
    written: list[int] = []

    def write(batch: Any) -> None:
        if 13 in batch or 40 in batch:
            raise PointsRejected(f"HTTP 400: bad point in {len(batch)}")
        written.extend(batch)

    refused = write_split(list(range(50)), write)
    assert [item for item, _ in refused] == [13, 40]
    assert all(reason.startswith("HTTP 400") for _, reason in refused)
    assert sorted(written) == [i for i in range(50) if i not in (13, 40)]


def test_write_split_lets_an_unavailable_server_through_for_a_retry() -> None:
    def write(batch: Any) -> None:
        raise ServerUnavailable("connection refused")

    with pytest.raises(ServerUnavailable):
        write_split([1, 2, 3], write)


def test_retry_delay_doubles_up_to_the_cap_with_jitter_of_at_most_half() -> None:
    assert [retry_delay(n, 30.0, lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(60, 30.0, lambda: 1.0) == 30.0
    assert retry_delay(60, 30.0, lambda: 0.0) == 15.0


# -- against a real server ------------------------------------------------------------------

def test_committed_readings_arrive_with_their_tags_values_and_device_timestamps(
        ledger: Ledger, victoria: Victoria) -> None:
    victoria.start()
    temps = ledger.temps(6)
    mixed = ledger.commit([
        ("truck-a", "gps", {"lat": 51.9, "lon": 4.4, "speed": 12.5, "fix": 1, "course": None}),
        ("truck-b", "door", {"open": True, "line": 17}),
        ("truck-b", "rfid", {"epc": "urn:epc:id:sscc:0614141.0000000001", "rssi": -61,
                             "antenna": 2}),
    ])
    with Running(mirror_for(ledger, victoria.url, batch_size=4)) as mirror:
        wait_for(lambda: caught_up(mirror), 30, "mirror caught up")
        wait_for(lambda: len(victoria.values("idx")) == 9, 30, "points in the server")
        st = mirror.status()
    series = victoria.series()
    c = {t: v for (name, labels), samples in series.items() if name == "reading_c"
         for t, v in samples if dict(labels)["kind"] == "temp"}
    assert c == {r.t: r.d["c"] for r in temps}
    for r in temps:
        key = ("reading_c", frozenset({"dev": r.dev, "kind": "temp", "time_source": "gps",
                                       "probe": "28-000000000001"}.items()))
        assert (r.t, r.d["c"]) in series[key]
    gps, door, rfid = mixed
    assert victoria.values("lat")[gps.t] == {51.9} and victoria.values("speed")[gps.t] == {12.5}
    assert victoria.values("open")[door.t] == {1.0}  # a bool, as the server stores one
    assert victoria.values("rssi")[rfid.t] == {-61.0}
    assert rfid.t in victoria.values("epc")  # a string field (this server keeps no text)
    assert {t: v.pop() for t, v in victoria.values("idx").items()} == \
        {r.t: r.idx for r in temps + mixed}
    assert victoria.values("seq")[door.t] == {door.seq}
    assert victoria.values("block")[door.t] == {2.0}
    assert st["written"] == 9 and st["batches"] == 3 and st["cursor"] == rfid.idx
    assert st["oldest_unmirrored_age_s"] is None
    assert st["skipped_fields"] == {"null": 1}  # the gps course


def test_with_the_server_down_commits_go_on_the_lag_grows_and_it_catches_up_without_loss(
        ledger: Ledger, victoria: Victoria) -> None:
    first = ledger.temps(5)
    with Running(mirror_for(ledger, victoria.url, batch_size=7)) as mirror:
        wait_for(lambda: mirror.status()["failed_attempts"] >= 2, 30, "retries")
        st = mirror.status()
        assert st["failing"] and st["lag"] == first[-1].idx + 1 and st["written"] == 0
        assert st["oldest_unmirrored_age_s"] > 0 and "Connection refused" in st["last_error"]
        # The committing side never waits for the mirror: these blocks commit (and return)
        # while the mirror is failing against an absent server.
        more = [row for _ in range(4) for row in ledger.temps(6)]
        assert ledger.store.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 29
        assert mirror.status()["lag"] == more[-1].idx + 1 > st["lag"]
        victoria.start()
        wait_for(lambda: caught_up(mirror), 60, "mirror caught up after the server came")
        wait_for(lambda: len(victoria.values("idx")) == 29, 30, "all points in the server")
        assert mirror.status()["written"] == 29
    stored = victoria.values("idx")
    assert {t: v for t, v in stored.items()} == {r.t: {float(r.idx)} for r in first + more}


def test_a_server_stopped_mid_stream_and_restarted_loses_nothing_and_duplicates_nothing(
        ledger: Ledger, victoria: Victoria) -> None:
    victoria.start()
    rows: list[Written] = []
    enough = threading.Event()

    def commit_blocks() -> None:  # the node's apply thread, as far as the store is concerned
        while not enough.is_set() or len(rows) < 100:
            rows.extend(ledger.temps(5))
            time.sleep(0.02)

    with Running(mirror_for(ledger, victoria.url, batch_size=8)) as mirror:
        writer = threading.Thread(target=commit_blocks)
        writer.start()
        try:
            wait_for(lambda: mirror.status()["written"] >= 20, 30, "mirroring under way")
            victoria.stop()
            wait_for(lambda: mirror.status()["failing"], 30, "mirror finds the server gone")
            stalled = mirror.status()["written"]
            victoria.start()
            wait_for(lambda: mirror.status()["written"] > stalled + 20, 30, "mirroring again")
        finally:
            enough.set()
            writer.join(60)
        wait_for(lambda: caught_up(mirror), 60, "mirror caught up after the restart")
        wait_for(lambda: len(victoria.values("idx")) == len(rows), 30, "all in the server")
        st = mirror.status()
    assert st["failed_attempts"] >= 1 and st["written"] == len(rows) >= 100
    expected = {r.t: (float(r.idx), r.d["c"]) for r in rows}
    idx, c = victoria.values("idx"), victoria.values("c")
    assert set(idx) == set(c) == set(expected)
    # A re-written point carries the same values (InfluxDB overwrites it with itself):
    # one value per device time and field, whatever the server kept of the retries.
    assert all(idx[t] == {i} and c[t] == {v} for t, (i, v) in expected.items())


def test_odd_values_are_mirrored_safely_or_skipped_and_counted(ledger: Ledger,
                                                               victoria: Victoria) -> None:
    victoria.start()
    odd = ledger.commit([
        ("truck-a", "temp", {"c": float("nan"), "probe": "28-01"}),
        ("truck-a", "rfid", {"epc": "urn:" + "x" * 100_000, "rssi": -50}),
        ("truck-a", "shock", {"peak_g": [1, [2, [3, [4]]]], "n": 3}),
        ("truck-a", "temp", {"c": 10 ** 400, "seq": 5, "note": "hello"}),
        ("truck-a", "status", {"clock": "rtc", "rtc_ok": False, "backlog": 12}),
    ])
    late = ledger.commit([("truck-b", "temp", {"c": 5.0})], t=MAX_TIME_MS + 5)
    normal = ledger.commit([("truck-b", "temp", {"c": 3.5})])
    with Running(mirror_for(ledger, victoria.url)) as mirror:
        wait_for(lambda: caught_up(mirror), 30, "mirror past the odd readings")
        wait_for(lambda: len(victoria.values("idx")) == 6, 30, "points in the server")
        st = mirror.status()
    assert st["cursor"] == normal[0].idx and st["written"] == 6
    assert st["skipped_readings"] == {"time_out_of_range": 1}
    assert st["skipped_fields"] == {"not_finite": 1, "string_too_long": 1, "list": 1,
                                    "out_of_range": 1, "reserved_key": 1,
                                    "string_not_mirrored": 1}
    idx = victoria.values("idx")
    assert late[0].t not in idx
    assert {t for t in idx} == {r.t for r in [*odd, *normal]}
    assert victoria.values("c") == {normal[0].t: {3.5}}
    assert victoria.values("rssi")[odd[1].t] == {-50.0}
    assert victoria.values("n")[odd[2].t] == {3.0}
    assert victoria.values("backlog")[odd[4].t] == {12.0}
    assert victoria.values("rtc_ok")[odd[4].t] == {0.0}


def test_the_cursor_survives_a_restart_and_a_new_target_mirrors_from_the_start(
        ledger: Ledger, victoria: Victoria, tmp_path: Path) -> None:
    victoria.start()
    ledger.temps(10)
    with Running(mirror_for(ledger, victoria.url)) as mirror:
        wait_for(lambda: caught_up(mirror), 30, "first run caught up")
    ledger.temps(3)
    again = mirror_for(ledger, victoria.url)
    assert again.status()["lag"] == 14  # nothing known before start: the whole log
    with Running(again) as mirror:
        assert mirror.status()["lag"] == 3  # the saved cursor, as soon as it starts
        wait_for(lambda: caught_up(mirror), 30, "second run caught up")
        assert mirror.status()["written"] == 3
    with Running(mirror_for(ledger, victoria.url, bucket="another")) as mirror:
        wait_for(lambda: caught_up(mirror), 30, "new target caught up")
        assert mirror.status()["written"] == 13


# -- configuration ----------------------------------------------------------------------------

def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_the_influx_table_turns_the_mirror_on_and_its_absence_leaves_it_off(
        tmp_path: Path) -> None:
    on = load_config(write_toml(tmp_path, '[node]\nnode_id = "n1"\n\n[influx]\n'
                                          'url = "https://influx.example:8086"\norg = "o"\n'
                                          'bucket = "b"\ntoken = "s3cret"\nbatch_size = 100\n'
                                          'flush_interval_s = 2\n'))
    assert on.influx == InfluxConfig(url="https://influx.example:8086", org="o", bucket="b",
                                     token="s3cret", batch_size=100, flush_interval_s=2.0)
    assert "s3cret" not in repr(on)
    off = load_config(write_toml(tmp_path, '[node]\nnode_id = "n1"\n'))
    assert off.influx is None and InfluxMirror.for_node(off) is None
    assert load_config(None).influx is None


@pytest.mark.parametrize("body, message", [
    ('url = "ftp://x"\norg = "o"\nbucket = "b"\n', r"line 6: \[influx\] url 'ftp://x' must be"),
    ('url = "http://u:p@x"\norg = "o"\nbucket = "b"\n', "line 6: .*must not carry credentials"),
    ('url = "http://x:99999"\norg = "o"\nbucket = "b"\n', "line 6: .*is not usable"),
    ('org = "o"\n', r"node\.toml: \[influx\] bucket must be 1 to 255"),
    ('org = "o"\nbucket = "b"\nbatch_size = 0\n', "line 8: .*batch_size must be between 1"),
    ('org = "o"\nbucket = "b"\nflush_interval_s = 1e9\n', "line 8: .*flush_interval_s"),
    ('org = "o"\nbucket = "b"\ntoken = "t"\ntoken_file = "/x"\n', "line 8: .*not both"),
    ('org = "o"\nbucket = "b"\nmeasurement = "a b"\n', "line 8: .*measurement must be"),
    ('org = "o"\nbucket = "b"\nbatch_sise = 5\n', "line 8: unknown setting 'batch_sise'"),
    ('org = "o"\nbucket = "b"\nbatch_size = "5"\n', "line 8: batch_size must be int"),
    ('org = "o"\nbucket = ["b"]\n', "line 7: bucket must be str"),
])
def test_a_bad_influx_setting_is_refused_naming_line_and_key(tmp_path: Path, body: str,
                                                            message: str) -> None:
    path = write_toml(tmp_path, '[node]\nnode_id = "n1"\nbroker_port = 1883\n\n[influx]\n'
                      + body)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_an_unusable_token_file_fails_when_the_mirror_is_made_naming_the_file(
        tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    base = InfluxConfig(org="o", bucket="b")
    with pytest.raises(ConfigError, match=r"token_file .*missing.*cannot read"):
        InfluxMirror(replace(base, token_file=tmp_path / "missing"), db, tmp_path / "c")
    for content in (b"", b"two words\n", b"\xff\xfe", b"t" * 5000):
        (tmp_path / "token").write_bytes(content)
        with pytest.raises(ConfigError, match="does not hold one token"):
            InfluxMirror(replace(base, token_file=tmp_path / "token"), db, tmp_path / "c")
    (tmp_path / "token").write_text("  abc-123==\n")
    assert replace(base, token_file=tmp_path / "token").read_token() == "abc-123=="


def test_the_node_config_puts_the_cursor_beside_the_store_not_in_it(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path / "n", influx=InfluxConfig(org="o", bucket="b"))
    mirror = InfluxMirror.for_node(cfg)
    assert mirror is not None
    assert mirror.cursor_path == tmp_path / "n" / CURSOR_FILE != cfg.db_path
    st = mirror.status()  # no store yet: nothing committed, nothing to mirror
    assert (st["committed"], st["lag"], st["running"]) == (None, 0, False)
