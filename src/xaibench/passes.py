"""Declared model passes per image of a method or metric, as data.

A `Passes` holds one arithmetic expression per kind of pass (forwards, backwards, explanations by
the method a metric scores) over the declarer's parameter names and the sizes the planner knows
(``H``, ``W``, ``F`` = ``features`` = H * W, ``S`` superpixels, ``L`` randomised layers, ``K``
channels of a CAM layer), plus a free-text note for people. Expressions use numbers, names,
``+ - * / //``, ``x if c else y`` and ``ceil``, ``floor``, ``min``, ``max``, ``len``; anything
else is refused at declaration. `evaluate` computes the counts without ever running code from the
text, and ``str()`` is the readable form shown by ``xaibench methods`` and ``xaibench metrics``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("forwards", "backwards", "explanations")

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv}
_CALLS = {"ceil": math.ceil, "floor": math.floor, "min": min, "max": max, "len": len}


def _value(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if env.get(node.id) is None:
            raise KeyError(node.id)
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_value(node.left, env), _value(node.right, env))
    if isinstance(node, ast.IfExp):
        return _value(node.body, env) if _value(node.test, env) else _value(node.orelse, env)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return _CALLS[node.func.id](*(_value(a, env) for a in node.args))


def _check(node: ast.AST, text: str) -> None:
    """Refuse any syntax outside the arithmetic `_value` evaluates."""
    ok = (isinstance(node, (ast.Constant, ast.Name))
          or isinstance(node, ast.BinOp) and type(node.op) in _BINOPS
          or isinstance(node, ast.IfExp)
          or isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS
          and not node.keywords)
    if not ok:
        raise ValueError(f"pass count {text!r}: {type(node).__name__} is not allowed; use numbers, names, "
                         f"+ - * / //, 'x if c else y' and {', '.join(_CALLS)}")
    children = {ast.BinOp: ("left", "right"), ast.IfExp: ("test", "body", "orelse")}.get(type(node), ())
    for child in [getattr(node, c) for c in children] + list(getattr(node, "args", [])):
        _check(child, text)


@dataclass(frozen=True)
class Passes:
    """Passes per image: each count an expression of parameters and sizes (``"steps + 1"``)."""

    forwards: str = "0"
    backwards: str = "0"
    explanations: str = "0"
    note: str = ""  # for people only, e.g. "K = channels of the layer"

    def __post_init__(self) -> None:
        for kind in KINDS:
            text = getattr(self, kind)
            _check(ast.parse(text, mode="eval").body, text)

    def names(self) -> set[str]:
        """The parameter and size names the counts use."""
        return {n.id for kind in KINDS for n in ast.walk(ast.parse(getattr(self, kind), mode="eval"))
                if isinstance(n, ast.Name) and n.id not in _CALLS}

    def evaluate(self, env: Mapping[str, Any]) -> dict[str, float | None]:
        """Each kind's count with the names in `env`; None where it names something unknown (absent
        or None in `env`) or cannot be computed with those values."""
        out: dict[str, float | None] = {}
        for kind in KINDS:
            try:
                out[kind] = float(_value(ast.parse(getattr(self, kind), mode="eval").body, env))
            except (KeyError, ValueError, TypeError, ZeroDivisionError):
                out[kind] = None
        return out

    def __str__(self) -> str:
        terms = [f"{text} {kind[:-1] if text == '1' else kind}" for kind in KINDS
                 if (text := getattr(self, kind)) != "0"]
        text = ", ".join(terms) or "no model passes"
        return f"{text} ({self.note})" if self.note else text
