"""Typed genetic programming over a slot's primitive set, with DEAP.

A slot whose ``primitives`` are given can be varied as an expression tree: the
parent's ``return`` expression is parsed back into a DEAP ``PrimitiveTree`` (so GP
also varies hand-written baselines and LLM programs that happen to be expressions),
varied with DEAP's typed operators under Koza-style static height and size limits
(bloat control), and compiled back to one readable ``return`` statement, with its dead
code taken out (``x if True else y`` is ``x``): a child that only adds dead code to a
program is that program, so it is not scored again, and a champion reads as what it does.

Types: ``float`` for values, ``bool`` for conditions (``a < b``), so conditionals
are well-typed: ``(x if a < b else y)``.
"""

from __future__ import annotations

import ast
import functools
import random
from typing import Sequence

from deap import gp

from ..program import PolicySlot, Primitives, Program, function_source, parse, replace_function
from .base import Context, Operator, OperatorError

# name -> (arg types, return type, format). Formats parenthesize fully; the final
# source goes through ast.unparse, which keeps only the parentheses it needs.
_F, _B = float, bool
PRIMITIVES = {
    "add": ((_F, _F), _F, "({} + {})"),
    "sub": ((_F, _F), _F, "({} - {})"),
    "mul": ((_F, _F), _F, "({} * {})"),
    "div": ((_F, _F), _F, "({} / ({} or 1.0))"),  # protected: x / 0 reads as x / 1
    "neg": ((_F,), _F, "(-{})"),
    "min": ((_F, _F), _F, "min({}, {})"),
    "max": ((_F, _F), _F, "max({}, {})"),
}
CONDITIONALS = {
    "lt": ((_F, _F), _B, "({} < {})"),
    "gt": ((_F, _F), _B, "({} > {})"),
    "if_then_else": ((_B, _F, _F), _F, "({1} if {0} else {2})"),
    "and_": ((_B, _B), _B, "({} and {})"),
    "or_": ((_B, _B), _B, "({} or {})"),
}
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul"}


def _identity(*args):  # DEAP wants a callable per primitive; we never call the tree
    return args[0]


def _random_constant(low: float, high: float) -> float:
    return round(random.uniform(low, high), 2)


@functools.lru_cache(maxsize=64)
def primitive_set(slot_name: str, primitives: Primitives) -> gp.PrimitiveSetTyped:
    features = list(primitives.expressions)
    pset = gp.PrimitiveSetTyped(slot_name, [float] * len(features), primitives.returns)
    pset.renameArguments(**{f"ARG{i}": name for i, name in enumerate(features)})
    table = dict(PRIMITIVES, **(CONDITIONALS if primitives.conditionals or primitives.returns is bool else {}))
    for name, (args, ret, _) in table.items():
        pset.addPrimitive(_identity, list(args), ret, name=name)
    pset.addEphemeralConstant("const", functools.partial(_random_constant, *primitives.constants), float)
    if primitives.conditionals or primitives.returns is bool:
        pset.addTerminal(True, bool)  # unnamed: DEAP keeps the value True, named "True"
        pset.addTerminal(False, bool)
    return pset


_FORMATS = {name: fmt for name, (_, _, fmt) in {**PRIMITIVES, **CONDITIONALS}.items()}


def to_expression(tree: gp.PrimitiveTree, primitives: Primitives) -> str:
    """The tree as a minimal-parenthesis Python expression over the slot's parameters."""
    expressions = primitives.expressions

    def render(index: int) -> tuple[str, int]:
        node = tree[index]
        if isinstance(node, gp.Primitive):
            parts, nxt = [], index + 1
            for _ in range(node.arity):
                text, nxt = render(nxt)
                parts.append(text)
            return _FORMATS[node.name].format(*parts), nxt
        if isinstance(node.value, str) and node.value in expressions:  # renamed argument
            return expressions[node.value], index + 1
        return repr(node.value), index + 1

    text, _ = render(0)
    return ast.unparse(_Simplify().visit(parse(text, mode="eval")))


def _is_bool(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, bool)


class _Simplify(ast.NodeTransformer):
    """Takes out what a tree computes for nothing: constant conditions, equal branches,
    comparisons of a value with itself, ``min(x, x)``. Bottom-up, so one pass does it all;
    every rule keeps the expression's value and leaves it inside the primitive set."""

    def visit_IfExp(self, node: ast.IfExp) -> ast.expr:
        self.generic_visit(node)
        if _is_bool(node.test):
            return node.body if node.test.value else node.orelse
        return node.body if _same(node.body, node.orelse) else node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        self.generic_visit(node)
        if not all(isinstance(v, (ast.Compare, ast.BoolOp)) or _is_bool(v) for v in node.values):
            return node  # the protected division's ``(x or 1.0)``, which is a number
        neutral = isinstance(node.op, ast.And)  # True changes nothing in an ``and``, False in an ``or``
        values: list[ast.expr] = []
        for value in node.values:
            if _is_bool(value) and value.value != neutral:
                return ast.Constant(not neutral)
            if not _is_bool(value) and not any(_same(value, kept) for kept in values):
                values.append(value)
        if len(values) > 1:
            node.values = values
            return node
        return values[0] if values else ast.Constant(neutral)

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        left, right = node.left, node.comparators[0]
        if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Lt, ast.Gt)):
            return node
        if _same(left, right):
            return ast.Constant(False)
        if all(isinstance(n, ast.Constant) and type(n.value) in (int, float) for n in (left, right)):
            return ast.Constant(left.value < right.value if isinstance(node.ops[0], ast.Lt) else left.value > right.value)
        return node

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        pair = isinstance(node.func, ast.Name) and node.func.id in ("min", "max") and len(node.args) == 2
        return node.args[0] if pair and _same(*node.args) else node


def to_source(slot: PolicySlot, tree: gp.PrimitiveTree) -> str:
    expr = to_expression(tree, slot.primitives)
    body = slot.primitives.template.format(expr=expr)
    return f"def {slot.name}({', '.join(slot.params)}):\n    return {body}\n"


def from_source(source: str, slot: PolicySlot) -> gp.PrimitiveTree:
    """Parse a slot function that is a single ``return`` expression back into a tree."""
    if slot.primitives is None:
        raise OperatorError(f"slot '{slot.name}' has no GP primitive set")
    try:
        found = function_source(source, slot.name)
    except SyntaxError as e:
        raise OperatorError(f"parent does not parse: {e.msg}") from None
    if found is None:
        raise OperatorError(f"parent does not define {slot.name}")
    fn = found[0]
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        raise OperatorError(f"{slot.name} is not a single return expression; GP cannot vary it")
    pset = primitive_set(slot.name, slot.primitives)
    expression = _untemplate(body[0].value, slot.primitives.template, slot.name)
    nodes: list = []
    _parse(expression, slot.primitives.returns, pset, slot.primitives, nodes)
    return gp.PrimitiveTree(nodes)


_HOLE = "GP_EXPRESSION_HOLE"


def _untemplate(node: ast.expr, template: str, slot_name: str) -> ast.expr:
    """The part of ``node`` that sits where the template has ``{expr}``."""
    if template == "{expr}":
        return node
    pattern = parse(template.format(expr=_HOLE), mode="eval").body
    found = _match(pattern, node)
    if found is None:
        raise OperatorError(f"{slot_name} does not have the GP template's shape: return {template}")
    return found


def _match(pattern: ast.AST, node: ast.AST) -> ast.expr | None:
    if isinstance(pattern, ast.Name) and pattern.id == _HOLE:
        return node
    if type(pattern) is not type(node):
        return None
    hole = None
    for name, value in ast.iter_fields(pattern):
        other = getattr(node, name, None)
        if isinstance(value, ast.AST):
            found = _match(value, other) if isinstance(other, ast.AST) else None
            if found is None and not _same(value, other):
                return None
            hole = hole or found
        elif isinstance(value, list):
            if not isinstance(other, list) or len(other) != len(value):
                return None
            for a, b in zip(value, other):
                found = _match(a, b) if isinstance(a, ast.AST) else None
                if found is None and not _same(a, b):
                    return None
                hole = hole or found
        elif name not in ("ctx", "lineno", "col_offset", "end_lineno", "end_col_offset") and value != other:
            return None
    return hole


def _same(a, b) -> bool:
    return ast.dump(a) == ast.dump(b) if isinstance(a, ast.AST) and isinstance(b, ast.AST) else a == b


def _parse(node: ast.expr, want: type, pset, primitives: Primitives, out: list) -> None:
    def prim(name: str, *children: tuple[ast.expr, type]) -> None:
        if name not in pset.mapping:
            raise OperatorError(f"'{name}' is not in the primitive set")
        out.append(pset.mapping[name])
        for child, typ in children:
            _parse(child, typ, pset, primitives, out)

    text = ast.unparse(node)
    feature = next((name for name, expr in primitives.features if expr == text), None)
    if want is float and feature is not None:
        out.append(pset.mapping[feature])
    elif want is float and isinstance(node, ast.Constant) and type(node.value) in (int, float):
        out.append(_constant(pset, float(node.value)))
    elif want is float and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        if isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            out.append(_constant(pset, -float(node.operand.value)))
        else:
            prim("neg", (node.operand, float))
    elif want is float and isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        prim(_BINOPS[type(node.op)], (node.left, float), (node.right, float))
    elif (
        want is float and isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        and isinstance(node.right, ast.BoolOp) and isinstance(node.right.op, ast.Or)
        and len(node.right.values) == 2 and _is_one(node.right.values[1])
    ):
        prim("div", (node.left, float), (node.right.values[0], float))
    elif (
        want is float and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ("min", "max") and len(node.args) == 2 and not node.keywords
    ):
        prim(node.func.id, (node.args[0], float), (node.args[1], float))
    elif want is float and isinstance(node, ast.IfExp):
        prim("if_then_else", (node.test, bool), (node.body, float), (node.orelse, float))
    elif want is bool and isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in (ast.Lt, ast.Gt):
        prim("lt" if isinstance(node.ops[0], ast.Lt) else "gt", (node.left, float), (node.comparators[0], float))
    elif want is bool and isinstance(node, ast.BoolOp) and len(node.values) == 2:
        prim("and_" if isinstance(node.op, ast.And) else "or_", (node.values[0], bool), (node.values[1], bool))
    elif want is bool and isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append(pset.mapping[str(node.value)])
    else:
        raise OperatorError(f"'{text}' is outside the GP primitive set")


def _is_one(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == 1.0 and not isinstance(node.value, bool)


def _constant(pset, value: float):
    cls = pset.mapping["const"]
    terminal = cls.__new__(cls)
    terminal.value = round(value, 4)
    return terminal


def _within_limits(tree: gp.PrimitiveTree, primitives: Primitives) -> bool:
    return tree.height <= primitives.max_height and len(tree) <= primitives.max_size


def _gp_slots(program: Program, context: Context) -> list[PolicySlot]:
    return [
        slot for slot in context.slots.values()
        if slot.primitives is not None and f"def {slot.name}(" in program.source
    ]


class Mutate(Operator):
    """Subtree, node-replacement, constant or shrink mutation of one slot's expression."""

    name = "gp.Mutate"
    arity = 1
    tries = 10

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        (parent,) = parents
        slots = _gp_slots(parent, context)
        if not slots:
            raise OperatorError("no slot with a GP primitive set in this program")
        slot = context.rng.choice(slots)
        tree = from_source(parent.source, slot)
        pset = primitive_set(slot.name, slot.primitives)
        expr = functools.partial(gp.genGrow, min_=0, max_=2)
        rendered = to_source(slot, tree)  # a child that renders as this is its parent plus dead code
        for _ in range(self.tries):
            child = gp.PrimitiveTree(list(tree))
            kind = random.random()
            if kind < 0.5:
                (child,) = gp.mutUniform(child, expr=expr, pset=pset)
            elif kind < 0.75:
                (child,) = gp.mutNodeReplacement(child, pset=pset)
            elif kind < 0.9:
                (child,) = gp.mutEphemeral(child, mode="one")
            else:
                (child,) = gp.mutShrink(child)
            if _within_limits(child, slot.primitives) and (new := to_source(slot, child)) != rendered:
                return self.child(replace_function(parent.source, slot.name, new), parents, context)
        raise OperatorError(f"no mutation of {slot.name} within the size limits in {self.tries} tries")


class Crossover(Operator):
    """Typed one-point crossover of two parents' expressions for the same slot."""

    name = "gp.Crossover"
    arity = 2
    tries = 10

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        first, second = parents
        names = {s.name for s in _gp_slots(second, context)}
        slots = [s for s in _gp_slots(first, context) if s.name in names]
        if not slots:
            raise OperatorError("parents share no slot with a GP primitive set")
        slot = context.rng.choice(slots)
        a, b = from_source(first.source, slot), from_source(second.source, slot)
        parents_rendered = (to_source(slot, a), to_source(slot, b))
        for _ in range(self.tries):
            child, _ = gp.cxOnePoint(gp.PrimitiveTree(list(a)), gp.PrimitiveTree(list(b)))
            new = to_source(slot, child)
            if _within_limits(child, slot.primitives) and new not in parents_rendered:
                return self.child(replace_function(first.source, slot.name, new), parents, context)
        raise OperatorError(f"no crossover of {slot.name} within the size limits in {self.tries} tries")


def random_program(slot: PolicySlot, base: Program | None = None, max_height: int = 3) -> str:
    """A random tree for a slot (used to diversify an initial population)."""
    pset = primitive_set(slot.name, slot.primitives)
    tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, min_=1, max_=max_height))
    new_def = to_source(slot, tree)
    return replace_function(base.source, slot.name, new_def) if base else new_def
