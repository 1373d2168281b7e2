"""Untrusted program handling: static checks, restricted compile, process limits.

Defence in depth. ``check`` rejects, with a reason a person can read, anything that
reaches outside the program (imports beyond a small allowlist, dunder or frame
attributes, assigning attributes, exec/eval/open/getattr and friends, module-level code
other than definitions). ``compile_policy`` executes what passed in a namespace whose
builtins are an allowlist and whose modules are stripped proxies of its own. The
evaluator runs that in worker processes under ``apply_limits`` and a CPU-time ``cpu_timer``,
so what slips through both layers (an infinite loop, a memory bomb) costs one worker, not
the run. On a serving thread, ``CpuDeadline`` stops a call that computes too long, and
``state_items`` measures the state a program keeps between calls.
"""

from __future__ import annotations

import ast
import _signal
import builtins
import collections
import functools
import gc
import itertools
import re
import resource
import signal
import sys
import threading
import time
import types
from typing import Callable, Iterable, Mapping

from .program import PolicySlot, compile_tree, parse

MAX_SOURCE_CHARS = 20_000
MAX_AST_NODES = 4_000

ALLOWED_MODULES = frozenset(
    {"math", "heapq", "bisect", "collections", "itertools", "functools", "statistics"}
)

FORBIDDEN_NAMES = frozenset(
    {
        "exec", "eval", "compile", "open", "input", "breakpoint", "help",
        "globals", "locals", "vars", "dir", "getattr", "setattr", "delattr", "hasattr",
        "type", "object", "super", "memoryview", "classmethod", "staticmethod", "property",
        "exit", "quit", "copyright", "credits", "license", "print",
    }
)

# Attributes that lead from an ordinary object to frames, code or globals, or that read
# attributes by string (str.format's "{0.__class__}").
FORBIDDEN_ATTRIBUTE = re.compile(r"^_|^(gi|cr|ag|f|tb|co)_|^(mro|format|format_map)$")

SAFE_BUILTIN_NAMES = (
    "abs", "all", "any", "bool", "callable", "dict", "divmod", "enumerate", "filter",
    "float", "frozenset", "int", "isinstance", "iter", "len", "list", "map", "max",
    "min", "next", "pow", "range", "reversed", "round", "set", "slice", "sorted",
    "str", "sum", "tuple", "zip", "hash", "chr", "ord", "repr", "bin", "hex",
    "True", "False", "None", "NotImplemented", "Ellipsis",
    "Exception", "ArithmeticError", "AssertionError", "IndexError", "KeyError",
    "LookupError", "OverflowError", "RuntimeError", "StopIteration", "TypeError",
    "ValueError", "ZeroDivisionError",
)


class Rejected(Exception):
    """A program failed a sandbox check; ``str(e)`` is the human-readable reason."""


def check(source: str, slots: Iterable[PolicySlot]) -> ast.Module:
    """Static checks. Returns the parsed module or raises Rejected with a reason."""
    if not isinstance(source, str) or not source.strip():
        raise Rejected("empty program")
    if len(source) > MAX_SOURCE_CHARS:
        raise Rejected(f"program is {len(source)} characters, over the {MAX_SOURCE_CHARS} limit")
    try:
        tree = parse(source)
    except SyntaxError as e:
        where = f" on line {e.lineno}" if e.lineno else ""  # a null byte has no line
        raise Rejected(f"syntax error{where}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise Rejected(f"cannot parse: {type(e).__name__}") from None

    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_AST_NODES:
        raise Rejected(f"program has {len(nodes)} syntax nodes, over the {MAX_AST_NODES} limit")

    for stmt in tree.body:
        if not _allowed_at_top_level(stmt):
            raise Rejected(
                f"line {stmt.lineno}: only imports, function definitions and constant "
                f"assignments may run at module level (found {type(stmt).__name__})"
            )
        if isinstance(stmt, ast.FunctionDef):  # defaults run when the module does, outside any deadline
            for default in stmt.args.defaults + [d for d in stmt.args.kw_defaults if d is not None]:
                if not (_is_literal(default) or _is_dotted_name(default)):
                    raise Rejected(f"line {default.lineno}: a default value of {stmt.name} must be a "
                                   "constant or a name (it runs when the program loads)")
    # Report the first offence in reading order, not ast.walk's breadth-first order.
    for node in sorted(nodes, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0),
                                              getattr(n, "end_col_offset", 0) or 0)):
        _check_node(node)

    defined = {s.name: s for s in tree.body if isinstance(s, ast.FunctionDef)}
    slots = list(slots)
    filled = [slot for slot in slots if slot.name in defined]
    if not filled:
        names = ", ".join(slot.signature for slot in slots)
        raise Rejected(f"defines none of the policy functions: {names}")
    for slot in filled:
        fn = defined[slot.name]
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        required = len(params) - len(fn.args.defaults)
        if fn.args.vararg is None and (len(params) < len(slot.params) or required > len(slot.params)):
            raise Rejected(f"{slot.name} must accept {len(slot.params)} arguments {slot.signature}, it takes {len(params)}")
    return tree


def _allowed_at_top_level(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # docstring
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        value = stmt.value
        return value is None or _is_literal(value)
    return False


def _is_literal(node: ast.expr) -> bool:
    """Small literal containers of constants: safe to evaluate at import time."""
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return sum(1 for _ in ast.walk(node)) <= 1_000


def _is_dotted_name(node: ast.expr) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def _check_node(node: ast.AST) -> None:
    line = getattr(node, "lineno", "?")
    if isinstance(node, ast.Import):
        for alias in node.names:
            _check_module(alias.name, line)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            raise Rejected(f"line {line}: relative imports are not allowed")
        _check_module(node.module or "", line)
        for alias in node.names:
            if alias.name == "*" or alias.name.startswith("_"):
                raise Rejected(f"line {line}: 'from {node.module} import {alias.name}' is not allowed")
    elif isinstance(node, ast.Attribute):
        if FORBIDDEN_ATTRIBUTE.search(node.attr):
            raise Rejected(f"line {line}: access to attribute '{node.attr}' is not allowed")
        if isinstance(node.ctx, (ast.Store, ast.Del)):  # math.log = ..., Counter.most_common = ...
            raise Rejected(f"line {line}: assigning or deleting attribute '{node.attr}' is not allowed "
                           "(modules, their classes and the inputs are shared with other code)")
    elif isinstance(node, ast.Name):
        if node.id in FORBIDDEN_NAMES or node.id.startswith("__"):
            raise Rejected(f"line {line}: use of '{node.id}' is not allowed")
    elif isinstance(node, (ast.FunctionDef, ast.Lambda, ast.AsyncFunctionDef)):
        if isinstance(node, ast.AsyncFunctionDef):
            raise Rejected(f"line {line}: async functions are not allowed")
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            raise Rejected(f"line {line}: decorators are not allowed")
        if isinstance(node, ast.FunctionDef) and node.name.startswith("__"):
            raise Rejected(f"line {line}: function name '{node.name}' is not allowed")
    elif isinstance(node, ast.arg):
        if node.arg.startswith("__"):
            raise Rejected(f"line {line}: argument name '{node.arg}' is not allowed")
    elif isinstance(node, (ast.ClassDef, ast.Global, ast.Nonlocal, ast.AsyncWith, ast.AsyncFor, ast.Await)):
        raise Rejected(f"line {line}: {type(node).__name__} is not allowed in a policy")
    elif isinstance(node, (ast.Try, ast.TryStar)):
        for handler in node.handlers:
            if handler.type is None or _names_base_exception(handler.type):
                # A bare except would swallow the evaluator's own limits (MemoryError, ...).
                raise Rejected(f"line {handler.lineno}: catch a specific exception, not everything")


def _names_base_exception(node: ast.expr) -> bool:
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    return any(n in ("BaseException", "MemoryError", "RecursionError") for n in names)


def _check_module(name: str, line: object) -> None:
    if name.split(".")[0] not in ALLOWED_MODULES or "." in name:
        allowed = ", ".join(sorted(ALLOWED_MODULES))
        raise Rejected(f"line {line}: import of '{name}' is not allowed (allowed: {allowed})")


def _public_proxy(module: types.ModuleType) -> types.ModuleType:
    """A copy of a module's public, non-module attributes (statistics.sys is not reachable)."""
    proxy = types.ModuleType(module.__name__)
    for key, value in vars(module).items():
        if not key.startswith("_") and not isinstance(value, types.ModuleType):
            setattr(proxy, key, value)
    for key, value in _STEPWISE.get(module.__name__, {}).items():
        setattr(proxy, key, value)
    return proxy


# -- iteration a deadline can stop ---------------------------------------------------------
# A deadline (``CpuDeadline`` on the serving thread) acts between bytecodes. A builtin that
# drains an iterator in C (sum, max, sorted, list, any) runs no bytecode until it is done,
# so ``sum(itertools.count())`` or ``sum(range(10**12))`` would hold the serving thread
# for good. The iterators that are endless, or astronomically long from small inputs,
# are served as generators (a bytecode step per item, so the deadline stops them), and a
# range is capped. CPython's own big-integer loops (``10 ** 10 ** 8``, ``math.factorial``)
# already check for signals. C work fanned out over a long list, a C function called per
# item from C (``max(map(sum, [range(10**6)] * 10**4))``, ``lists.sort(key=sum)``), is
# broken up the same way: ``map``, ``filter`` and itertools' function-taking iterators are
# generators, and a C function passed as ``key`` (to anything: sorted, min, max, a list's
# sort, bisect; ``compile_policy`` rewrites every ``key=`` argument), to ``reduce`` or to
# ``cmp_to_key`` is called from bytecode. What stays (docs/sandbox.md): comparing or
# hashing long containers item by item, and memory built in one call.

RANGE_LIMIT = 1_000_000  # items in one range: a C loop over it takes milliseconds


def _range(*args):
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:  # more items than a C size can hold
        n = None
    if n is None or n > RANGE_LIMIT:
        items = "over 2**63" if n is None else f"{n:,}"
        raise ValueError(f"a range of {items} items is longer than a policy may use ({RANGE_LIMIT:,})")
    return r


def _iter(obj, *sentinel):
    """``iter``; its two-argument form (call until the sentinel) as a generator."""
    if not sentinel:
        return iter(obj)
    if len(sentinel) > 1:
        raise TypeError(f"iter expected at most 2 arguments, got {1 + len(sentinel)}")
    if not callable(obj):
        raise TypeError("iter(v, w): v must be callable")
    return _until(obj, sentinel[0])


def _until(fn, sentinel):
    while True:
        value = fn()
        if value == sentinel:
            return
        yield value


def _count(start=0, step=1):
    while True:
        yield start
        start += step


def _cycle(iterable):
    saved = []
    for item in iterable:
        yield item
        saved.append(item)
    while saved:
        for item in saved:
            yield item


def _repeat(obj, times=None):
    if times is None:
        while True:
            yield obj
    for _ in range(times):  # the builtin: ``times`` may be large, the loop is bytecode
        yield obj


def _stepwise(make: Callable) -> Callable:
    """A combinatoric iterator (its length grows as a power of its inputs) as a generator."""
    def stepwise(*args, **kwargs):
        return _steps(make(*args, **kwargs))  # the arguments are checked at the call, as before

    stepwise.__name__ = make.__name__
    return stepwise


def _steps(iterator):
    for item in iterator:
        yield item


def _map(function, iterable, *iterables):
    """``map`` as a generator: each call of ``function`` returns to bytecode."""
    if not callable(function):
        raise TypeError(f"'{type(function).__name__}' object is not callable")
    if not iterables:
        return (function(item) for item in iterable)
    return (function(*items) for items in zip(iterable, *iterables))


def _filter(function, iterable):
    """``filter`` as a generator: each call of ``function`` returns to bytecode."""
    if function is None:
        return (item for item in iterable if item)
    return (item for item in iterable if function(item))


def _from_bytecode(function):
    """A C function (``sum``, ``len``) wrapped so that calling it from C passes through
    bytecode, where a deadline acts; a Python function already does."""
    if function is None or isinstance(function, types.FunctionType) or not callable(function):
        return function  # a bad one fails at the call, with the builtin's own message
    return lambda *args: function(*args)


def _keywords_from_bytecode(mapping):
    """A ``**mapping`` of call arguments with its ``key``, if any, called through bytecode."""
    if isinstance(mapping, dict) and "key" in mapping:
        return {**mapping, "key": _from_bytecode(mapping["key"])}
    return mapping  # anything else fails at the call, with Python's own message


class _KeysThroughBytecode(ast.NodeTransformer):
    """Every ``key=`` argument, and every ``**`` mapping (which may hold one), of every call
    passes through ``_from_bytecode``: a ``key`` is called per item from C by whatever takes
    it (``sorted``, ``min``, ``max``, a list's ``sort``, ``bisect``), and a method cannot be
    swapped for a wrapper in the program's namespace as a builtin can."""

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        for keyword in node.keywords:
            wrapper = {"key": KEY_WRAPPER, None: KEYWORDS_WRAPPER}.get(keyword.arg)
            if wrapper:
                keyword.value = ast.Call(ast.Name(wrapper, ast.Load()), [keyword.value], [])
        return node


KEY_WRAPPER, KEYWORDS_WRAPPER = "__key_from_bytecode__", "__keywords_from_bytecode__"  # names a program cannot use


def _reduce(function, iterable, *initial):
    return functools.reduce(_from_bytecode(function), iterable, *initial)


def _cmp_to_key(function):
    return functools.cmp_to_key(_from_bytecode(function))


_range.__name__, _iter.__name__ = "range", "iter"
_map.__name__, _filter.__name__, _reduce.__name__, _cmp_to_key.__name__ = "map", "filter", "reduce", "cmp_to_key"
_count.__name__, _cycle.__name__, _repeat.__name__ = "count", "cycle", "repeat"

_STEPWISE = {
    "itertools": {
        "count": _count, "cycle": _cycle, "repeat": _repeat,
        **{name: _stepwise(getattr(itertools, name))
           for name in ("product", "permutations", "combinations", "combinations_with_replacement",
                        # these call a function per item in C
                        "starmap", "accumulate", "filterfalse", "takewhile", "dropwhile", "groupby")},
    },
    "functools": {"reduce": _reduce, "cmp_to_key": _cmp_to_key},
}


def _restricted_import_for_one_program() -> Callable:
    """An ``__import__`` serving the allowed modules as proxies of this program's own: one
    program cannot change what ``math`` means to another (or to the trusted baselines it
    falls back to), even if something slipped past ``check``."""
    proxies: dict[str, types.ModuleType] = {}

    def restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name not in ALLOWED_MODULES:
            raise ImportError(f"import of '{name}' is not allowed")
        if name not in proxies:
            proxies[name] = _public_proxy(__import__(name))
        return proxies[name]

    return restricted_import


def safe_builtins() -> dict:
    """A fresh builtins table (and import) for one program."""
    table = {name: getattr(builtins, name) for name in SAFE_BUILTIN_NAMES}
    table.update(range=_range, iter=_iter, map=_map, filter=_filter)
    table[KEY_WRAPPER], table[KEYWORDS_WRAPPER] = _from_bytecode, _keywords_from_bytecode
    table["__import__"] = _restricted_import_for_one_program()
    return table


class Policy:
    """A compiled program: one checked callable per slot it fills.

    Each call's result goes through the slot's ``check_result``, so a policy that
    returns NaN or a string raises PolicyError at the call instead of corrupting the
    caller's state.
    """

    def __init__(self, program_id: str, functions: Mapping[str, Callable], source: str = "",
                 namespace: Mapping[str, object] | None = None):
        self.program_id = program_id
        self.source = source
        self.functions = dict(functions)
        self.namespace = namespace or {}  # the module's globals: where a program keeps state between calls
        for name, fn in self.functions.items():
            setattr(self, name, fn)

    def __contains__(self, slot: str) -> bool:
        return slot in self.functions


def compile_policy(source: str, slots: Iterable[PolicySlot], program_id: str = "") -> Policy:
    """Check, then execute the source in a restricted namespace (runs untrusted code)."""
    slots = list(slots)
    tree = ast.fix_missing_locations(_KeysThroughBytecode().visit(check(source, slots)))
    namespace: dict = {"__builtins__": safe_builtins(), "__name__": "policy"}
    exec(compile_tree(tree, f"<policy {program_id}>"), namespace)
    functions = {}
    for slot in slots:
        fn = namespace.get(slot.name)
        if callable(fn):
            functions[slot.name] = _checked(slot, fn)
    return Policy(program_id, functions, source, namespace)


STATE_GROWTH_LIMIT = 1_000  # items a program may add to its state over one evaluation
STATE_LIMIT = 100_000  # items a deployed program's state may hold (checked every few thousand calls)


def state_items(policy: Policy, limit: int = 1_000_000) -> int:
    """How many items the program's state holds: everything in its module-level containers
    and its functions' default values, counted through nested containers (up to ``limit``).

    State persists between calls. On the serving plane a deployed program is called for as
    long as it stays live, so state that grows with the calls grows that process without
    bound: the evaluator compares this before and after a replay (``STATE_GROWTH_LIMIT``),
    and the hot path caps it (``STATE_LIMIT``).
    """
    roots: list = []
    for name, value in policy.namespace.items():
        if isinstance(value, types.FunctionType):
            roots.extend(value.__defaults__ or ())
            roots.extend((value.__kwdefaults__ or {}).values())
        elif name != "__builtins__":
            roots.append(value)
    seen: set[int] = set()
    count, stack = 0, roots
    while stack and count < limit:
        value = stack.pop()
        if id(value) in seen or not isinstance(value, (list, tuple, dict, set, frozenset, collections.deque)):
            continue
        seen.add(id(value))
        count += 2 * len(value) if isinstance(value, dict) else len(value)
        if count >= limit:
            break
        stack.extend((*value.keys(), *value.values()) if isinstance(value, dict) else value)
    return min(count, limit)


def _checked(slot: PolicySlot, fn: Callable) -> Callable:
    check_result = slot.check_result

    def call(*args):
        return check_result(fn(*args))

    call.__name__ = slot.name
    call.__wrapped__ = fn
    return call


def validate(policy: Policy, slots: Iterable[PolicySlot]) -> None:
    """Run each filled slot's validator on its example inputs (runs untrusted code)."""
    for slot in slots:
        if slot.name in policy:
            slot.validate(policy.functions[slot.name])


def apply_limits(memory_mb: int | None) -> None:
    """Cap this process's address space and file writes; call once in a worker."""
    if memory_mb:
        limit = _vm_bytes() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def cpu_timer(seconds: float | None) -> None:
    """End this process once it has computed for ``seconds`` more CPU time (0 or None: never).

    ``ITIMER_PROF`` counts the process's user and system time, to the microsecond, and at
    zero the kernel sends SIGPROF, whose default action ends the process even inside a
    C loop no Python handler could interrupt. CPU time, not real time: a program's fate
    must not depend on how busy the machine is. Each call replaces the previous timer.
    """
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # a handler inherited from the parent would swallow it
    signal.setitimer(signal.ITIMER_PROF, seconds or 0)


class DeadlinePassed(BaseException):
    """A call computed past its deadline (a BaseException: ``except Exception`` in a policy cannot swallow it)."""


class CpuDeadline:
    """A deadline on the CPU time of the thread running an untrusted call on a serving thread.

    Real time would punish the program for a frozen machine or another thread holding the
    GIL, and a good program would fall back, or be dropped, for nothing. So a real-time
    alarm (SIGALRM, the main thread only: elsewhere calls run unguarded) only looks, at
    ``cpu_s`` and then every ``recheck_s``. It raises ``DeadlinePassed`` once the thread has
    computed for ``cpu_s``, or after ``cap_s`` of real time whatever it computed. Each alarm
    sets the next before it raises, so one swallowed in a finalizer recurs, and no two are
    ever pending at once. An alarm that comes as the call ends is ignored (the call is
    over), and one that comes before it starts (the machine paused right after arming)
    starts its CPU clock again. ``stalled`` tells afterwards whether the call ran past
    ``cpu_s`` in real time without computing for it. The garbage collector waits while a
    call runs: a collection of the host's heap (0.13 s of CPU for two million young lists on
    this project's machines) would otherwise be charged to whichever call happened to start
    it, and a baseline timed out for it. It runs after the call.

    SIGALRM and the real-time timer belong to the host process too (pytest-timeout, an
    application's ``signal.alarm``). The alarm handler passes every alarm that comes outside
    a call to the handler it replaced, and a call puts the host's pending timer back when it
    ends, less the time it took (one due meanwhile fires at once).
    """

    def __init__(self, cpu_s: float = 0.05, cap_s: float = 1.0, recheck_s: float = 0.01):
        self.cpu_s, self.cap_s, self.recheck_s = cpu_s, cap_s, recheck_s
        self.armed = threading.current_thread() is threading.main_thread()
        self._cpu = self._wall = 0.0
        self._host_timer = (0.0, 0.0)
        self._collect = False
        self._caller = None  # the frame whose `with` runs the call

    def __enter__(self) -> CpuDeadline:
        self._cpu, self._wall = time.thread_time(), time.monotonic()
        if self.armed:
            self._collect = gc.isenabled()  # a host that turned collection off keeps it off
            self._host_timer = (0.0, 0.0)
            self._caller = sys._getframe(1)
            try:
                gc.disable()
                # _signal's getsignal: signal's wrapper tries to make an enum of the handler (2 us a call)
                if _signal.getsignal(SIGALRM) is not _on_alarm:  # first call, or the host set its own since
                    _host_handler[0] = signal.signal(SIGALRM, _on_alarm)
                _timing[0] = self
                self._host_timer = signal.setitimer(signal.ITIMER_REAL, self.cpu_s)
            except BaseException:  # Ctrl-C or SIGTERM raised just as the timer was armed: no `with` calls
                self.__exit__(None, None, None)  # __exit__ after a failed __enter__, and the timer left
                raise  # armed killed the process with SIGALRM at its exit (the alarm's default action)
        return self

    def __exit__(self, *exc) -> None:
        if not self.armed:
            return
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _timing[0] = _LATE
            _handle_pending_signals()  # an alarm of ours that came just now is dropped, not passed on
        finally:  # even if another signal's handler raised above: a collector left off would leak
            self._release()  # every cycle, and the host's timer must go on

    def _release(self) -> None:
        """The call is over (our timer already disarmed): the collector and the host's timer, back."""
        _timing[0] = self._caller = None
        if self._collect:
            gc.enable()
        delay, interval = self._host_timer
        if delay > 0:  # less the time the call took; one due meanwhile fires at once
            signal.setitimer(signal.ITIMER_REAL, max(delay - self.elapsed, 1e-6), interval)

    @property
    def computed(self) -> float:
        """CPU seconds the thread has used since the call began."""
        return time.thread_time() - self._cpu

    @property
    def elapsed(self) -> float:
        """Real seconds since the call began."""
        return time.monotonic() - self._wall

    @property
    def stalled(self) -> bool:
        return self.elapsed >= self.cpu_s and self.computed < self.cpu_s


SIGALRM = int(signal.SIGALRM)
_ENTER, _EXIT = CpuDeadline.__enter__.__code__, CpuDeadline.__exit__.__code__
_LATE = object()  # a call just ended: an alarm now is its own, late
_timing: list = [None]  # the call the alarm is for (one at a time: the main thread's), _LATE or None
_host_handler: list = [signal.SIG_DFL]  # the SIGALRM handler _on_alarm replaced


def _handle_pending_signals() -> None:
    """Nothing: calling a Python function makes the interpreter run the signal handlers due."""


def _outside_the_call(frame, depth: int = 4) -> str:
    """"enter" or "exit" when the alarm came in ``CpuDeadline.__enter__`` or ``__exit__`` (or in a
    handler running there), not in the call: raising there would escape the ``with`` before the
    body, or skip the disarming, and the timer would go on firing between calls, into the
    serving loop, until an alarm taken for the host's ended the process."""
    while frame is not None and depth > 0:
        if frame.f_code is _ENTER:
            return "enter"
        if frame.f_code is _EXIT:
            return "exit"
        frame, depth = frame.f_back, depth - 1
    return ""


def _on_the_stack(caller, frame) -> bool:
    """Whether ``caller`` is ``frame`` or one of the frames that called it."""
    while frame is not None:
        if frame is caller:
            return True
        frame = frame.f_back
    return False


def _on_alarm(signum, frame) -> None:
    deadline = _timing[0]
    if deadline is _LATE:
        return
    if deadline is None:  # the host's alarm
        host = _host_handler[0]
        if callable(host):
            host(signum, frame)
        elif host == signal.SIG_DFL:  # its default action: end the process
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGALRM)
        return
    outside = _outside_the_call(frame)
    if outside == "exit":  # the call is over
        return
    if not _on_the_stack(deadline._caller, frame):  # it ended without __exit__: an interrupt (Ctrl-C,
        signal.setitimer(signal.ITIMER_REAL, 0)  # SIGTERM) raised as __exit__ began, before it disarmed
        deadline._release()
        return
    if outside == "enter":  # a pause between arming and the call: its CPU clock starts now
        deadline._cpu = time.thread_time()
        signal.setitimer(signal.ITIMER_REAL, deadline.cpu_s)
        return
    passed = deadline.computed >= deadline.cpu_s or deadline.elapsed >= deadline.cap_s
    signal.setitimer(signal.ITIMER_REAL, deadline.recheck_s)  # the next look; __exit__ cancels it
    if passed:
        raise DeadlinePassed()


def _vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except OSError:
        return 0
