"""`trustfleet quarantine list|show --data DIR`: a readable table with totals and summary
counters, and one item with its raw bytes and decoded CBOR (the real CLI, a real store)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ledger_node.chain import Message
from ledger_node.quarantine import QuarantineLimits
from tests.chainkit import ChainUnderTest, Device
from tests.fleet import cli

T = 1_763_700_000_000  # 2025-11-21T04:40:00Z


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("node")
    good, stranger = Device("truck-1"), Device("stranger")
    tc = ChainUnderTest(folder / "ledger.sqlite", [good])
    tc.apply([Message(good.topic, b"\xff\x00junk", T),
              Message(stranger.topic, stranger.reading(), T + 1000)])
    tc.store.quarantine.limits = QuarantineLimits(max_rows=4)
    # ids 1, 2 are evicted; of these six only the newest four are stored, as ids 3..6
    tc.apply([Message("tf/v1/test/noisy/up", b"\xfe" + bytes([n]), T + 5000 + n)
              for n in range(6)])
    tc.store.close()
    return folder


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("quarantine", *args), capture_output=True, text=True, timeout=60,
                          check=False)


def test_list_prints_a_table_the_totals_and_what_was_summarised(data: Path) -> None:
    out = run("list", "--data", str(data))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "RECEIVED", "(UTC)", "REASON"]
    assert lines[1].split()[:4] == ["6", "2025-11-21T04:40:05.005Z", "bad_cbor", "noisy"]
    assert "stored: 4 items" in out.stdout and "summarised, not stored: 4" in out.stdout
    assert "caps: 100,000 rows" in out.stdout  # as the store was opened
    summarised = lines[lines.index("summarised rather than stored:") + 2:]
    assert [r.split()[:3] for r in summarised] == [["bad_cbor", "noisy", "2"],
                                                   ["bad_cbor", "truck-1", "1"],
                                                   ["unknown_device", "stranger", "1"]]


def test_list_filters_and_pages_with_a_cursor(data: Path) -> None:
    first = run("list", "--data", str(data), "--limit", "2", "--since",
                "2025-11-21T04:40:05.003Z")
    assert first.returncode == 0, first.stderr
    assert [line.split()[0] for line in first.stdout.splitlines()[1:3]] == ["6", "5"]
    assert "more: add --cursor 5" in first.stdout
    rest = run("list", "--data", str(data), "--limit", "2", "--since",
               "2025-11-21T04:40:05.003Z", "--cursor", "5")
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:2]] == ["4"]
    assert "more:" not in rest.stdout
    none = run("list", "--data", str(data), "--reason", "bad_signature", "--device", "x")
    assert "no stored items match" in none.stdout


def test_list_as_json_is_the_api_page(data: Path) -> None:
    out = run("list", "--data", str(data), "--json", "--until", str(T + 5004))
    page = json.loads(out.stdout)
    assert [i["id"] for i in page["items"]] == [4, 3]
    assert page["summarised"] == 4


def test_show_prints_fields_hex_dump_base64_and_decoded_cbor(data: Path) -> None:
    out = run("show", "6", "--data", str(data))
    assert out.returncode == 0, out.stderr
    assert "reason:    bad_cbor" in out.stdout
    assert "topic:     tf/v1/test/noisy/up" in out.stdout
    assert "00000000  fe 05" in out.stdout and "raw (base64):\n/gU=" in out.stdout
    assert "decoded: not one CBOR item" in out.stdout


def test_show_of_an_item_summarised_away_says_so_and_exits_1(data: Path) -> None:
    out = run("show", "2", "--data", str(data))
    assert out.returncode == 1
    assert "evicted into the summary" in out.stderr


@pytest.mark.parametrize("args, message", [
    (("list",), "one of the arguments --data --node is required"),
    (("list", "--data", "x", "--since", "noon"), "neither ms since the epoch nor ISO 8601"),
    (("list", "--data", "/nonexistent/node"), "no ledger store at"),
    (("list", "--node", "http://127.0.0.1:9"), "cannot read http://127.0.0.1:9"),
])
def test_cli_errors_are_clear_and_exit_2(args: tuple[str, ...], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
