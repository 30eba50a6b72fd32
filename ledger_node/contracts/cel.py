"""CEL conditions: compile once at registration, evaluate per reading, bounded cost.

The one place that touches the CEL library (cel-expr-python, module `cel_expr_python`, the
CEL project's Python binding of cel-cpp; docs/contracts.md says why this one). Its errors are
translated here into CelCompileError (registration) and CelEvalError (run time), nowhere else.

Cost limits, checked at registration on the expression text (our own tokenizer; the limits
hold whatever the library does):
- at most MAX_CHARS characters, MAX_TOKENS tokens, MAX_DEPTH nested brackets;
- the iterating macros (all, exists, exists_one, map, filter) only over a bounded list: a
  list literal of at most MAX_LITERAL_ITEMS items, or one of BOUNDED_LISTS (sizes capped by
  the shipment book); never one inside another's arguments. Device data (`reading.d`) is
  untrusted and unbounded, so no macro may iterate over it.
- the expression's static type must be bool (or dyn, checked at run time).
Unknown variables are refused by the library's checker; `params.NAME` must name a declared
parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cel_expr_python import cel as _cel

from ledger_node.contracts.errors import CelCompileError, CelEvalError

MAX_CHARS: Final = 1024
MAX_TOKENS: Final = 256
MAX_DEPTH: Final = 16
MAX_LITERAL_ITEMS: Final = 64
MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
BOUNDED_LISTS: Final = frozenset({("shipment", "units"), ("shipment", "parties"),
                                  ("shipment", "geofences"), ("geo", "inside")})

FAULT_MISSING_FIELD: Final = "missing_field"
FAULT_DIVISION_BY_ZERO: Final = "division_by_zero"
FAULT_TYPE: Final = "type_error"
FAULT_OVERFLOW: Final = "overflow"
FAULT_NOT_BOOL: Final = "not_bool"
FAULT_BAD_INPUT: Final = "bad_input"
FAULT_EVAL: Final = "eval_error"

_TOKEN_RE: Final = re.compile(r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<str>(?:[rR][bB]?|[bB][rR]?)?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
        |'(?:\\.|[^\\'\n])*'|"(?:\\.|[^\\"\n])*"))
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<id>[_A-Za-z][_A-Za-z0-9]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%!<>?:.,()\[\]{}])
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class Token:
    kind: str   # "str", "num", "id", "op"
    text: str
    line: int
    column: int
    start: int  # offset in the expression


def tokenize(expr: str) -> list[Token]:
    """CEL tokens with 1-based positions; raises CelCompileError on a character CEL has not."""
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            raise CelCompileError(f"unexpected character {expr[pos]!r}", line,
                                  pos - line_start + 1)
        kind = m.lastgroup or "op"
        text = m.group()
        if kind != "ws":
            tokens.append(Token(kind, text, line, pos - line_start + 1, pos))
        newlines = text.count("\n")
        if newlines:
            line += newlines
            line_start = pos + text.rindex("\n") + 1
        pos = m.end()
    return tokens


_CLOSE: Final = {"(": ")", "[": "]", "{": "}"}


def _matching_open(tokens: list[Token], close_at: int) -> int:
    """Index of the bracket that the bracket at `close_at` closes."""
    depth = 0
    for i in range(close_at, -1, -1):
        text = tokens[i].text if tokens[i].kind == "op" else ""
        if text in (")", "]", "}"):
            depth += 1
        elif text in _CLOSE:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _matching_close(tokens: list[Token], open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(tokens)):
        text = tokens[i].text if tokens[i].kind == "op" else ""
        if text in _CLOSE:
            depth += 1
        elif text in (")", "]", "}"):
            depth -= 1
            if depth == 0:
                return i
    return len(tokens) - 1


def _literal_items(tokens: list[Token], open_at: int, close_at: int) -> int:
    depth, items = 0, 0
    for tok in tokens[open_at + 1:close_at]:
        if tok.kind == "op" and tok.text in _CLOSE:
            depth += 1
        elif tok.kind == "op" and tok.text in (")", "]", "}"):
            depth -= 1
        elif depth == 0 and tok.kind == "op" and tok.text == ",":
            items += 1
    return items + (1 if close_at > open_at + 1 else 0)


def _check_macro_receiver(tokens: list[Token], dot: int) -> None:
    name = tokens[dot + 1]
    prev = tokens[dot - 1] if dot > 0 else None
    if prev is not None and prev.kind == "op" and prev.text == "]":
        start = _matching_open(tokens, dot - 1)
        before = tokens[start - 1] if start > 0 else None
        is_literal = before is None or (before.kind == "op" and before.text not in (")", "]", "}"))
        if is_literal:
            n = _literal_items(tokens, start, dot - 1)
            if n > MAX_LITERAL_ITEMS:
                raise CelCompileError(f"{name.text}() over a list literal of {n} items "
                                      f"(at most {MAX_LITERAL_ITEMS})", name.line, name.column)
            return
    if (prev is not None and prev.kind == "id" and dot >= 3 and tokens[dot - 2].text == "."
            and tokens[dot - 3].kind == "id"
            and (dot < 4 or tokens[dot - 4].text != ".")
            and (tokens[dot - 3].text, prev.text) in BOUNDED_LISTS):
        return
    allowed = ", ".join(f"{a}.{b}" for a, b in sorted(BOUNDED_LISTS))
    raise CelCompileError(f"{name.text}() may only iterate over a list literal or one of "
                          f"{allowed} (bounded lists)", name.line, name.column)


def check_cost(expr: str, params: Iterable[str] = ()) -> list[Token]:
    """Refuse an expression over the cost limits (module docstring); return its tokens."""
    if len(expr) > MAX_CHARS:
        raise CelCompileError(f"expression longer than {MAX_CHARS} characters")
    tokens = tokenize(expr)
    if len(tokens) > MAX_TOKENS:
        t = tokens[MAX_TOKENS]
        raise CelCompileError(f"expression has more than {MAX_TOKENS} tokens", t.line, t.column)
    depth = 0
    macro_ends: list[int] = []
    known = set(params)
    for i, tok in enumerate(tokens):
        if tok.kind != "op" and tok.kind != "id":
            continue
        if tok.text in _CLOSE:
            depth += 1
            if depth > MAX_DEPTH:
                raise CelCompileError(f"brackets nested deeper than {MAX_DEPTH}",
                                      tok.line, tok.column)
        elif tok.text in (")", "]", "}"):
            depth -= 1
        elif (tok.text == "." and i + 2 < len(tokens) and tokens[i + 1].kind == "id"
              and tokens[i + 1].text in MACROS and tokens[i + 2].text == "("):
            while macro_ends and macro_ends[-1] < i:
                macro_ends.pop()
            if macro_ends:
                name = tokens[i + 1]
                raise CelCompileError(f"{name.text}() inside another iterating macro",
                                      name.line, name.column)
            _check_macro_receiver(tokens, i)
            macro_ends.append(_matching_close(tokens, i + 2))
        elif (tok.kind == "id" and tok.text == "params" and (i == 0 or tokens[i - 1].text != ".")
              and i + 2 < len(tokens) and tokens[i + 1].text == "."
              and tokens[i + 2].kind == "id" and tokens[i + 2].text not in known):
            bad = tokens[i + 2]
            raise CelCompileError(f"unknown parameter params.{bad.text}", bad.line, bad.column)
    return tokens


_POS_RE: Final = re.compile(r"<input>:(\d+):(\d+): (.*)")
_envs: dict[tuple[str, ...], Any] = {}


def _env(variables: tuple[str, ...]) -> Any:
    env = _envs.get(variables)
    if env is None:
        env = _cel.NewEnv(variables={v: _cel.Type.DYN for v in variables})
        _envs[variables] = env
    return env


def _compile_error(exc: Exception) -> CelCompileError:
    text = str(exc)
    m = _POS_RE.search(text)
    if m is None:
        return CelCompileError(text.splitlines()[0][:300] if text else type(exc).__name__)
    return CelCompileError(m.group(3).strip()[:300], int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class Condition:
    """A compiled CEL condition: `evaluate(activation) -> bool` or CelEvalError."""

    source: str
    variables: tuple[str, ...]
    uses: frozenset[str]
    """Top-level variables the expression reads (params are inlined, so never here)."""
    members: Mapping[str, frozenset[str] | None]
    """Per variable used, the members it reads (`reading.d` -> {"d"}); None: all of it."""
    _program: Any

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        try:
            value = self._program.eval(data=activation)
            result = value.value()
        except Exception as exc:  # the library's conversion of our data failed
            raise CelEvalError(FAULT_BAD_INPUT, str(exc)[:200]) from None
        if type(result) is bool:
            return result
        vtype = value.type()
        if vtype == _cel.Type.ERROR:
            raise _eval_error(str(result))
        raise CelEvalError(FAULT_NOT_BOOL, f"the condition gave a {vtype.name()}, not a bool")


def _eval_error(text: str) -> CelEvalError:
    low = text.lower()
    if "non-cel value type" in low:
        kind = FAULT_BAD_INPUT
    elif "not found" in low or "no such key" in low or "no such field" in low:
        kind = FAULT_MISSING_FIELD
    elif "by zero" in low:
        kind = FAULT_DIVISION_BY_ZERO
    elif "no matching overload" in low:
        kind = FAULT_TYPE
    elif "overflow" in low or "out_of_range" in low:
        kind = FAULT_OVERFLOW
    else:
        kind = FAULT_EVAL
    return CelEvalError(kind, text[:200])


def _literal(value: Any) -> str:
    """A parameter value as a CEL literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise CelCompileError(f"parameter {value} does not fit a CEL int")
        return f"({value})"
    if isinstance(value, float):
        return f"({value!r})"
    return json.dumps(str(value))


def _members(tokens: list[Token], names: tuple[str, ...]) -> dict[str, frozenset[str] | None]:
    out: dict[str, set[str] | None] = {}
    for i, t in enumerate(tokens):
        if t.kind != "id" or t.text not in names or (i > 0 and tokens[i - 1].text == "."):
            continue
        if (i + 2 < len(tokens) and tokens[i + 1].text == "." and tokens[i + 2].kind == "id"
                and not (i + 3 < len(tokens) and tokens[i + 3].text == "(")):
            current = out.setdefault(t.text, set())
            if current is not None:
                current.add(tokens[i + 2].text)
        else:
            out[t.text] = None
    return {k: (frozenset(v) if v is not None else None) for k, v in out.items()}


def compile_condition(expr: str, variables: Iterable[str],
                      params: Mapping[str, Any] | None = None,
                      known_members: Mapping[str, frozenset[str]] | None = None) -> Condition:
    """Compile a boolean CEL expression over `variables` (+ `params`, inlined as literals);
    `known_members` lists, per variable, the member names it has; raises CelCompileError."""
    if not isinstance(expr, str) or not expr.strip():
        raise CelCompileError("the expression is empty")
    params = dict(params or {})
    tokens = check_cost(expr, params)
    names = tuple(sorted({*variables, "params"}))
    try:
        program = _env(names).compile(expr)
    except Exception as exc:
        raise _compile_error(exc) from None
    rtype = program.return_type()
    if rtype != _cel.Type.BOOL and rtype != _cel.Type.DYN:
        raise CelCompileError(f"a condition must be bool, this one is {rtype.name()}")
    members = _members(tokens, names)
    for var, used in members.items():
        known = (known_members or {}).get(var)
        if known is None or used is None:
            continue
        for m in sorted(used - known):
            tok = next(t for i, t in enumerate(tokens) if t.text == m and i > 1
                       and tokens[i - 2].text == var)
            raise CelCompileError(f"{var} has no field {m!r} (it has {', '.join(sorted(known))})",
                                  tok.line, tok.column)
    if "params" in members:
        if members["params"] is None:
            tok = next(t for t in tokens if t.text == "params")
            raise CelCompileError("use parameters as params.NAME", tok.line, tok.column)
        # Inline params.NAME as literals: no map to build per evaluation, and the checker
        # sees their types.
        parts, last, i = [], 0, 0
        while i < len(tokens):
            t = tokens[i]
            if (t.text == "params" and t.kind == "id" and (i == 0 or tokens[i - 1].text != ".")
                    and i + 2 < len(tokens)):
                name = tokens[i + 2]
                parts.append(expr[last:t.start])
                parts.append(_literal(params[name.text]))
                last = name.start + len(name.text)
                i += 3
                continue
            i += 1
        parts.append(expr[last:])
        try:
            program = _env(names).compile("".join(parts))
        except Exception as exc:
            raise CelCompileError(f"with the parameters' values: {_compile_error(exc).message}")\
                from None
    uses = frozenset(v for v in members if v != "params")
    return Condition(expr, names, uses, {k: v for k, v in members.items() if k != "params"},
                     program)
