"""Contract documents: parse YAML or JSON, validate every field, compile every condition.

`parse_contract(text)` is what registration calls: it returns a ContractDocument (frozen,
everything precompiled) or raises ContractDocumentError with the 1-based line and column of
the offending node. JSON is read by the same YAML 1.2 loader (a JSON document is YAML), so
both get positions. The format is described field by field in docs/contracts.md.

Hostile input: at most MAX_DOCUMENT_CHARS characters, nesting MAX_NESTING, MAX_NODES nodes;
no anchors, aliases or explicit tags; one document; duplicate keys refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingEndEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
)

from ledger_node.contracts.cel import Condition, compile_condition
from ledger_node.contracts.errors import CelCompileError, ContractDocumentError
from ledger_node.shipments import CONTRACT_TARGETS, UNIT_LOADED

MAX_DOCUMENT_CHARS: Final = 65_536
MAX_NESTING: Final = 16
MAX_NODES: Final = 5_000
MAX_RULES: Final = 32
MAX_PARAMS: Final = 32
MAX_LIST: Final = 256
MAX_DURATION_MS: Final = 30 * 86_400_000

TRIGGER_READING: Final = "reading"
TRIGGER_DEADLINE: Final = "deadline"
TRIGGER_SILENCE: Final = "silence"
REPEAT_EPISODE: Final = "episode"
REPEAT_READING: Final = "reading"
ANY: Final = "*"

NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_RULE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_PARAM_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,31}")
_EVENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KIND_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_FIELD_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_WEBHOOK_RE: Final = re.compile(r"webhook:[a-z0-9][a-z0-9._-]{0,63}")
_DURATION_RE: Final = re.compile(r"(?:\d{1,9}(?:ms|s|m|h|d))+")
_DURATION_PART_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

KNOWN_MEMBERS: Final[Mapping[str, frozenset[str]]] = {
    "reading": frozenset({"idx", "dev", "seq", "t", "k", "d", "ledger_time"}),
    "shipment": frozenset({"id", "state", "deadline", "created", "custodian", "units",
                           "parties", "geofences", "contracts"}),
    "window": frozenset({"count", "min", "max", "sum", "avg", "first_t", "last_t"}),
    "geo": frozenset({"lon", "lat", "inside", "corridor_m"}),
}

_TOP_KEYS: Final = ("name", "version", "description", "applies_to", "params", "rules")
_RULE_KEYS: Final = ("id", "on", "when", "threshold", "window", "geofence", "corridor",
                     "outside_geofences", "custody", "units", "for", "cumulative", "repeat",
                     "emit", "set_state", "notify")
_READING_ONLY: Final = ("when", "threshold", "window", "geofence", "corridor",
                        "outside_geofences", "custody", "units", "for", "cumulative", "repeat")
_NOT_WITH_UNITS: Final = ("emit", "set_state", "threshold", "window", "geofence", "corridor",
                          "outside_geofences", "custody", "for", "cumulative", "repeat")


@dataclass(frozen=True)
class AppliesTo:
    """Which scopes a contract covers, besides shipments that name it in `contracts`."""

    all_shipments: bool = False
    shipments: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Threshold:
    field: str
    above: float | None = None
    below: float | None = None
    equals: Any = None
    has_equals: bool = False


@dataclass(frozen=True)
class Rule:
    id: str
    trigger: str                        # TRIGGER_*
    kinds: tuple[str, ...] = ()         # reading kinds (trigger "reading")
    grace_ms: int = 0                   # deadline
    silence_ms: int = 0                 # silence
    when: Condition | None = None
    threshold: Threshold | None = None
    window_field: str | None = None
    window_ms: int = 0
    geofence_mode: str | None = None    # "exit" | "enter"
    geofences: tuple[str, ...] = ()     # names or (ANY,)
    corridor_width_m: float | None = None
    outside_geofences: tuple[str, ...] | None = None
    custody_readers: tuple[tuple[str, str], ...] = ()
    units: bool = False
    unload_readers: tuple[str, ...] | None = None  # None: any reader not on the shipment
    for_ms: int = 0
    cumulative_ms: int = 0
    repeat: str = REPEAT_EPISODE
    emit: str = ""
    set_state: str | None = None
    notify: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContractDocument:
    name: str
    version: int
    description: str
    applies_to: AppliesTo
    params: Mapping[str, Any]
    rules: tuple[Rule, ...]
    source: str
    text: str


class _Where:
    """Positions of nodes (1-based) from ruamel's round-trip containers."""

    def __init__(self, source: str, text: str = "") -> None:
        self.source = source
        self.lines = text.split("\n")

    def fail(self, message: str, pos: tuple[int, int] = (0, 0)) -> ContractDocumentError:
        return ContractDocumentError(message, pos[0], pos[1], self.source)

    @staticmethod
    def key(container: Any, key: Any) -> tuple[int, int]:
        try:
            line, col = container.lc.key(key)
            return line + 1, col + 1
        except (AttributeError, KeyError, TypeError):
            return _Where.node(container)

    @staticmethod
    def value(container: Any, key: Any) -> tuple[int, int]:
        try:
            if isinstance(container, CommentedSeq):
                line, col = container.lc.item(key)
            else:
                line, col = container.lc.value(key)
            return line + 1, col + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return _Where.node(container)

    @staticmethod
    def node(container: Any) -> tuple[int, int]:
        try:
            return container.lc.line + 1, container.lc.col + 1
        except AttributeError:
            return 1, 1


def parse_duration(text: object) -> int:
    """'15m', '1h30m', '90s', '500ms', '2d' -> ms; raises ValueError."""
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text):
        raise ValueError("a duration is like 15m, 1h30m, 90s, 500ms or 2d")
    ms = sum(int(n) * _UNIT_MS[u] for n, u in _DURATION_PART_RE.findall(text))
    if not 0 < ms <= MAX_DURATION_MS:
        raise ValueError("a duration must be more than 0 and at most 30d")
    return ms


def _prepass(text: str, w: _Where) -> None:
    depth, nodes, docs = 0, 0, 0
    try:
        for ev in YAML(typ="rt").parse(text):
            pos = (ev.start_mark.line + 1, ev.start_mark.column + 1)
            if isinstance(ev, DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise w.fail("one document per contract", pos)
            if isinstance(ev, AliasEvent) or (isinstance(ev, NodeEvent) and ev.anchor):
                raise w.fail("anchors and aliases are not allowed", pos)
            if isinstance(ev, ScalarEvent | CollectionStartEvent) and ev.tag is not None:
                raise w.fail(f"explicit tags are not allowed ({ev.tag})", pos)
            if isinstance(ev, NodeEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    raise w.fail(f"more than {MAX_NODES} nodes", pos)
            if isinstance(ev, CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    raise w.fail(f"nested deeper than {MAX_NESTING}", pos)
            elif isinstance(ev, MappingEndEvent | SequenceEndEvent):
                depth -= 1
    except ContractDocumentError:
        raise
    except Exception as exc:
        raise _yaml_error(exc, w) from None


def _yaml_error(exc: Exception, w: _Where) -> ContractDocumentError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[-1:] or [type(exc).__name__]
    message = problem if isinstance(problem, str) else problem[0]
    if mark is None:
        return w.fail(f"syntax error: {message}", (1, 1))
    return w.fail(f"syntax error: {message}", (mark.line + 1, mark.column + 1))


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x \
        and x not in (float("inf"), float("-inf"))


def _plain_scalar(x: Any) -> Any:
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str(x)
    return x


class _Parser:
    def __init__(self, doc: Any, w: _Where) -> None:
        self.doc = doc
        self.w = w
        self.params: dict[str, Any] = {}

    # -- small typed getters -------------------------------------------------------------
    def mapping(self, m: Any, allowed: tuple[str, ...], what: str,
                pos: tuple[int, int]) -> CommentedMap:
        if not isinstance(m, CommentedMap):
            raise self.w.fail(f"{what} must be a map", pos)
        for k in m:
            if not isinstance(k, str) or k not in allowed:
                raise self.w.fail(f"unknown field {k!r} in {what} (allowed: "
                                  f"{', '.join(allowed)})", self.w.key(m, k))
        return m

    def string(self, m: Any, key: Any, what: str, pattern: re.Pattern[str] | None = None,
               max_len: int = 1000) -> str:
        v = m[key]
        if not isinstance(v, str) or not 0 < len(v) <= max_len:
            raise self.w.fail(f"{what} must be a string (1..{max_len} characters)",
                              self.w.value(m, key))
        if pattern is not None and not pattern.fullmatch(v):
            raise self.w.fail(f"{what} {v!r} must match {pattern.pattern}", self.w.value(m, key))
        return str(v)

    def resolve(self, m: Any, key: Any) -> Any:
        """A value, with "$name" replaced by the parameter `name`."""
        v = m[key]
        if isinstance(v, str) and v.startswith("$"):
            name = v[1:]
            if name not in self.params:
                raise self.w.fail(f"unknown parameter {v!r}", self.w.value(m, key))
            return self.params[name]
        return _plain_scalar(v)

    def number(self, m: Any, key: Any, what: str) -> float:
        v = self.resolve(m, key)
        if not _is_number(v):
            raise self.w.fail(f"{what} must be a finite number (or a $parameter holding one)",
                              self.w.value(m, key))
        return float(v)

    def duration(self, m: Any, key: Any, what: str) -> int:
        v = self.resolve(m, key)
        try:
            return parse_duration(v)
        except ValueError as exc:
            raise self.w.fail(f"{what}: {exc}", self.w.value(m, key)) from None

    def names(self, m: Any, key: Any, what: str, pattern: re.Pattern[str],
              allow_any: bool = False, max_items: int = MAX_LIST) -> tuple[str, ...]:
        v = m[key]
        if allow_any and v == ANY:
            return (ANY,)
        if isinstance(v, str):
            v_list: list[Any] = [v]
            positions = [self.w.value(m, key)]
        elif isinstance(v, CommentedSeq):
            v_list = list(v)
            positions = [self.w.value(v, i) for i in range(len(v))]
        else:
            raise self.w.fail(f"{what} must be a name or a list of names"
                              + (' (or "*")' if allow_any else ""), self.w.value(m, key))
        if not 0 < len(v_list) <= max_items:
            raise self.w.fail(f"{what}: 1..{max_items} names", self.w.value(m, key))
        for item, pos in zip(v_list, positions, strict=True):
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.w.fail(f"{what}: {item!r} must match {pattern.pattern}", pos)
        if len(set(v_list)) != len(v_list):
            raise self.w.fail(f"{what}: names repeat", self.w.value(m, key))
        return tuple(str(x) for x in v_list)

    # -- the document ----------------------------------------------------------------------
    def parse(self) -> tuple[str, int, str, AppliesTo, dict[str, Any], tuple[Rule, ...]]:
        doc = self.mapping(self.doc, _TOP_KEYS, "the contract", (1, 1))
        for req in ("name", "version", "rules"):
            if req not in doc:
                raise self.w.fail(f"missing field {req!r}", self.w.node(doc))
        name = self.string(doc, "name", "name", NAME_RE, 64)
        version = doc["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
            raise self.w.fail("version must be an integer >= 1", self.w.value(doc, "version"))
        description = ""
        if "description" in doc and doc["description"] is not None:
            description = self.string(doc, "description", "description", None, 2000)
        applies = self.applies_to(doc)
        if "params" in doc and doc["params"] is not None:
            self.parse_params(doc)
        rules_node = doc["rules"]
        if not isinstance(rules_node, CommentedSeq) or not 0 < len(rules_node) <= MAX_RULES:
            raise self.w.fail(f"rules must be a list of 1..{MAX_RULES} rules",
                              self.w.value(doc, "rules"))
        rules: list[Rule] = []
        for i in range(len(rules_node)):
            rule = self.rule(rules_node, i)
            if any(r.id == rule.id for r in rules):
                raise self.w.fail(f"rule id {rule.id!r} repeats", self.w.value(rules_node, i))
            rules.append(rule)
        return name, int(version), description, applies, dict(self.params), tuple(rules)

    def applies_to(self, doc: CommentedMap) -> AppliesTo:
        if "applies_to" not in doc or doc["applies_to"] is None:
            return AppliesTo()
        m = self.mapping(doc["applies_to"], ("shipments", "devices"), "applies_to",
                         self.w.value(doc, "applies_to"))
        if len(m) != 1:
            raise self.w.fail("applies_to names either shipments or devices",
                              self.w.value(doc, "applies_to"))
        if "shipments" in m:
            if m["shipments"] == "all":
                return AppliesTo(all_shipments=True)
            return AppliesTo(shipments=self.names(m, "shipments", "applies_to.shipments",
                                                  _ID_RE, max_items=1000))
        return AppliesTo(devices=self.names(m, "devices", "applies_to.devices", _ID_RE,
                                            max_items=1000))

    def parse_params(self, doc: CommentedMap) -> None:
        m = doc["params"]
        if not isinstance(m, CommentedMap) or len(m) > MAX_PARAMS:
            raise self.w.fail(f"params must be a map of at most {MAX_PARAMS} values",
                              self.w.value(doc, "params"))
        for k in m:
            if not isinstance(k, str) or not _PARAM_RE.fullmatch(k):
                raise self.w.fail(f"parameter name {k!r} must match {_PARAM_RE.pattern}",
                                  self.w.key(m, k))
            v = _plain_scalar(m[k])
            ok = isinstance(v, bool | str) or (_is_number(v) and -(2**63) <= v < 2**63)
            if not ok or (isinstance(v, str) and len(v) > 256):
                raise self.w.fail(f"parameter {k!r} must be a number, a bool or a short "
                                  "string", self.w.value(m, k))
            self.params[k] = v

    def trigger(self, r: CommentedMap) -> tuple[str, tuple[str, ...], int, int]:
        on = self.mapping(r["on"], ("reading", "event", "deadline", "silence"), "on",
                          self.w.value(r, "on"))
        if len(on) != 1:
            raise self.w.fail("on names exactly one trigger: reading, event, deadline or "
                              "silence", self.w.value(r, "on"))
        key = next(iter(on))
        if key in ("reading", "event"):
            kinds = self.names(on, key, f"on.{key}", _KIND_RE, max_items=16)
            return TRIGGER_READING, kinds, 0, 0
        if key == "silence":
            return TRIGGER_SILENCE, (), 0, self.duration(on, key, "on.silence")
        v = on[key]
        if v is True or v is None:
            return TRIGGER_DEADLINE, (), 0, 0
        g = self.mapping(v, ("grace",), "on.deadline", self.w.value(on, key))
        grace = self.duration(g, "grace", "on.deadline.grace") if "grace" in g else 0
        return TRIGGER_DEADLINE, (), grace, 0

    def rule(self, rules: CommentedSeq, i: int) -> Rule:
        r = self.mapping(rules[i], _RULE_KEYS, f"rule {i + 1}", self.w.value(rules, i))
        for req in ("id", "on") if "units" in r else ("id", "on", "emit"):
            if req not in r:
                raise self.w.fail(f"rule {i + 1}: missing field {req!r}", self.w.node(r))
        rid = self.string(r, "id", "rule id", _RULE_RE, 32)
        trigger, kinds, grace, silence = self.trigger(r)
        out: dict[str, Any] = {"id": rid, "trigger": trigger, "kinds": kinds,
                               "grace_ms": grace, "silence_ms": silence}
        if trigger != TRIGGER_READING:
            for k in _READING_ONLY:
                if k in r:
                    raise self.w.fail(f"{k!r} applies only to reading rules", self.w.key(r, k))
        if "units" in r:
            for k in _NOT_WITH_UNITS:
                if k in r:
                    raise self.w.fail(f"a units rule emits unit_loaded and unit_unloaded and "
                                      f"cannot have {k!r}", self.w.key(r, k))
            out["emit"] = UNIT_LOADED  # unused: the rule emits unit_loaded / unit_unloaded
        else:
            out["emit"] = self.string(r, "emit", "emit", _EVENT_RE, 32)
        if "set_state" in r and r["set_state"] is not None:
            state = r["set_state"]
            if state not in CONTRACT_TARGETS:
                raise self.w.fail(f"set_state must be one of {sorted(CONTRACT_TARGETS)}",
                                  self.w.value(r, "set_state"))
            out["set_state"] = str(state)
        if "notify" in r and r["notify"] is not None:
            out["notify"] = self.notify(r)
        if trigger == TRIGGER_READING:
            self.reading_rule(r, kinds, out)
        return Rule(**out)

    def notify(self, r: CommentedMap) -> tuple[str, ...]:
        v = r["notify"]
        if not isinstance(v, CommentedSeq) or len(v) > 8:
            raise self.w.fail("notify is a list of at most 8 targets", self.w.value(r, "notify"))
        for j, item in enumerate(v):
            if item != "mqtt" and not (isinstance(item, str) and _WEBHOOK_RE.fullmatch(item)):
                raise self.w.fail('a notify target is "mqtt" or "webhook:<name>"',
                                  self.w.value(v, j))
        if len(set(v)) != len(v):
            raise self.w.fail("notify targets repeat", self.w.value(r, "notify"))
        return tuple(sorted(str(x) for x in v))

    def reading_rule(self, r: CommentedMap, kinds: tuple[str, ...], out: dict[str, Any]) -> None:
        def needs_kind(key: str, kind: str) -> None:
            if kinds != (kind,):
                raise self.w.fail(f"{key!r} needs on: {{reading: {kind}}}", self.w.key(r, key))

        if "threshold" in r:
            out["threshold"] = self.threshold(r)
        if "window" in r:
            w = self.mapping(r["window"], ("field", "over"), "window", self.w.value(r, "window"))
            if set(w) != {"field", "over"}:
                raise self.w.fail("window needs field and over", self.w.value(r, "window"))
            out["window_field"] = self.string(w, "field", "window.field", _FIELD_RE, 32)
            out["window_ms"] = self.duration(w, "over", "window.over")
            if "when" not in r:
                raise self.w.fail("a window is used from `when` (window.avg, ...); add one",
                                  self.w.key(r, "window"))
        if "geofence" in r:
            needs_kind("geofence", "gps")
            g = self.mapping(r["geofence"], ("exit", "enter"), "geofence",
                             self.w.value(r, "geofence"))
            if len(g) != 1:
                raise self.w.fail("geofence names exit or enter", self.w.value(r, "geofence"))
            mode = next(iter(g))
            out["geofence_mode"] = mode
            out["geofences"] = self.names(g, mode, f"geofence.{mode}", _ID_RE, allow_any=True,
                                          max_items=64)
        if "corridor" in r:
            needs_kind("corridor", "gps")
            c = self.mapping(r["corridor"], ("width_m",), "corridor", self.w.value(r, "corridor"))
            if "width_m" not in c:
                raise self.w.fail("corridor needs width_m", self.w.value(r, "corridor"))
            width = self.number(c, "width_m", "corridor.width_m")
            if not 0 < width <= 1_000_000:
                raise self.w.fail("corridor.width_m must be in (0, 1000000]",
                                  self.w.value(c, "width_m"))
            out["corridor_width_m"] = width
        if "outside_geofences" in r:
            out["outside_geofences"] = self.names(r, "outside_geofences", "outside_geofences",
                                                  _ID_RE, allow_any=True, max_items=64)
        if "custody" in r:
            needs_kind("custody", "rfid")
            out["custody_readers"] = self.custody(r)
        if "units" in r:
            needs_kind("units", "rfid")
            out["units"] = True
            u = r["units"]
            if u is not None:
                u = self.mapping(u, ("unload_readers",), "units", self.w.value(r, "units"))
                if "unload_readers" in u:
                    out["unload_readers"] = self.names(u, "unload_readers",
                                                       "units.unload_readers", _ID_RE,
                                                       max_items=1000)
        if "for" in r and "cumulative" in r:
            raise self.w.fail("a rule has `for` or `cumulative`, not both", self.w.key(r, "for"))
        if "for" in r:
            out["for_ms"] = self.duration(r, "for", "for")
        if "cumulative" in r:
            out["cumulative_ms"] = self.duration(r, "cumulative", "cumulative")
        if "repeat" in r:
            rep = r["repeat"]
            if rep not in (REPEAT_EPISODE, REPEAT_READING):
                raise self.w.fail('repeat is "episode" or "reading"', self.w.value(r, "repeat"))
            if rep == REPEAT_READING and ("for" in r or "cumulative" in r):
                raise self.w.fail("repeat: reading cannot have `for` or `cumulative`",
                                  self.w.value(r, "repeat"))
            out["repeat"] = str(rep)
        if "custody" in r and ("for" in r or "cumulative" in r or "geofence" in r):
            raise self.w.fail("custody cannot be combined with for, cumulative or geofence",
                              self.w.key(r, "custody"))
        if "when" in r:
            out["when"] = self.when(r, kinds, "window" in r)

    def threshold(self, r: CommentedMap) -> Threshold:
        t = self.mapping(r["threshold"], ("field", "above", "below", "equals"), "threshold",
                         self.w.value(r, "threshold"))
        if "field" not in t or not ({"above", "below", "equals"} & set(t)):
            raise self.w.fail("threshold needs field and at least one of above, below, equals",
                              self.w.value(r, "threshold"))
        field = self.string(t, "field", "threshold.field", _FIELD_RE, 32)
        above = self.number(t, "above", "threshold.above") if "above" in t else None
        below = self.number(t, "below", "threshold.below") if "below" in t else None
        if "equals" in t and ("above" in t or "below" in t):
            raise self.w.fail("threshold has equals, or above/below, not both",
                              self.w.key(t, "equals"))
        equals = self.resolve(t, "equals") if "equals" in t else None
        if "equals" in t and not (isinstance(equals, bool | str) or _is_number(equals)):
            raise self.w.fail("threshold.equals must be a number, bool or string",
                              self.w.value(t, "equals"))
        return Threshold(field, above, below, equals, "equals" in t)

    def custody(self, r: CommentedMap) -> tuple[tuple[str, str], ...]:
        c = self.mapping(r["custody"], ("readers",), "custody", self.w.value(r, "custody"))
        readers = c.get("readers")
        if not isinstance(readers, CommentedMap) or not 0 < len(readers) <= 1000:
            raise self.w.fail("custody.readers maps reader device ids to the org they belong to",
                              self.w.value(r, "custody"))
        out = []
        for dev in readers:
            if not isinstance(dev, str) or not _ID_RE.fullmatch(dev):
                raise self.w.fail(f"reader id {dev!r} must be 1-64 of [A-Za-z0-9._-]",
                                  self.w.key(readers, dev))
            out.append((dev, self.string(readers, dev, "custody org", _ID_RE, 64)))
        return tuple(sorted(out))

    def when(self, r: CommentedMap, kinds: tuple[str, ...], window: bool) -> Condition:
        variables = ["reading", "shipment", "params"]
        if window:
            variables.append("window")
        if "gps" in kinds:
            variables.append("geo")
        expr = r["when"]
        pos = self.w.value(r, "when")
        if not isinstance(expr, str):
            raise self.w.fail("when must be a CEL expression (a string)", pos)
        try:
            return compile_condition(str(expr), variables, self.params, KNOWN_MEMBERS)
        except CelCompileError as exc:
            raise self.w.fail(f"CEL: {exc.message} (at {exc.line}:{exc.column} of the "
                              "expression)", _cel_position(self.w, r, exc)) from None


def _cel_position(w: _Where, r: CommentedMap, exc: CelCompileError) -> tuple[int, int]:
    """Map a position inside the expression to the document: exact for a one-line plain or
    quoted scalar; for block scalars, the expression's own line below the key."""
    line, col = w.value(r, "when")
    start = w.lines[line - 1][col - 1:col] if 0 < line <= len(w.lines) else ""
    if exc.line == 1 and start not in ("|", ">"):
        return line, col + exc.column - 1 + (1 if start in ("'", '"') else 0)
    block = start in ("|", ">")
    doc_line = line + exc.line - (0 if block else 1)
    # a block scalar's lines are indented by its first line's indentation
    base = line + 1 if block else doc_line
    text = w.lines[base - 1] if 0 < base <= len(w.lines) else ""
    return doc_line, len(text) - len(text.lstrip(" ")) + exc.column


def _check_text(text: object, source: str) -> str:
    w = _Where(source)
    if not isinstance(text, str):
        raise w.fail("a contract document is text", (1, 1))
    if len(text) > MAX_DOCUMENT_CHARS:
        raise w.fail(f"a contract document is at most {MAX_DOCUMENT_CHARS} characters", (1, 1))
    if not text.strip():
        raise w.fail("the document is empty", (1, 1))
    if "\x00" in text:
        raise w.fail("the document contains NUL", (1, 1))
    if text.lstrip().startswith(("{", "[")):
        # JSON: tabs are whitespace between tokens (inside a JSON string they must be
        # escaped), but YAML refuses some; one tab -> one space keeps every column.
        text = text.replace("\t", " ")
    return text


def parse_contract(text: str, source: str = "<contract>") -> ContractDocument:
    """Parse, validate and precompile a contract document; raises ContractDocumentError."""
    clean = _check_text(text, source)
    w = _Where(source, clean)
    _prepass(clean, w)
    try:
        doc = YAML(typ="rt").load(clean)
    except Exception as exc:
        raise _yaml_error(exc, w) from None
    name, version, description, applies, params, rules = _Parser(doc, w).parse()
    return ContractDocument(name, version, description, applies, params, rules, source, text)

