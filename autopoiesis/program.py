"""Programs (individuals) and policy slots (the decision points they implement).

A program is plain Python source that defines one function per slot it fills, so a
user can copy a champion straight into their own system. Its id is a hash of the
normalized source: two programs that differ only in comments or layout are the same
individual and are never evaluated twice.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


# CPython 3.11 and 3.12 count the AST converter's recursion in state the whole interpreter
# shares, so two threads converting at once (an online run's serving loop and its evolution
# plane, when a garbage collection in one runs a finalizer and lets the other in) can fail
# with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). Every
# parse of source into an AST, and every compile of one, goes through this lock.
_AST_LOCK = threading.RLock()


def parse(source: str | bytes, mode: str = "exec") -> ast.AST:
    """``ast.parse``, safe to call from several threads at once."""
    with _AST_LOCK:
        return ast.parse(source, mode=mode)


def compile_tree(tree: ast.AST, filename: str):
    """``compile`` of an AST, safe to call from several threads at once."""
    with _AST_LOCK:
        return compile(tree, filename, "exec")


class PolicyError(Exception):
    """A policy returned something its slot cannot use (wrong type, NaN, ...)."""


def normalize(source: str) -> str:
    """Canonical form of a program: comments and layout dropped, docstrings kept."""
    try:
        return ast.unparse(parse(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return source.strip()


@functools.lru_cache(maxsize=4096)
def program_size(source: str) -> int:
    """Syntax nodes in a program: of two equally fit programs, the smaller reads better and
    is the champion (lexicographic parsimony)."""
    try:
        return sum(1 for _ in ast.walk(parse(source)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return len(source)


def program_id(source: str) -> str:
    return hashlib.sha256(normalize(source).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Primitives:
    """What typed GP may build a slot's function from.

    ``features`` maps a terminal's name to the Python expression that reads it from
    the slot's parameters (``{"size": "job.size", "now": "now"}``); the GP tree is
    compiled to a single ``return`` expression over them (placed in ``template``).
    """

    features: Mapping[str, str] | tuple[tuple[str, str], ...]
    constants: tuple[float, float] = (-10.0, 10.0)
    conditionals: bool = True
    max_height: int = 7
    max_size: int = 40
    #: type of the evolved expression: float (a score) or bool (a decision)
    returns: type = float
    #: the return statement's shape around the evolved expression, e.g.
    #: "min(range(len(replicas)), key=lambda i: {expr})"
    template: str = "{expr}"

    def __post_init__(self) -> None:
        items = self.features.items() if isinstance(self.features, Mapping) else self.features
        object.__setattr__(self, "features", tuple((str(k), str(v)) for k, v in items))

    @property
    def expressions(self) -> dict[str, str]:
        """Feature name -> the expression that reads it."""
        return dict(self.features)


@dataclass(frozen=True)
class PolicySlot:
    """One decision point an adapter exposes to evolution.

    ``examples`` are argument tuples the sandbox calls a candidate with before it is
    scored (a cheap validator); ``returns`` is the type every call must return (a
    float must also be finite). ``validator`` may add slot-specific checks and raises
    to reject.
    """

    name: str
    params: tuple[str, ...]
    doc: str
    baselines: Mapping[str, str] = field(default_factory=dict)
    returns: type | tuple[type, ...] = float
    examples: Sequence[tuple] = ()
    validator: Callable[[Callable], None] | None = None
    primitives: Primitives | None = None

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.params)})"

    def check_result(self, value: Any) -> Any:
        """Coerce and check one return value; raise PolicyError if unusable."""
        if self.returns is float or self.returns == (float,):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PolicyError(f"{self.name} must return a number, got {type(value).__name__}")
            value = float(value)
            if not math.isfinite(value):
                raise PolicyError(f"{self.name} returned {value}, not a finite number")
            return value
        if not isinstance(value, self.returns):
            raise PolicyError(f"{self.name} returned {type(value).__name__}, expected {_type_name(self.returns)}")
        return value

    def validate(self, fn: Callable) -> None:
        """Call a compiled candidate on the slot's examples (runs untrusted code)."""
        for args in self.examples:
            self.check_result(fn(*args))
        if self.validator is not None:
            self.validator(fn)


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


@dataclass
class Program:
    """One individual: source, lineage and (once scored) its evaluations."""

    source: str
    parents: tuple[str, ...] = ()
    operator: str = "seed"
    generation: int = 0
    name: str | None = None
    evaluations: dict[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = program_id(self.source)

    def label(self) -> str:
        return self.name or self.id[:8]

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and other.id == self.id


def function_source(source: str, name: str) -> tuple[ast.FunctionDef, int, int] | None:
    """The top-level ``def name`` in source, with its first and last line (1-based)."""
    tree = parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return node, first, node.end_lineno or node.lineno
    return None


def replace_function(source: str, name: str, new_def: str) -> str:
    """Source with the top-level function ``name`` replaced by ``new_def`` (the rest kept verbatim)."""
    found = function_source(source, name)
    lines = source.splitlines()
    if found is None:
        return source.rstrip("\n") + "\n\n\n" + new_def.rstrip("\n") + "\n"
    _, first, last = found
    return "\n".join(lines[: first - 1] + new_def.rstrip("\n").splitlines() + lines[last:]).rstrip("\n") + "\n"


def slot_code_id(source: str, name: str) -> str:
    """Hash of what decides one slot's behaviour: its function, the module-level functions,
    classes and constants it uses (and what those use), the imports, and any other
    module-level statement (an ``if`` or a loop may bind anything, so it counts for every slot).

    Two programs with the same id here make the same decisions in that slot (for example,
    a deployment that changes only ``priority`` keeps the serving plan), so a helper's edit
    counts for the slots that call it, and a constant only another slot reads does not.
    Docstrings do nothing, so they do not count: an operator that drops or rewrites one
    does not make a new plan or a new queue order.
    """
    try:
        tree = parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return program_id(source)
    used = slot_statements(tree, name)
    kept = [node for i, node in enumerate(tree.body) if i in used or not is_binding(node)
            and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    for node in kept:
        for inner in ast.walk(node):
            if isinstance(inner, _DOCUMENTED) and ast.get_docstring(inner, clean=False) is not None:
                inner.body = inner.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(ast.Module(kept, [])).encode()).hexdigest()[:16]


_DOCUMENTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


_BINDINGS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def is_binding(node: ast.stmt) -> bool:
    """A module-level def, class or assignment: it binds names that a slot may use."""
    return isinstance(node, _BINDINGS)


def bound_names(node: ast.stmt) -> list[str]:
    """The module-level names a binding statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    return []


def slot_statements(tree: ast.Module, name: str) -> set[int]:
    """Indices into ``tree.body`` of the function ``name`` and the module-level functions,
    classes and constants it uses, and what those use."""
    owners: dict[str, list[int]] = {}  # module-level name -> the statements that bind it
    for i, node in enumerate(tree.body):
        for bound in bound_names(node):
            owners.setdefault(bound, []).append(i)
    used: set[int] = set()
    todo = [name]
    while todo:
        for i in owners.get(todo.pop(), ()):
            if i not in used:
                used.add(i)
                todo.extend(n.id for n in ast.walk(tree.body[i]) if isinstance(n, ast.Name))
    return used
