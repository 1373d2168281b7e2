"""``--policy FILE|RUN|PROGRAM``: a file of policy functions, what a run ended with, or an
archived program, as one whole program checked to load before anything starts."""

from __future__ import annotations

from pathlib import Path

from autopoiesis.archive import Archive, ArchiveError
from autopoiesis.program import Program, function_source

from .common import ARCHIVE_NAME, UserError, open_archive


def policy_program(spec: str, adapter, archive: Archive | None) -> Program:
    """``--policy FILE|RUN`` as a whole program for ``adapter``, checked to load: a policy
    file (the slots it leaves out keep the first baselines'), or what a run in ``archive`` ended with."""
    if Path(spec).is_file():
        program = _policy_file(spec, adapter.slots(), next(iter(adapter.baselines().values())))
    else:
        program = run_program(spec, archive)
    _check_loads(program, adapter, spec)
    return program


def read_policy(path: str, slots) -> str:
    """A policy file's text; one that defines none of the slots is a mistake (the wrong file)."""
    try:
        source = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read policy file {path}: {getattr(e, 'strerror', None) or e}") from None
    if defined_slots(source, slots) == set():
        raise UserError(f"policy file {path} defines none of the slots "
                        f"({', '.join(slot.name for slot in slots)}): it needs a top-level `def SLOT(...)`")
    return source


def defined_slots(source: str, slots) -> set[str] | None:
    """The slots ``source`` defines at its top level (None when it does not parse: the sandbox says why)."""
    try:
        return {slot.name for slot in slots if function_source(source, slot.name)}
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return None


def _policy_file(path: str, slots, base: Program) -> Program:
    """A file of policy functions as a whole program: the slots it leaves out keep ``base``'s."""
    source = read_policy(path, slots)
    defined = defined_slots(source, slots) or {slot.name for slot in slots}
    for slot in slots:
        found = None if slot.name in defined else function_source(base.source, slot.name)
        if found:
            source += "\n\n" + "\n".join(base.source.splitlines()[found[1] - 1:found[2]]) + "\n"
    return Program(source, name=Path(path).stem)


def archive_with_runs(spec: str, runs_dir: str) -> Archive:
    """The archive a ``--policy RUN`` is looked up in (``spec`` is no file)."""
    if not (Path(runs_dir) / ARCHIVE_NAME).exists():
        raise UserError(f"--policy {spec}: no such file, and no archive in {runs_dir} to find a run in")
    return open_archive(runs_dir, create=False)


def run_program(spec: str, archive: Archive) -> Program:
    """What run ``spec`` ended with: an offline run's champion (an unfinished one's latest
    generation's best), or the program an online run served last; or the archived program
    whose id starts with ``spec`` (the 8 characters the report's tables show)."""
    try:
        run = archive.run(spec)
    except ArchiveError:
        found = archive.program_ids(spec) if len(spec) >= 6 else []
        if len(found) == 1:
            return archive.program(found[0])
        if found:
            raise UserError(f"--policy {spec}: more than one archived program id starts so; give more of it") from None
        raise UserError(f"--policy {spec}: no such file, and no run of that id or a program id in {archive.path}") from None
    if run["config"].get("mode") == "online":
        windows = archive.windows(spec)
        pid = windows[-1]["policy"] if windows else None
    else:
        champion = next((r for r in archive.results(spec) if r["kind"] == "champion"), None)
        stats = archive.generation_stats(spec)
        pid = champion["program"] if champion else (stats[-1].get("champion") if stats else None)
    if pid is None:
        raise UserError(f"--policy {spec}: that run has no program to start from yet")
    return archive.program(pid)


def _check_loads(program: Program, adapter, spec: str) -> None:
    """Compile ``program`` as deploying it would first: a mistake is said before the live system starts."""
    from autopoiesis import sandbox

    try:
        sandbox.compile_policy(program.source, adapter.slots(), program.id)
    except sandbox.Rejected as e:
        raise UserError(f"--policy {spec} is rejected for adapter {adapter.name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - its module-level code failed
        raise UserError(f"--policy {spec} fails to load: {type(e).__name__}: {e}") from None
