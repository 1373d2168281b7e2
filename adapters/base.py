"""The adapter protocol and the registry that finds adapters by name.

An adapter puts a serving system (or any system with decisions to evolve) behind one
small interface. Offline evolution needs only ``slots``, ``snapshot`` and
``evaluate``; the online controller also uses ``start``/``stop``, ``observe`` and
``deploy``. Third-party packages register adapters in the entry-point group
``autopoiesis.adapters``; ``--adapter`` also takes ``module:Class`` and
``path/to/file.py[:Class]``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import sysconfig
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Mapping

from autopoiesis.metrics import Objective, Observation, Snapshot
from autopoiesis.program import PolicySlot, Program, parse

ENTRY_POINT_GROUP = "autopoiesis.adapters"


def adapter_code(adapter: Any) -> str:
    """A fingerprint of the code an adapter's evaluations depend on: the file of each class
    it is made of (every file of the package, for a class in a package's ``__init__``), the
    user's own modules those files import, followed import by import, and autopoiesis's
    version. The archive reuses an evaluation only under the same fingerprint, so an adapter
    edited since, or a helper module of its own, is scored afresh. Installed packages and
    the standard library are left to their versions (autopoiesis's is in the fingerprint); a
    class defined where no file holds it leaves only the names."""
    from autopoiesis import __version__

    digest = hashlib.sha256(__version__.encode())
    files: dict[Path, str] = {}  # file -> the package its relative imports start from
    for cls in type(adapter).__mro__:
        if cls in (Adapter, object):
            continue
        digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            path = Path(inspect.getfile(cls)).resolve()
        except (TypeError, OSError):  # a built-in class, or one made at run time
            continue
        module = sys.modules.get(cls.__module__)
        package = getattr(module, "__package__", None) or ""
        if path.name == "__init__.py":
            for member in sorted(p for p in path.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                files.setdefault(member, _package_of(member, path.parent, package))
        elif path.is_file():
            files.setdefault(path, package)
    for path in _with_own_imports(files):
        digest.update(str(path.name).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:  # unreadable: its name stands for it
            pass
    return digest.hexdigest()[:16]


def _package_of(member: Path, root: Path, package: str) -> str:
    """The package a file under a package's folder belongs to (for its relative imports)."""
    parts = member.relative_to(root).parent.parts
    return ".".join((package, *parts)) if package else ""


def _with_own_imports(files: dict[Path, str]) -> dict[Path, str]:
    """``files`` and every module of the user's own that they import, transitively: read from
    each file's import statements (a function's too), found on ``sys.path`` without importing
    anything; installed packages, the standard library and autopoiesis itself are not followed."""
    found = dict(files)
    queue = [(path, package) for path, package in files.items() if path.suffix == ".py"]
    while queue:
        path, package = queue.pop()
        for name in _imported_names(path, package):
            located = _own_module_file(name)
            if located is not None and located[0] not in found:
                found[located[0]] = located[1]
                queue.append(located)
    return found


def _imported_names(path: Path, package: str) -> list[str]:
    try:
        tree = parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if not package:
                    continue
                try:
                    base = importlib.util.resolve_name("." * node.level + base, package)
                except ImportError:  # beyond the top-level package
                    continue
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]  # a submodule
    return names


def _own_module_file(name: str) -> tuple[Path, str] | None:
    """The source file of module ``name`` and its package, if it is the user's own code."""
    parts, search, spec = name.split("."), None, None
    if not name or parts[0] == "autopoiesis":  # its version stands for it
        return None
    for depth in range(1, len(parts) + 1):
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), search)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.origin or not _is_own(Path(spec.origin)):
            return None
        search = spec.submodule_search_locations
        if search is None and depth < len(parts):  # ``from module import function``
            return None
    origin = Path(spec.origin).resolve()
    return origin, name if spec.submodule_search_locations is not None else name.rpartition(".")[0]


def _installed_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    roots = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(roots)


def _is_own(origin: Path) -> bool:
    if origin.suffix != ".py":  # compiled extensions, namespace packages
        return False
    origin = origin.resolve()
    return not any(origin.is_relative_to(root) for root in _installed_roots())


class AdapterError(Exception):
    """An adapter cannot be found, loaded or used; the message is for the user."""


class Unimplemented(AdapterError, NotImplementedError):
    """An adapter lacks a method evolution needs: a user's mistake, said as one."""


class Adapter:
    """Base class for adapters. Subclasses set ``name`` and implement the abstract parts."""

    name: str = "adapter"
    #: metric -> direction for the objectives this adapter reports; the first is the default.
    objectives: tuple[Objective, ...] = ()
    #: every metric ``evaluate`` reports, where known before anything runs: an ``--objective``
    #: outside it is refused at once instead of after the seeds are scored (empty: not checked)
    metrics: tuple[str, ...] = ()
    #: metrics shown in result tables (default: the objectives')
    headline: tuple[str, ...] = ()
    #: serve each deployed (untrusted) program from a decision process of its own
    #: (``autopoiesis.decision_process``), so no call of it can hold or grow the serving
    #: process. It costs a process round trip per decision: right for a live system that
    #: decides per request, not for a simulator deciding 10^5 times a second. ``deploy``
    #: passes it to ``hot_path``; the controller sets it from ``--isolate/--no-isolate``.
    isolate_policies: bool = False

    # -- what evolves --------------------------------------------------------------
    def slots(self) -> list[PolicySlot]:
        raise self._unimplemented("slots()")

    def baselines(self) -> dict[str, Program]:
        """Human-designed seed programs, each filling every slot.

        One slot: its baselines. Several: ``default`` (every slot's first baseline),
        then ``slot:name`` for each other baseline of a slot with the others at their
        first. Functions are always in slot order, so one combination is one program.
        """
        slots = [slot for slot in self.slots() if slot.baselines]
        if len(slots) == 1:
            return {label: Program(source.strip() + "\n", name=label) for label, source in slots[0].baselines.items()}

        def combine(choice: dict[str, str]) -> str:
            return "\n\n\n".join(choice[slot.name].strip() for slot in slots) + "\n"

        first = {slot.name: next(iter(slot.baselines.values())) for slot in slots}
        out = {"default": Program(combine(first), name="default")}
        for slot in slots:
            for label, source in list(slot.baselines.items())[1:]:
                name = f"{slot.name}:{label}"
                out[name] = Program(combine({**first, slot.name: source}), name=name)
        return out

    # -- how it is scored ----------------------------------------------------------
    def snapshot(self, seed: int) -> Snapshot:
        """A deterministic workload to score programs on (offline twin input)."""
        raise self._unimplemented("snapshot(seed)")

    def evaluate(self, policy: Any, snapshot: Snapshot) -> Mapping[str, float]:
        """Run ``policy`` (a compiled program: one attribute per slot) on a snapshot.

        Runs inside a sandboxed worker process; must be deterministic for a given
        policy and snapshot. Returns finite metrics keyed by name.
        """
        raise self._unimplemented("evaluate(policy, snapshot)")

    def check_live(self, needs: tuple[str, ...] = ("start", "now", "observe", "deploy", "window_snapshot")) -> None:
        """Refuse a live run at once, naming the live methods this adapter lacks, rather than
        after windows of serving, when the first evolution asks for a snapshot."""
        missing = [name for name in needs if getattr(type(self), name, None) is getattr(Adapter, name)]
        if not missing:
            return
        if len(missing) == len(needs):
            raise AdapterError(f"adapter '{self.name}' has no live system (offline only)")
        signatures = {"start": "start(seed)", "now": "now()", "observe": "observe(until)",
                      "deploy": "deploy(program, fallbacks)", "window_snapshot": "window_snapshot(since, until, incumbent)"}
        raise Unimplemented(f"adapter '{self.name}' ({type(self).__name__}) does not implement "
                            f"{', '.join(signatures[m] for m in missing)}; a live run needs "
                            f"{', '.join(signatures[m] for m in needs)} (docs/adapters.md)")

    def _unimplemented(self, method: str) -> Unimplemented:
        return Unimplemented(f"adapter '{self.name}' ({type(self).__name__}) does not implement {method}; "
                             "evolution needs slots(), snapshot(seed) and evaluate(policy, snapshot) (docs/adapters.md)")

    def summarize(self, snapshot: Snapshot) -> str:
        """A few lines on what the snapshot's workload looks like (LLM operators quote it)."""
        return ""

    # -- the live system (online controller) ---------------------------------------
    #: the live-window metric the Guard compares (default: the first objective)
    guard_metric: str = ""
    #: a metric that counts disruptive actions on the twin (re-plans, reloads): a champion that
    #: takes more of them than the incumbent needs ``replan_margin``, not just ``margin``
    disruption_metric: str = ""
    #: True when the live clock is the wall clock: the live system serves between (or inside)
    #: ``observe`` calls whatever the controller does, so an evolution in flight cannot hold it
    #: back and the serving loop never asks it to wait for one (a simulated clock does wait)
    wall_clock: bool = False

    def start(self, seed: int = 1000) -> None:
        """Start or attach to the live system (``seed``: the workload, where the adapter replays one)."""
        raise AdapterError(f"adapter '{self.name}' has no live system (offline only)")

    def stop(self) -> None:
        """Release what ``start`` acquired."""

    def now(self) -> float:
        """The live system's clock (simulated or wall-clock seconds)."""
        raise AdapterError(f"adapter '{self.name}' has no live system (offline only)")

    def observe(self, until: float) -> Observation:
        """Serve (or wait) until ``until`` on the live clock; what finished meanwhile."""
        raise AdapterError(f"adapter '{self.name}' has no live system to observe (offline only)")

    def deploy(self, program: Program, fallbacks: list[Program] = ()) -> None:
        """Hot-swap ``program`` in atomically; failing calls fall back to ``fallbacks`` in order."""
        raise AdapterError(f"adapter '{self.name}' has no live system to deploy to (offline only)")

    def window_snapshot(self, since: float, until: float, incumbent: Program) -> Snapshot:
        """The live interval [since, until] as a snapshot the twin replays (``evaluate`` scores it)."""
        raise AdapterError(f"adapter '{self.name}' has no live windows to replay (offline only)")

    # Optional: ``window_metrics(since, until, incumbent) -> dict`` adds numbers to each closed
    # live window, on the serving thread (the vLLM adapter reports its twin's prediction error
    # and refits it this way). ``window_check(since, until, incumbent) -> (Snapshot, names) | None``
    # is for numbers that take a replay: the controller scores the incumbent on that snapshot
    # on the evolution plane and adds the metrics ``names`` to the window when they are in (the
    # engine adapter's twin error). A wall-clock adapter serves nothing while window_metrics runs, unless it
    # runs its live loop through its own waits (the vLLM adapter's wait for its twin's replays).

    def describe(self) -> str:
        doc = inspect.getdoc(type(self)) or ""
        return doc.splitlines()[0] if doc else ""


def registered() -> dict[str, EntryPoint]:
    """Adapters installed in the entry-point group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_adapter(spec: str, options: Mapping[str, Any] | None = None) -> Adapter:
    """Instantiate an adapter from a registered name, ``module:Class`` or ``file.py[:Class]``."""
    target = _resolve(spec)
    if isinstance(target, Adapter):
        return target
    if not (inspect.isclass(target) and issubclass(target, Adapter)):
        raise AdapterError(f"'{spec}' is not an Adapter subclass")
    options = dict(options or {})
    unknown = _unknown_options(target, options)
    if unknown:
        raise AdapterError(f"cannot create adapter '{spec}': it takes no option {', '.join(map(repr, unknown))} "
                           f"(its options: {', '.join(option_names(target)) or 'none'})")
    try:
        adapter = target(**options)
    except AdapterError:
        raise
    except (TypeError, ValueError) as e:  # mostly an option's value
        raise AdapterError(f"cannot create adapter '{spec}': {e}") from None
    except Exception as e:  # a bug in the adapter's own constructor
        raise AdapterError(f"cannot create adapter '{spec}': {type(e).__name__}: {e} "
                           "(AUTOPOIESIS_DEBUG=1 shows the traceback)") from e
    checked_slots(adapter)
    return adapter


def checked_slots(adapter: Adapter) -> list[PolicySlot]:
    """The adapter's ``slots()``, checked: one or more ``PolicySlot``s with distinct names.

    An adapter under development that returned something else failed later, far from its
    mistake ("TypeError: 'int' object is not iterable")."""
    name = getattr(adapter, "name", "") or type(adapter).__name__
    try:
        slots = list(adapter.slots())
    except AdapterError:
        raise
    except Exception as e:
        raise AdapterError(f"adapter {name}: slots() failed: {type(e).__name__}: {e} "
                           "(AUTOPOIESIS_DEBUG=1 shows the traceback)") from e
    wrong = [slot for slot in slots if not isinstance(slot, PolicySlot)]
    if not slots or wrong:
        raise AdapterError(f"adapter {name}: slots() must return PolicySlot objects, "
                           f"got {'nothing' if not slots else repr(wrong[0])[:80]}")
    names = [slot.name for slot in slots]
    if len(set(names)) < len(names):
        raise AdapterError(f"adapter {name}: two slots are named {next(n for n in names if names.count(n) > 1)!r}")
    return slots


def option_names(cls: type) -> list[str]:
    """The keyword arguments ``cls`` accepts, or [] when it takes ``**kwargs``."""
    params = inspect.signature(cls).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _unknown_options(cls: type, options: Mapping[str, Any]) -> list[str]:
    """Options ``cls`` has no parameter for: a flag meant for another adapter (``--trace`` on
    the simulator) gets a message naming what it does take, not Python's TypeError."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    return sorted(set(options) - set(option_names(cls)))


def canonical_spec(spec: str) -> str:
    """The spec with a file path made absolute, so a resumed run finds the same adapter."""
    path, _, attr = spec.partition(":")
    if path.endswith(".py") and Path(path).exists():
        return str(Path(path).resolve()) + (f":{attr}" if attr else "")
    return spec


def _resolve(spec: str) -> Any:
    found = registered()
    if spec in found:
        try:
            return found[spec].load()
        except Exception as e:  # a broken third-party package must not crash the CLI
            raise AdapterError(f"adapter '{spec}' is registered but fails to load: {type(e).__name__}: {e}") from None
    path, _, attr = spec.partition(":")
    if path.endswith(".py"):
        return _from_file(Path(path), attr)
    if attr:
        try:
            module = importlib.import_module(path)
        except ImportError as e:
            raise AdapterError(f"cannot import adapter module '{path}': {e}") from None
        if not hasattr(module, attr):
            raise AdapterError(f"module '{path}' has no attribute '{attr}'")
        return getattr(module, attr)
    names = ", ".join(sorted(found)) or "none installed"
    raise AdapterError(
        f"unknown adapter '{spec}' (registered: {names}; or give module:Class or path/to/file.py)"
    )


def _from_file(path: Path, attr: str) -> Any:
    if not path.is_file():
        raise AdapterError(f"adapter file not found: {path}")
    module_name = f"autopoiesis_user_{path.stem}"
    folder = str(path.resolve().parent)
    if folder not in sys.path:  # as ``python path/to/file.py`` does: its own modules import
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise AdapterError(f"cannot load adapter file {path}: {type(e).__name__}: {e}") from None
    if attr:
        if not hasattr(module, attr):
            raise AdapterError(f"{path} has no attribute '{attr}'")
        return getattr(module, attr)
    classes = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Adapter) and obj is not Adapter and obj.__module__ == module_name
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise AdapterError(f"{path} must define exactly one Adapter subclass, or name one as {path}:Class (found: {found})")
    return classes[0]
