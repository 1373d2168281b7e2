"""recombine.Slots: one slot's whole policy taken from another parent.

A program fills several slots (plan, re-plan, route, queue order). The best program
is often a mix of parts that already exist in the population: one parent's router with
another's re-planning rule. ``gp.Crossover`` mixes subtrees *within* one slot and never
hands a slot over whole, and most hand-written or LLM-written functions are not GP
trees at all. This operator copies the chosen slot's function from the second parent
into the first, with the module-level functions, classes, constants and imports it
uses; what only the replaced function used is dropped. Text is moved by source
position, so comments and layout survive.
"""

from __future__ import annotations

import ast
import re
from typing import Sequence

from ..program import Program, bound_names, parse, slot_statements
from .base import Context, Operator, OperatorError


class Slots(Operator):
    """The first parent with one slot (whose code differs between them) taken from the second."""

    name = "recombine.Slots"
    arity = 2

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        try:
            return self._recombine(*parents, context)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # generated code may be anything
            raise OperatorError(f"cannot recombine these parents: {type(e).__name__}: {e}") from None

    def _recombine(self, first: Program, second: Program, context: Context) -> Program:
        a, b = parse(first.source), parse(second.source)
        defined_a, defined_b = _functions(a), _functions(b)
        choices = [name for name in context.slots if name in defined_a and name in defined_b
                   and _code(a, name) != _code(b, name)]
        if not choices:
            raise OperatorError("the parents do not differ in any slot they both define")
        slot = context.rng.choice(sorted(choices))
        if not any(name in defined_a for name in context.slots if name != slot):
            raise OperatorError("the first parent has no other slot: taking this one whole would copy the second")
        others = set().union(*(slot_statements(a, name) for name in context.slots
                               if name != slot and name in defined_a))
        return self.child(_take(first.source, a, second.source, b, slot, others), (first, second), context)


def _functions(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def _code(tree: ast.Module, slot: str) -> str:
    """What decides a slot in this program: its function and what it uses (imports aside)."""
    return ast.unparse(ast.Module([tree.body[i] for i in sorted(slot_statements(tree, slot))], []))


def _imported(node: ast.stmt) -> set[str]:
    return {(alias.asname or alias.name).split(".")[0] for alias in getattr(node, "names", [])}


def _lines(node: ast.stmt) -> tuple[int, int]:
    """First and last source line (1-based) of a top-level statement, decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return first, node.end_lineno or node.lineno


def _text(lines: list[str], node: ast.stmt) -> str:
    first, last = _lines(node)
    return "\n".join(lines[first - 1:last])


def _take(source_a: str, a: ast.Module, source_b: str, b: ast.Module, slot: str, others: set[int]) -> str:
    """``source_a`` with ``slot`` (and what it needs) from ``source_b``; ``others`` are the
    statements of ``a`` its remaining slots need, which must not change."""
    lines_a, lines_b = source_a.splitlines(), source_b.splitlines()
    target = next(i for i, node in enumerate(a.body) if isinstance(node, ast.FunctionDef) and node.name == slot)
    if target in others:
        raise OperatorError(f"another slot of the first parent calls {slot}")
    kept = {name: _text(lines_a, a.body[i]) for i in others for name in bound_names(a.body[i])}
    incoming, names = [], set()
    for i in sorted(slot_statements(b, slot)):  # b's order: helpers and constants before their use
        node, text = b.body[i], _text(lines_b, b.body[i])
        clashes = [name for name in bound_names(node) if name in kept]
        if clashes and all(kept[name] == text for name in clashes):
            continue  # the same binding is already there for another slot
        if clashes:
            raise OperatorError(f"{', '.join(clashes)} means one thing to {slot} in the second parent "
                                f"and another to the first parent's other slots")
        incoming.append(text)
        names.update(bound_names(node))
    used = {n.id for i in slot_statements(b, slot) for n in ast.walk(b.body[i]) if isinstance(n, ast.Name)}
    present = {ast.unparse(node) for node in a.body}
    imports = [_text(lines_b, node) for node in b.body if isinstance(node, (ast.Import, ast.ImportFrom))
               and _imported(node) & used and ast.unparse(node) not in present]
    # out go a's statements that only the outgoing function needed, and any other binding of an incoming name
    outgoing = (slot_statements(a, slot) | {i for i, node in enumerate(a.body) if names & set(bound_names(node))})
    out: list[str] = []
    cursor = 1
    for i in sorted(outgoing - others):
        first, last = _lines(a.body[i])
        out.extend(lines_a[cursor - 1:first - 1])
        if i == target:
            out.extend("\n\n\n".join(incoming).splitlines())
        cursor = last + 1
    out.extend(lines_a[cursor - 1:])
    text = "\n".join(imports + ([""] if imports else []) + out)
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n") + "\n"
