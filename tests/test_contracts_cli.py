"""`trustfleet contract test`: the dry run, as a real process, and its scenario format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledger_node.contracts import ScenarioError, parse_contract, template_text
from ledger_node.contracts.scenario import parse_scenario, parse_time, run_scenario

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "contracts"
TEMPLATES = ROOT / "ledger_node" / "contracts" / "templates"


def dry_run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger_node.contracts.cli", "test",
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def test_dry_run_prints_one_line_per_event() -> None:
    out = dry_run(TEMPLATES / "cold-chain-2-8.yaml", "--scenario",
                  DATA / "cold-chain-excursion.yaml")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-03-01T08:16:00.000Z  excursion  cold-chain-2-8@1  "
                               "shipment=SHP-1  dev=truck-1  state->out_of_compliance")
    assert '"rule":"excursion"' in lines[0]
    assert lines[1].startswith("2026-03-01T08:20:00.000Z  excursion")
    assert '"rule":"critical"' in lines[1]
    assert "2 event(s) from 8 reading(s), 1 tick(s)" in out.stderr


def test_dry_run_json_gives_the_ledger_entry_maps() -> None:
    out = dry_run(TEMPLATES / "cold-chain-2-8.yaml", "--scenario",
                  DATA / "cold-chain-excursion.yaml", "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["data"]["rule"] for e in events] == ["excursion", "critical"]
    assert events[0]["type"] == "contract_event" and events[0]["cause"] == [2, 3, 4, 5]
    assert events[0]["state"] == "out_of_compliance" and events[1]["state"] is None


def test_dry_run_accepts_exported_json_lines() -> None:
    out = dry_run(TEMPLATES / "door-outside.yaml", "--scenario", DATA / "door-readings.jsonl",
                  "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(e["event"], e["cause"]) for e in events] == [("door_open_outside", [12]),
                                                          ("door_open_outside", [14])]
    assert {e["shipment"] for e in events} == {"DRYRUN"}


def test_an_invalid_contract_is_reported_with_file_line_column() -> None:
    bad = DATA / "bad-unknown-field.yaml"
    out = dry_run(bad, "--scenario", DATA / "cold-chain-excursion.yaml")
    assert out.returncode == 2
    assert f"{bad}:8:5: unknown field 'colour'" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(("scenario", "needle"), [
    ("bad-scenario.yaml", "stream[1]: bad time 'soon'"),
    ("missing.yaml", "cannot read"),
    ("bad-syntax.yaml", "bad-syntax.yaml:6:9: syntax error"),
    ("bad-type.yaml", "unknown keys"),
])
def test_an_invalid_scenario_is_a_clear_error(scenario: str, needle: str) -> None:
    out = dry_run(TEMPLATES / "shock.yaml", "--scenario", DATA / scenario)
    assert out.returncode == 2
    assert needle in out.stderr


@pytest.mark.parametrize(("value", "ms"), [
    (1_000, 1_000),
    ("2026-03-01T08:00:00Z", 1_772_352_000_000),
    ("2026-03-01T09:00:00+01:00", 1_772_352_000_000),
    ("2026-03-01T08:00:00", 1_772_352_000_000),
    ("+15m", 1_000 + 900_000),
    ("+0s", 1_000),
])
def test_times(value: object, ms: int) -> None:
    assert parse_time(value, 1_000, "here") == ms


@pytest.mark.parametrize("value", ["+15", "yesterday", None, True, -5, 2**60, [1]])
def test_bad_times(value: object) -> None:
    with pytest.raises(ScenarioError):
        parse_time(value, 1_000, "here")


def test_a_relative_time_needs_start() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_time("+5m", None, "stream[0]")
    assert "needs `start`" in info.value.message


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty"),
    ("[1, 2]", "a scenario is a map"),
    ("stream: 5", "stream must be a list"),
    ("stream: []\nextra: 1", "unknown keys"),
    ("shipments: {a: 1}\nstream: []", "shipments must be a list"),
    ("{\"dev\": 1}\n{\"oops\"", "not JSON"),
    ("stream: [{dev: a, t: 0, k: temp}]", "a reading needs d"),
    ("stream: [{dev: a, t: 0, d: {}}]", "a reading needs k"),
    ("stream: [{t: 0, k: temp, d: {}}]", "a reading needs dev"),
    ("stream: [{dev: a, t: 0, k: temp, d: {}, colour: red}]", "unknown keys"),
    ("stream: [{dev: a, t: 0, k: temp, d: {}, seq: x}]", "seq must be an integer"),
    ("shipments: [{shipment: 'bad id'}]\nstream: []", "bad_payload"),
    ("stream: [{shipment: NOPE, state: delivered}]", "unknown_shipment"),
    ("stream: [{a: [}", "syntax error"),
])
def test_malformed_scenarios_are_rejected(text: str, needle: str) -> None:
    doc = parse_contract(template_text("shock"))
    with pytest.raises(ScenarioError) as info:
        run_scenario(parse_scenario(text, "s.yaml"), doc)
    assert needle in str(info.value)


def test_scenario_ticks_and_state_moves_drive_time_triggers() -> None:
    doc = parse_contract(template_text("late-delivery"))
    scenario = parse_scenario("""
start: 2026-03-01T08:00:00Z
shipments:
  - {shipment: A, deadline: "+1h", devices: [t1]}
  - {shipment: B, deadline: "+1h", devices: [t2]}
stream:
  - {shipment: A, state: delivered, at: "+59m"}
  - {tick: "+61m"}
""")
    result = run_scenario(scenario, doc)
    assert [(ev.event, ev.shipment) for _, ev in result.events] == [("late_delivery", "B")]
    assert result.ticks == 1
