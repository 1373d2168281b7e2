"""tune.Constants: perturb the numeric literals of any program.

Works on source written by anyone (a human baseline, GP, an LLM): literals are found
with ``ast`` and replaced in place by their source positions, so comments and layout
survive.
"""

from __future__ import annotations

import ast
import math
from typing import Sequence

from ..program import Program, parse
from .base import Context, Operator, OperatorError


class Constants(Operator):
    """Multiply each chosen float by exp(N(0, sigma)); nudge each chosen int by about sigma of itself."""

    name = "tune.Constants"
    arity = 1

    def __init__(self, sigma: float = 0.3, rate: float = 0.5):
        self.sigma = sigma
        self.rate = rate

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        (parent,) = parents
        try:
            tree = parse(parent.source)
        except SyntaxError as e:
            raise OperatorError(f"parent does not parse: {e.msg}") from None
        literals = _tunable_literals(tree)
        if not literals:
            raise OperatorError("no numeric literals to tune")
        rng = context.rng
        chosen = [lit for lit in literals if rng.random() < self.rate] or [rng.choice(literals)]
        lines = parent.source.splitlines(keepends=True)
        # Replace right to left so earlier offsets stay valid.
        for node in sorted(chosen, key=lambda n: (n.lineno, n.col_offset), reverse=True):
            new = self._perturb(node.value, rng)
            line = lines[node.lineno - 1]
            start, end = _char_offset(line, node.col_offset), _char_offset(line, node.end_col_offset)
            lines[node.lineno - 1] = line[:start] + repr(new) + line[end:]
        source = "".join(lines)
        if source == parent.source:
            raise OperatorError("perturbation left every constant unchanged")
        return self.child(source, parents, context)

    def _perturb(self, value: int | float, rng) -> int | float:
        if isinstance(value, int):
            step = max(1, round(abs(value) * self.sigma))
            delta = rng.choice([-1, 1]) * rng.randint(1, step)
            new = value + delta
            # keep the sign a human chose, and keep counts, periods and divisors >= 1 off zero
            return max(new, 1) if value >= 1 else max(new, 0)
        if value == 0.0:
            return round(rng.gauss(0.0, self.sigma), 4)
        new = value * math.exp(rng.gauss(0.0, self.sigma))
        return float(f"{new:.4g}")


def _tunable_literals(tree: ast.AST) -> list[ast.Constant]:
    """Numeric literals, skipping booleans and subscripts (an index is rarely a knob)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            skip.update(id(n) for n in ast.walk(node.slice))
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and type(node.value) in (int, float)
        and id(node) not in skip
        and math.isfinite(node.value)
    ]


def _char_offset(line: str, byte_offset: int) -> int:
    """ast offsets are UTF-8 bytes; slice positions are characters."""
    return len(line.encode()[:byte_offset].decode(errors="ignore"))
