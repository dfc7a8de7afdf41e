"""Metric gates: ``SOURCE.KEY OP RHS``, evaluated for a candidate against a baseline.

Grammar::

    gate   := metric OP rhs
    metric := ("eval" | "live") "." KEY
    OP     := ">=" | "<=" | ">" | "<" | "==" | "!="
    rhs    := NUMBER | base [("+" | "-" | "*") NUMBER]
    base   := "stable" | "stable(" CHANNEL ")"

``eval.KEY`` is the latest eval metric of a version; ``live.KEY`` is the live measurement over
the current rollout step's window (``error_rate`` = errors / requests; ``requests``; any other
key is the request-weighted mean of what routers reported). ``stable`` is the same metric of
the channel's stable version over the same window; ``stable(prod)`` names another channel.
A gate whose inputs are missing is ``inconclusive``, never passed.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from registry.errors import BadRequest
from registry.statuses import GateVerdict

GATE_RE = re.compile(
    r"^\s*(eval|live)\.([A-Za-z0-9_.\-/]+)\s*(>=|<=|==|!=|>|<)\s*"
    r"(?:(-?[0-9.]+(?:[eE][-+]?\d+)?)|stable(?:\(([a-z0-9_-]+)\))?\s*(?:([-+*])\s*([0-9.]+(?:[eE][-+]?\d+)?))?)\s*$"
)
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}
ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul,
}


@dataclass(frozen=True)
class Gate:
    text: str
    source: str  # eval | live
    key: str
    op: str
    constant: float | None = None
    channel: str | None = None  # None with constant None: the rollout's own channel
    arith: str | None = None
    operand: float = 0.0

    @property
    def relative(self) -> bool:
        return self.constant is None

    def threshold(self, baseline: float | None) -> float | None:
        if self.constant is not None:
            return self.constant
        if baseline is None:
            return None
        return ARITH[self.arith](baseline, self.operand) if self.arith else baseline


@dataclass(frozen=True)
class Verdict:
    gate: str
    verdict: GateVerdict
    value: float | None
    threshold: float | None
    detail: str


def parse_gate(text: str) -> Gate:
    m = GATE_RE.match(text)
    if not m:
        raise BadRequest(
            f"gate {text!r} must look like 'eval.accuracy >= 0.9', "
            "'live.error_rate <= 0.02' or 'live.latency_p95_ms <= stable * 1.1'"
        )
    source, key, op, number, channel, arith, operand = m.groups()
    try:
        constant = float(number) if number is not None else None
        factor = float(operand) if operand is not None else 0.0
    except ValueError as exc:
        raise BadRequest(f"gate {text!r}: bad number ({exc})") from exc
    return Gate(text.strip(), source, key, op, constant, channel, arith, factor)


def evaluate(gate: Gate, value: float | None, baseline: float | None) -> Verdict:
    """Compare ``value`` with the gate's threshold (from ``baseline`` when relative)."""
    threshold = gate.threshold(baseline)
    if value is None or not math.isfinite(value):
        return Verdict(gate.text, GateVerdict.INCONCLUSIVE, value, threshold,
                       f"no {gate.source} data for {gate.key} on the candidate")
    if threshold is None:
        return Verdict(gate.text, GateVerdict.INCONCLUSIVE, value, None,
                       f"no {gate.source} data for {gate.key} on the stable version")
    ok = OPS[gate.op](value, threshold)
    detail = f"{gate.key} = {value:.6g} {'meets' if ok else 'fails'} {gate.op} {threshold:.6g}"
    verdict = GateVerdict.PASS if ok else GateVerdict.FAIL
    return Verdict(gate.text, verdict, value, threshold, detail)
