"""CEL conditions: compile errors with positions, cost limits, run-time errors as fault kinds."""

from __future__ import annotations

from typing import Any

import pytest

from ledger_node.contracts.cel import (
    FAULT_BAD_INPUT,
    FAULT_DIVISION_BY_ZERO,
    FAULT_MISSING_FIELD,
    FAULT_NOT_BOOL,
    FAULT_OVERFLOW,
    FAULT_TYPE,
    MAX_CHARS,
    MAX_DEPTH,
    MAX_LITERAL_ITEMS,
    MAX_TOKENS,
    compile_condition,
    tokenize,
)
from ledger_node.contracts.document import KNOWN_MEMBERS
from ledger_node.contracts.errors import CelCompileError, CelEvalError

VARS = ("reading", "shipment")
PARAMS = {"high": 8.0, "low": 2, "name": "SHP-1", "strict": True}


def compile_(expr: str) -> Any:
    return compile_condition(expr, VARS, PARAMS, KNOWN_MEMBERS)


def reading(**d: Any) -> dict[str, Any]:
    return {"reading": {"d": d}}


def test_parameters_are_inlined_and_types_checked() -> None:
    cond = compile_("reading.d.c > params.high || reading.d.c < params.low")
    assert cond.uses == frozenset({"reading"})
    assert cond.members == {"reading": frozenset({"d"})}
    assert cond.evaluate(reading(c=8.5)) is True
    assert cond.evaluate(reading(c=8.0)) is False
    assert cond.evaluate(reading(c=1)) is True       # int against an int parameter
    assert compile_("params.name == 'SHP-1' && params.strict").evaluate({}) is True


@pytest.mark.parametrize(("expr", "needle", "line", "column"), [
    ("reading.d.c >", "Syntax error", 1, 14),
    ("temperature > 3", "undeclared reference to 'temperature'", 1, 1),
    ("reading.d.c > params.hgh", "unknown parameter params.hgh", 1, 22),
    ("reading.value > 3", "reading has no field 'value'", 1, 9),
    ("shipment.owner == 'x'", "shipment has no field 'owner'", 1, 10),
    ("reading.d.c +\n 1", "a condition must be bool", 1, 1),
    ("'x' + 1 > 2", "no matching overload", 1, 5),
    ("params.name > 3", "with the parameters' values", 1, 1),
    ("size(params) > 0", "use parameters as params.NAME", 1, 6),
    ("reading.d.c > 1 #", "unexpected character '#'", 1, 17),
])
def test_compile_errors_carry_position_inside_the_expression(
        expr: str, needle: str, line: int, column: int) -> None:
    with pytest.raises(CelCompileError) as info:
        compile_(expr)
    assert needle in info.value.message, info.value.message
    assert (info.value.line, info.value.column) == (line, column)


@pytest.mark.parametrize(("expr", "needle"), [
    ("||".join(["true"] * 130), f"more than {MAX_TOKENS} tokens"),
    ("(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1), "nested deeper"),
    ("true" + " " * MAX_CHARS, f"longer than {MAX_CHARS}"),
    ("reading.d.list.all(x, x > 1)", "may only iterate over"),
    ("reading.d.c.map(x, x)[0] > 1", "may only iterate over"),
    ("[" + ",".join(["1"] * (MAX_LITERAL_ITEMS + 1)) + "].exists(x, x == 1)",
     f"at most {MAX_LITERAL_ITEMS}"),
    ("[1, 2].all(x, [3].exists(y, y > x))", "inside another iterating macro"),
    ("shipment.units.exists(u, shipment.parties.exists(p, p.org == u))",
     "inside another iterating macro"),
    ("reading.d[0].exists(x, x == 1)", "may only iterate over"),
])
def test_costly_expressions_are_rejected(expr: str, needle: str) -> None:
    with pytest.raises(CelCompileError) as info:
        compile_(expr)
    assert needle in info.value.message


def test_macros_over_bounded_lists_are_allowed() -> None:
    cond = compile_("shipment.units.exists(u, u.startsWith('urn:epc:id:sscc:'))"
                    " && [1, 2, 3].all(x, x > 0)")
    assert cond.evaluate({"shipment": {"units": ["urn:epc:id:sscc:1.2"]}}) is True
    assert cond.evaluate({"shipment": {"units": []}}) is False


@pytest.mark.parametrize(("expr", "data", "kind"), [
    ("reading.d.c > 1", reading(x=1), FAULT_MISSING_FIELD),
    ("1 / reading.d.c > 1", reading(c=0), FAULT_DIVISION_BY_ZERO),
    ("reading.d.c % 2 == 0", reading(c=0) | {"reading": {"d": {"c": 4}}}, None),
    ("reading.d.c > 1", reading(c="hot"), FAULT_TYPE),
    ("reading.d.c + 9223372036854775807 > 1", reading(c=1), FAULT_OVERFLOW),
    ("reading.d.c", reading(c=True), None),
    ("reading.d.c", reading(c=3), FAULT_NOT_BOOL),
    ("reading.d.c > 1", {"reading": {"d": {"c": object()}}}, FAULT_BAD_INPUT),
])
def test_run_time_errors_become_fault_kinds(expr: str, data: dict[str, Any],
                                             kind: str | None) -> None:
    cond = compile_(expr)
    if kind is None:
        assert isinstance(cond.evaluate(data), bool)
        return
    with pytest.raises(CelEvalError) as info:
        cond.evaluate(data)
    assert info.value.kind == kind


def test_tokenizer_positions_span_lines_and_skip_comments() -> None:
    tokens = tokenize("a // note\n  && 'x\\'y' == \"z\"")
    assert [(t.text, t.line, t.column) for t in tokens] == [
        ("a", 1, 1), ("&&", 2, 3), ("'x\\'y'", 2, 6), ("==", 2, 13), ('"z"', 2, 16)]


def test_evaluation_is_repeatable() -> None:
    cond = compile_("reading.d.c * 3.0 / 7.0 > 1.2857142857142856")
    results = {cond.evaluate(reading(c=3.0)) for _ in range(50)}
    assert results == {True}
