"""Contract documents: every field checked at registration, errors with line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node.contracts import (
    ContractDocumentError,
    parse_contract,
    template_names,
    template_text,
)
from ledger_node.contracts.document import (
    MAX_DOCUMENT_CHARS,
    TRIGGER_DEADLINE,
    TRIGGER_SILENCE,
    parse_duration,
)

DATA = Path(__file__).parent / "data" / "contracts"

GOOD = """\
name: cold
version: 2
params: {high: 8.0, hold: 15m}
rules:
  - id: hot
    on: {reading: temp}
    threshold: {field: c, above: $high}
    for: $hold
    emit: excursion
    set_state: out_of_compliance
    notify: [mqtt, "webhook:insurer"]
"""


def error_of(text: str) -> ContractDocumentError:
    with pytest.raises(ContractDocumentError) as info:
        parse_contract(text, "doc.yaml")
    return info.value


def test_a_good_document_is_compiled_with_params_resolved() -> None:
    doc = parse_contract(GOOD)
    assert (doc.name, doc.version) == ("cold", 2)
    rule = doc.rules[0]
    assert rule.threshold is not None and rule.threshold.above == 8.0
    assert rule.for_ms == 15 * 60_000
    assert rule.notify == ("mqtt", "webhook:insurer")
    assert rule.set_state == "out_of_compliance"
    assert doc.text == GOOD


def test_every_shipped_template_parses() -> None:
    names = template_names()
    assert {"cold-chain-2-8", "frozen", "shock", "geofence", "route-corridor", "late-delivery",
            "door-outside", "device-silent", "custody-transfer"} <= set(names)
    for name in names:
        assert parse_contract(template_text(name)).name == name


def test_json_documents_parse_with_the_same_rules() -> None:
    doc = parse_contract((DATA / "custom-cel.json").read_text())
    assert doc.applies_to.devices == ("truck-1",)
    assert doc.rules[0].window_ms == 30 * 60_000
    assert doc.rules[0].when is not None


@pytest.mark.parametrize(("name", "line", "column", "needle"), [
    ("bad-unknown-field.yaml", 8, 5, "unknown field 'colour'"),
    ("bad-syntax.yaml", 6, 9, "syntax error"),
    ("bad-type.yaml", 2, 10, "version must be an integer"),
    ("bad-cel-variable.yaml", 6, 33, "undeclared reference to 'temperature'"),
    ("bad-cel-cost.yaml", 6, 30, "may only iterate over"),
    ("bad-json-unknown-field.json", 5, 65, "unknown field 'whenever'"),
])
def test_bad_documents_are_rejected_at_their_line_and_column(
        name: str, line: int, column: int, needle: str) -> None:
    with pytest.raises(ContractDocumentError) as info:
        parse_contract((DATA / name).read_text(), name)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert needle in err.message
    assert str(err).startswith(f"{name}:{line}:{column}: ")


def test_a_cel_error_in_a_block_scalar_points_into_the_block() -> None:
    text = GOOD.replace("    threshold: {field: c, above: $high}\n",
                        "    when: |\n      reading.d.c > params.high &&\n"
                        "        reading.d.c < params.nope\n")
    err = error_of(text)
    assert "unknown parameter params.nope" in err.message
    assert (err.line, err.column) == (9, 30)


@pytest.mark.parametrize(("change", "needle"), [
    (("name: cold", "name: Cold Chain"), "name 'Cold Chain' must match"),
    (("version: 2", "version: 0"), "version must be an integer >= 1"),
    (("version: 2", "version: true"), "version must be an integer >= 1"),
    (("above: $high", "above: $higher"), "unknown parameter '$higher'"),
    (("above: $high", "above: hot"), "must be a finite number"),
    (("for: $hold", "for: 15 minutes"), "a duration is like"),
    (("for: $hold", "for: 31d"), "at most 30d"),
    (("for: $hold", "for: 0m"), "more than 0"),
    (("emit: excursion", "emit: Excursion!"), "emit 'Excursion!' must match"),
    (("set_state: out_of_compliance", "set_state: cancelled"), "set_state must be one of"),
    (("notify: [mqtt, \"webhook:insurer\"]", "notify: [sms]"), "a notify target is"),
    (("notify: [mqtt, \"webhook:insurer\"]", "notify: [mqtt, mqtt]"), "repeat"),
    (("on: {reading: temp}", "on: {reading: temp, silence: 5m}"), "exactly one trigger"),
    (("on: {reading: temp}", "on: {sometimes: temp}"), "unknown field 'sometimes'"),
    (("on: {reading: temp}", "on: {silence: 5m}"), "applies only to reading rules"),
    (("threshold: {field: c, above: $high}", "threshold: {above: 1}"), "threshold needs field"),
    (("threshold: {field: c, above: $high}", "threshold: {field: c, above: 1, equals: 2}"),
     "not both"),
    (("threshold: {field: c, above: $high}", "geofence: {exit: depot}"),
     "needs on: {reading: gps}"),
    (("threshold: {field: c, above: $high}", "custody: {readers: {r1: org}}"),
     "needs on: {reading: rfid}"),
    (("threshold: {field: c, above: $high}", "window: {field: c, over: 5m}"),
     "a window is used from `when`"),
    (("for: $hold", "for: $hold\n    cumulative: 1h"), "`for` or `cumulative`, not both"),
    (("for: $hold", "for: $hold\n    repeat: reading"), "repeat: reading cannot have"),
    (("params: {high: 8.0, hold: 15m}", "params: {High: 8.0, hold: 15m}"),
     "parameter name 'High'"),
    (("params: {high: 8.0, hold: 15m}", "params: {high: [8.0], hold: 15m}"),
     "must be a number, a bool or a short string"),
    (("params: {high: 8.0, hold: 15m}", "params: {high: 1" + "0" * 400 + ", hold: 15m}"),
     "must be a number, a bool or a short string"),
    (("params: {high: 8.0, hold: 15m}", "params: {high: .nan, hold: 15m}"),
     "must be a number, a bool or a short string"),
    (("rules:\n", "applies_to: {shipments: all, devices: [a]}\nrules:\n"),
     "either shipments or devices"),
    (("rules:\n", "applies_to: {fleets: all}\nrules:\n"), "unknown field 'fleets'"),
    (("name: cold\n", ""), "missing field 'name'"),
    (("    emit: excursion\n", ""), "missing field 'emit'"),
])
def test_invalid_fields_are_rejected_with_a_clear_message(
        change: tuple[str, str], needle: str) -> None:
    assert change[0] in GOOD
    err = error_of(GOOD.replace(change[0], change[1]))
    assert needle in err.message, err.message
    assert err.line >= 1 and err.column >= 1


def test_repeated_rule_ids_are_rejected() -> None:
    text = GOOD + """\
  - id: hot
    on: {reading: temp}
    emit: other
"""
    err = error_of(text)
    assert "rule id 'hot' repeats" in err.message
    assert err.line == 12


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("[1, 2]", "must be a map"),
    ("just a string", "must be a map"),
    ("a: &x 1\nb: *x\n", "anchors and aliases"),
    ("name: !!python/object:os.system echo\n", "explicit tags"),
    ("name: a\n---\nname: b\n", "one document"),
    ("name: a\nname: b\n", "duplicate key"),
    ("x" * (MAX_DOCUMENT_CHARS + 1), "at most"),
    ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 40)), "nested deeper"),
    ("[" * 50 + "]" * 50, "nested deeper"),
    ("name: a\x00\n", "NUL"),
    ("{\"name\": \"a\", ", "syntax error"),
    ("rules: [" + ", ".join(["x"] * 6000) + "]", "more than"),
    ("version: 2026-01-01\nname: a\nrules: []\n", "version must be an integer"),
])
def test_hostile_documents_get_a_typed_error(text: str, needle: str) -> None:
    err = error_of(text)
    assert needle in err.message, err.message


def test_a_non_text_document_is_refused() -> None:
    with pytest.raises(ContractDocumentError):
        parse_contract(b"name: a")  # type: ignore[arg-type]


def test_billion_laughs_is_refused_before_expansion() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    err = error_of(text)
    assert "anchors and aliases" in err.message
    assert err.line == 1


@pytest.mark.parametrize(("text", "ms"), [
    ("500ms", 500), ("90s", 90_000), ("15m", 900_000), ("1h30m", 5_400_000), ("2d", 172_800_000),
])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "15", "m", "-5m", "1.5h", "15 m", 15, None, "1y"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_time_triggers() -> None:
    doc = parse_contract("""
name: timers
version: 1
rules:
  - {id: late, on: {deadline: {grace: 30m}}, emit: late_delivery}
  - {id: quiet, on: {silence: 45m}, emit: device_silent}
""")
    late, quiet = doc.rules
    assert (late.trigger, late.grace_ms) == (TRIGGER_DEADLINE, 30 * 60_000)
    assert (quiet.trigger, quiet.silence_ms) == (TRIGGER_SILENCE, 45 * 60_000)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mangled_documents_never_raise_anything_but_a_document_error(
        data: st.DataObject) -> None:
    text = GOOD
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 5))
        insert = data.draw(st.text(alphabet=st.sampled_from(list(":{}[]-'\"$#&*!|>, \n\tax0.")),
                                   max_size=4))
        text = text[:pos] + insert + text[pos + cut:]
    try:
        parse_contract(text)
    except ContractDocumentError as err:
        assert err.line >= 0 and err.column >= 0 and err.message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_a_document_error(text: str) -> None:
    try:
        doc = parse_contract(text)
    except ContractDocumentError as err:
        assert err.message
    else:
        assert doc.rules
