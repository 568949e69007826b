"""A tiny evaluator for exactly the PromQL our alert rules use (selectors, rate/increase, sum/max/min by,
arithmetic, comparisons as filters, and/or), as promtool is not installed with the project. Unlike
Prometheus, rate() and increase() do not extrapolate to the window's edges: the rules compare rates over one
window of series scraped together, where that factor cancels.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Value = float | Vector

TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<str>\"(?:[^\"\\]|\\.)*\")"
                   r"|(?P<op>=~|!~|>=|<=|==|!=|[-+*/(){}\[\],=<>])|(?P<dur>\d+[smhdw])|(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*))")
DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
KEYWORDS = {"and", "or", "by", "sum", "max", "min", "rate", "increase", "vector"}


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        # a duration (10m) must win over a number followed by a name
        dur = re.compile(r"\s*(\d+[smhdw])(?![a-zA-Z0-9_])").match(text, pos)
        if dur:
            tokens.append(dur.group(1))
            pos = dur.end()
            continue
        match = TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SyntaxError(f"cannot parse at {text[pos:pos + 20]!r}")
        tokens.append(match.group(match.lastgroup))  # type: ignore[arg-type]
        pos = match.end()
    return tokens


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    _adjusted: list[float] | None = None

    def add(self, t: float, v: float) -> None:
        self.times.append(t)
        self.values.append(v)
        self._adjusted = None

    def adjusted(self) -> list[float]:
        """Values with counter resets undone (a drop adds the value before it)."""
        if self._adjusted is None:
            out, offset, previous = [], 0.0, None
            for v in self.values:
                if previous is not None and v < previous:
                    offset += previous
                out.append(v + offset)
                previous = v
            self._adjusted = out
        return self._adjusted

    def at(self, t: float, lookback: float = 300.0) -> float | None:
        i = bisect.bisect_right(self.times, t) - 1
        if i < 0 or t - self.times[i] > lookback:
            return None
        return self.values[i]

    def delta(self, start: float, end: float) -> tuple[float, float] | None:
        """(increase, seconds between the first and last sample) of samples in (start, end]."""
        lo = bisect.bisect_right(self.times, start)
        hi = bisect.bisect_right(self.times, end) - 1
        if hi - lo < 1:
            return None
        adjusted = self.adjusted()
        return adjusted[hi] - adjusted[lo], self.times[hi] - self.times[lo]


class Store:
    def __init__(self) -> None:
        self.series: dict[str, list[Series]] = {}

    def get(self, name: str, labels: dict[str, str]) -> Series:
        for s in self.series.setdefault(name, []):
            if s.labels == labels:
                return s
        s = Series(dict(labels))
        self.series[name].append(s)
        return s

    def add(self, name: str, labels: dict[str, str], t: float, v: float) -> None:
        self.get(name, labels).add(t, v)


@dataclass
class Selector:
    name: str
    matchers: list[tuple[str, str, str]]
    range_s: float | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        for label, op, value in self.matchers:
            actual = labels.get(label, "")
            ok = {"=": actual == value, "!=": actual != value, "=~": re.fullmatch(value, actual) is not None,
                  "!~": re.fullmatch(value, actual) is None}[op]
            if not ok:
                return False
        return True


Node = Callable[[Store, float], Value]


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.names: set[str] = set()

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise SyntaxError(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek() is not None:
            raise SyntaxError(f"trailing {self.tokens[self.pos:]}")
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.peek() == "or":
            self.take()
            node = _set_op(node, self.and_expr(), keep_left_only=False)
        return node

    def and_expr(self) -> Node:
        node = self.cmp_expr()
        while self.peek() == "and":
            self.take()
            node = _set_op(node, self.cmp_expr(), keep_left_only=True)
        return node

    def cmp_expr(self) -> Node:
        node = self.add_expr()
        while self.peek() in (">", "<", ">=", "<=", "==", "!="):
            op = self.take()
            node = _binary(node, self.add_expr(), op)
        return node

    def add_expr(self) -> Node:
        node = self.mul_expr()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = _binary(node, self.mul_expr(), op)
        return node

    def mul_expr(self) -> Node:
        node = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            node = _binary(node, self.unary(), op)
        return node

    def unary(self) -> Node:
        token = self.peek()
        if token == "(":
            self.take("(")
            node = self.or_expr()
            self.take(")")
            return node
        if token is not None and re.fullmatch(r"\d+(\.\d+)?(e[+-]?\d+)?", token):
            number = float(self.take())
            return lambda store, t: number
        if token in ("sum", "max", "min"):
            return self.aggregation()
        if token in ("rate", "increase"):
            return self.range_function()
        if token == "vector":
            self.take()
            self.take("(")
            number = float(self.take())
            self.take(")")
            return lambda store, t: {frozenset(): number}
        return self.instant_selector()

    def aggregation(self) -> Node:
        op = self.take()
        by: list[str] = []
        if self.peek() == "by":
            self.take()
            by = self.label_list()
        self.take("(")
        inner = self.or_expr()
        self.take(")")
        if self.peek() == "by":
            self.take()
            by = self.label_list()
        reduce = {"sum": sum, "max": max, "min": min}[op]

        def node(store: Store, t: float) -> Value:
            vector = inner(store, t)
            assert isinstance(vector, dict), "aggregation over a scalar"
            groups: dict[Labels, list[float]] = {}
            for labels, v in vector.items():
                key = frozenset((k, val) for k, val in labels if k in by)
                groups.setdefault(key, []).append(v)
            return {k: reduce(vs) for k, vs in groups.items()}

        return node

    def label_list(self) -> list[str]:
        self.take("(")
        labels = []
        while self.peek() != ")":
            labels.append(self.take())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return labels

    def selector(self) -> Selector:
        name = self.take()
        if name in KEYWORDS:
            raise SyntaxError(f"unexpected {name}")
        self.names.add(name)
        matchers = []
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                label, op, value = self.take(), self.take(), self.take()
                matchers.append((label, op, value[1:-1]))
                if self.peek() == ",":
                    self.take()
            self.take("}")
        selector = Selector(name, matchers)
        if self.peek() == "[":
            self.take("[")
            duration = self.take()
            self.take("]")
            selector.range_s = float(duration[:-1]) * DURATION[duration[-1]]
        return selector

    def instant_selector(self) -> Node:
        selector = self.selector()
        if selector.range_s is not None:
            raise SyntaxError("a range vector outside rate()/increase()")

        def node(store: Store, t: float) -> Value:
            out: Vector = {}
            for s in store.series.get(selector.name, []):
                if selector.matches(s.labels):
                    v = s.at(t)
                    if v is not None:
                        out[frozenset(s.labels.items())] = v
            return out

        return node

    def range_function(self) -> Node:
        function = self.take()
        self.take("(")
        selector = self.selector()
        self.take(")")
        if selector.range_s is None:
            raise SyntaxError(f"{function}() needs a range")
        window = selector.range_s

        def node(store: Store, t: float) -> Value:
            out: Vector = {}
            for s in store.series.get(selector.name, []):
                if selector.matches(s.labels):
                    found = s.delta(t - window, t)
                    if found is not None:
                        increase, seconds = found
                        out[frozenset(s.labels.items())] = increase / window if function == "rate" else increase
            return out

        return node


def _apply(op: str, a: float, b: float) -> float | bool:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            return math.nan if a == 0 else math.copysign(math.inf, a)
        return a / b
    return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b}[op]


def _binary(left: Node, right: Node, op: str) -> Node:
    comparison = op in (">", "<", ">=", "<=", "==", "!=")

    def node(store: Store, t: float) -> Value:
        a, b = left(store, t), right(store, t)
        if isinstance(a, float) and isinstance(b, float):
            return float(_apply(op, a, b))
        if isinstance(a, dict) and isinstance(b, float):
            pairs = {k: (v, b) for k, v in a.items()}
        elif isinstance(a, float) and isinstance(b, dict):
            pairs = {k: (a, v) for k, v in b.items()}
        else:
            assert isinstance(a, dict) and isinstance(b, dict)
            pairs = {k: (v, b[k]) for k, v in a.items() if k in b}
        out: Vector = {}
        for k, (x, y) in pairs.items():
            result = _apply(op, x, y)
            if comparison:
                if result:
                    out[k] = x if isinstance(a, dict) else y  # a filter keeps the vector side's value
            else:
                out[k] = float(result)
        return out

    return node


def _set_op(left: Node, right: Node, keep_left_only: bool) -> Node:
    def node(store: Store, t: float) -> Value:
        a, b = left(store, t), right(store, t)
        assert isinstance(a, dict) and isinstance(b, dict), "and/or need vectors"
        if keep_left_only:
            return {k: v for k, v in a.items() if k in b}
        return {**{k: v for k, v in b.items() if k not in a}, **a}

    return node


def compile_expr(text: str) -> tuple[Node, set[str]]:
    parser = Parser(text)
    return parser.parse(), parser.names


@dataclass
class RuleEngine:
    """Evaluates a rules file's groups at a time: records recording rules, tracks `for` on alerts."""

    groups: list[dict]
    store: Store
    pending: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.compiled = [[(rule, compile_expr(rule["expr"])[0]) for rule in g["rules"]] for g in self.groups]

    def evaluate(self, t: float) -> dict[str, Vector]:
        """Alerts firing at t: alert name -> labels -> value."""
        firing: dict[str, Vector] = {}
        for group in self.compiled:
            for rule, node in group:
                value = node(self.store, t)
                vector = value if isinstance(value, dict) else {frozenset(): value}
                if "record" in rule:
                    for labels, v in vector.items():
                        self.store.add(rule["record"], dict(labels), t, v)
                    continue
                hold = parse_duration(rule.get("for", "0m"))
                active = {k for k, v in vector.items() if not math.isnan(v)}
                for key in [k for k in self.pending if k[0] == rule["alert"] and k[1] not in active]:
                    del self.pending[key]
                for labels in active:
                    since = self.pending.setdefault((rule["alert"], labels), t)
                    if t - since >= hold:
                        firing.setdefault(rule["alert"], {})[labels] = vector[labels]
        return firing


def parse_duration(text: str) -> float:
    return float(text[:-1]) * DURATION[text[-1]]
