"""The archive: every run, program, birth, evaluation, population and result, in SQLite.

WAL mode and one small transaction per evaluation: a run killed at any instant (even
SIGKILL) keeps every evaluation that finished, and ``Evolution`` resumes from the
last completed generation, finding the rest in the evaluation cache.

Evaluations are keyed by (program id, snapshot key) and shared across runs: the same
program on the same snapshot is never scored twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .evaluate import Outcome
from .metrics import Snapshot
from .program import Program

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, adapter TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS programs (id TEXT PRIMARY KEY, source TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS births (
    run TEXT NOT NULL, program TEXT NOT NULL, generation INTEGER NOT NULL,
    operator TEXT NOT NULL, parents TEXT NOT NULL, name TEXT,
    status TEXT NOT NULL, error TEXT, PRIMARY KEY (run, program));
CREATE TABLE IF NOT EXISTS evaluations (
    program TEXT NOT NULL, snapshot TEXT NOT NULL, metrics TEXT, error TEXT,
    seconds REAL NOT NULL, run TEXT, created REAL NOT NULL, code TEXT, PRIMARY KEY (program, snapshot));
CREATE TABLE IF NOT EXISTS populations (
    run TEXT NOT NULL, generation INTEGER NOT NULL, island INTEGER NOT NULL,
    position INTEGER NOT NULL, program TEXT NOT NULL,
    PRIMARY KEY (run, generation, island, position));
CREATE TABLE IF NOT EXISTS generations (
    run TEXT NOT NULL, generation INTEGER NOT NULL, stats TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (run, generation));
CREATE TABLE IF NOT EXISTS llm_calls (
    run TEXT NOT NULL, seq INTEGER NOT NULL, prompt_hash TEXT NOT NULL, occurrence INTEGER NOT NULL,
    model TEXT NOT NULL, system TEXT NOT NULL, prompt TEXT NOT NULL, response TEXT, error TEXT,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, latency_s REAL NOT NULL,
    usd REAL NOT NULL, outcome TEXT, created REAL NOT NULL, PRIMARY KEY (run, seq));
CREATE TABLE IF NOT EXISTS windows (
    run TEXT NOT NULL, idx INTEGER NOT NULL, start REAL NOT NULL, end REAL NOT NULL, policy TEXT NOT NULL,
    metrics TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (run, idx));
CREATE TABLE IF NOT EXISTS deployments (
    run TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL, program TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (run, seq));
CREATE TABLE IF NOT EXISTS snapshots (
    key TEXT PRIMARY KEY, adapter TEXT NOT NULL, label TEXT NOT NULL, params TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    run TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, program TEXT NOT NULL,
    train TEXT, held_out TEXT, error TEXT, PRIMARY KEY (run, kind, name));
"""


class ArchiveError(Exception):
    """The archive file is missing, corrupt or not ours; the message is for the user."""


class Archive:
    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a file where the folder should be, no permission
                blocking = next((p for p in Path(self.path).parents if p.exists() and not p.is_dir()), None)
                why = f"{blocking} is a file, not a folder" if blocking else (e.strerror or str(e))
                raise ArchiveError(f"cannot make the folder for {self.path}: {why}") from None
        try:
            # one connection, shared by threads (LLM calls may run concurrently); writes are serialized
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            self.lock = threading.RLock()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise ArchiveError(f"{self.path} has archive schema {row[0]}, this version reads {SCHEMA_VERSION}")
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(evaluations)")}
            if "code" not in columns:  # an archive from before evaluations recorded the adapter's code
                self.db.execute("ALTER TABLE evaluations ADD COLUMN code TEXT")
        except sqlite3.DatabaseError as e:
            raise ArchiveError(f"{self.path} is not a usable archive ({e})") from None

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, rows: Iterable[tuple] | tuple) -> None:
        with self.lock:
            self._write_locked(sql, rows)

    def _write_locked(self, sql: str, rows: Iterable[tuple] | tuple) -> None:
        if isinstance(rows, tuple):
            self.db.execute(sql, rows)
        else:
            self.db.execute("BEGIN")
            try:
                self.db.executemany(sql, rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # -- runs ------------------------------------------------------------------------
    def create_run(self, run_id: str, adapter: str, config: dict[str, Any]) -> None:
        now = time.time()
        self._write("INSERT INTO runs VALUES (?, ?, ?, 'running', ?, ?)", (run_id, adapter, json.dumps(config), now, now))

    def run(self, run_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT id, adapter, config, status, created, updated FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:  # the user's runs, not an online run's evolutions
            known = ", ".join([r["id"] for r in reversed(self.runs()) if not r["parent"]][:5]) or "none"
            raise ArchiveError(f"no run '{run_id}' in {self.path} (latest: {known})")
        return {"id": row[0], "adapter": row[1], "config": json.loads(row[2]), "status": row[3], "created": row[4], "updated": row[5]}

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first; ``parent`` names the online run an evolution ran for (else None)."""
        rows = self.db.execute("SELECT id, adapter, status, created, config FROM runs ORDER BY created").fetchall()
        return [{"id": r[0], "adapter": r[1], "status": r[2], "created": r[3], "parent": json.loads(r[4]).get("parent")}
                for r in rows]

    def set_status(self, run_id: str, status: str) -> None:
        self._write("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    # -- programs and births ---------------------------------------------------------
    def add_births(self, run_id: str, entries: list[tuple[Program, str, str | None]]) -> None:
        """Record programs born in a run: (program, status, error)."""
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN")
            try:
                for program, status, error in entries:
                    self.db.execute("INSERT OR IGNORE INTO programs VALUES (?, ?, ?)", (program.id, program.source, now))
                    self.db.execute(
                        "INSERT OR REPLACE INTO births VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, program.id, program.generation, program.operator,
                         json.dumps(list(program.parents)), program.name, status, error),
                    )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def set_birth_status(self, run_id: str, updates: list[tuple[str, str, str | None]]) -> None:
        self._write("UPDATE births SET status=?, error=? WHERE run=? AND program=?",
                    [(status, error, run_id, pid) for pid, status, error in updates])

    def program_ids(self, prefix: str) -> list[str]:
        """The ids of the archived programs that start with ``prefix`` (tables show 8 characters)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.db.execute("SELECT id FROM programs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",))
        return [r[0] for r in rows]

    def program(self, program_id: str, run_id: str | None = None) -> Program:
        row = self.db.execute("SELECT source FROM programs WHERE id=?", (program_id,)).fetchone()
        if row is None:
            raise ArchiveError(f"program {program_id} is not in the archive")
        program = Program(row[0])
        if run_id is not None:
            birth = self.db.execute(
                "SELECT generation, operator, parents, name FROM births WHERE run=? AND program=?", (run_id, program_id)
            ).fetchone()
            if birth:
                program.generation, program.operator = birth[0], birth[1]
                program.parents, program.name = tuple(json.loads(birth[2])), birth[3]
        return program

    def add_program(self, program: Program) -> None:
        self._write("INSERT OR IGNORE INTO programs VALUES (?, ?, ?)", (program.id, program.source, time.time()))

    # -- online runs: live windows and deployments -----------------------------------------
    def add_window(self, run_id: str, index: int, start: float, end: float, policy: str,
                   metrics: dict[str, float], detail: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO windows VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, index, start, end, policy, json.dumps(metrics), json.dumps(detail)))

    def add_window_metrics(self, run_id: str, index: int, metrics: dict[str, float]) -> None:
        """Numbers that came after the window closed (a check the evolution plane ran on it)."""
        with self.lock:
            row = self.db.execute("SELECT metrics FROM windows WHERE run=? AND idx=?", (run_id, index)).fetchone()
            if row is not None:
                self._write_locked("UPDATE windows SET metrics=? WHERE run=? AND idx=?",
                                   (json.dumps({**json.loads(row[0]), **metrics}), run_id, index))

    def windows(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT idx, start, end, policy, metrics, detail FROM windows WHERE run=? ORDER BY idx",
                               (run_id,)).fetchall()
        return [{"index": r[0], "start": r[1], "end": r[2], "policy": r[3], "metrics": json.loads(r[4]),
                 **json.loads(r[5])} for r in rows]

    def add_deployment(self, run_id: str, time_s: float, kind: str, program_id: str, reason: str,
                       detail: dict[str, Any]) -> None:
        with self.lock:
            seq = self.db.execute("SELECT COUNT(*) FROM deployments WHERE run=?", (run_id,)).fetchone()[0]
            self._write("INSERT INTO deployments VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (run_id, seq, time_s, kind, program_id, reason, json.dumps(detail)))

    def deployments(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT time, kind, program, reason, detail FROM deployments WHERE run=? ORDER BY seq",
                               (run_id,)).fetchall()
        return [{**json.loads(r[4]), "time": r[0], "kind": r[1], "program": r[2], "reason": r[3]} for r in rows]

    def confirmed_winners(self, adapter: str, exclude: str | None = None) -> list[dict[str, Any]]:
        """What online runs of ``adapter`` evolved, deployed and kept past the guard, newest first:
        ``{"run", "program", "conditions", "time"}``. A later run seeds its evolutions with them.

        A winner is a deployment of an evolved program (it carries the conditions it was bred
        for) that the guard then confirmed; one rolled back, forced by the caller, or still
        under watch when its run ended is not."""
        rows = self.db.execute(
            "SELECT d.run, d.time, d.kind, d.program, d.detail FROM deployments d JOIN runs r ON d.run = r.id "
            "WHERE r.adapter=? AND r.id IS NOT ? ORDER BY r.created, d.seq", (adapter, exclude)).fetchall()
        winners: list[dict[str, Any]] = []
        watched: dict[str, Any] | None = None
        for run, time_s, kind, program, detail in rows:
            if kind == "deploy":
                conditions = json.loads(detail).get("conditions") or {}
                watched = {"run": run, "program": program, "conditions": conditions, "time": time_s} \
                    if conditions else None
            elif kind == "confirm" and watched and watched["run"] == run and watched["program"] == program:
                winners.append(watched)
                watched = None
            elif kind == "rollback":
                watched = None
        return winners[::-1]

    def births(self, run_id: str, before_generation: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT program, generation, operator, parents, name, status, error FROM births WHERE run=?"
        args: tuple = (run_id,)
        if before_generation is not None:
            sql += " AND generation < ?"
            args += (before_generation,)
        rows = self.db.execute(sql + " ORDER BY generation, rowid", args).fetchall()
        keys = ("program", "generation", "operator", "parents", "name", "status", "error")
        return [dict(zip(keys, r), parents=json.loads(r[3])) for r in rows]

    # -- snapshots ---------------------------------------------------------------------
    def save_snapshots(self, snapshots: Iterable[Snapshot]) -> int:
        """Keep the snapshots a run scores on, so that resuming it scores on the same ones.

        An adapter may measure the machine to make a snapshot (the engine times its
        model), and a remade snapshot would then differ. Params that JSON cannot hold
        are not kept; such a run's snapshots are remade on resume. Returns how many were kept.
        """
        rows = []
        for snapshot in snapshots:
            try:
                rows.append((snapshot.key, snapshot.adapter, snapshot.label, json.dumps(dict(snapshot.params))))
            except (TypeError, ValueError):
                continue
        if rows:
            self._write("INSERT OR IGNORE INTO snapshots VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def snapshots(self, keys: Iterable[str]) -> list[Snapshot] | None:
        """The kept snapshots with these keys, in order; None unless every one was kept."""
        out = []
        for key in keys:
            row = self.db.execute("SELECT adapter, label, params FROM snapshots WHERE key=?", (key,)).fetchone()
            if row is None:
                return None
            out.append(Snapshot(row[0], json.loads(row[2]), label=row[1]))
        return out

    # -- evaluations (the cache) ---------------------------------------------------------
    def get(self, key: tuple[str, str]) -> Outcome | None:
        found = self.evaluation(key)
        return found[0] if found else None

    def evaluation(self, key: tuple[str, str]) -> tuple[Outcome, str | None, str | None] | None:
        """A recorded evaluation, with the run and the adapter code (``adapter_code``) that made it."""
        row = self.db.execute(
            "SELECT metrics, error, seconds, run, code FROM evaluations WHERE program=? AND snapshot=?", key
        ).fetchone()
        if row is None:
            return None
        outcome = Outcome(key[0], key[1], json.loads(row[0]) if row[0] else None, row[1], row[2], cached=True)
        return outcome, row[3], row[4]

    def put(self, outcome: Outcome, run_id: str | None = None, code: str | None = None) -> None:
        """Record an outcome, with the run and the adapter code (``adapter_code``) that made it.
        A failure, or a result of other adapter code, already recorded is replaced: the cache
        (``RunCache``) runs a pair again only then."""
        self._write(
            "INSERT INTO evaluations (program, snapshot, metrics, error, seconds, run, created, code) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (program, snapshot) DO UPDATE SET "
            "metrics=excluded.metrics, error=excluded.error, seconds=excluded.seconds, run=excluded.run, "
            "created=excluded.created, code=excluded.code "
            "WHERE evaluations.metrics IS NULL OR evaluations.code IS NOT excluded.code",
            (outcome.program_id, outcome.snapshot_key,
             json.dumps(outcome.metrics) if outcome.metrics is not None else None,
             outcome.error, outcome.seconds, run_id, time.time(), code),
        )

    def cache_for(self, run_id: str, code: str | None = None) -> "RunCache":
        return RunCache(self, run_id, code)

    def evaluation_count(self, run_id: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM evaluations WHERE run=?", (run_id,)).fetchone()[0]

    # -- populations and statistics ----------------------------------------------------
    def save_generation(self, run_id: str, generation: int, islands: list[list[str]], stats: dict[str, Any]) -> None:
        """Atomically record a completed generation: its survivors and statistics."""
        with self.lock:
            self.db.execute("BEGIN")
            try:
                self.db.execute("DELETE FROM populations WHERE run=? AND generation=?", (run_id, generation))
                for island, ids in enumerate(islands):
                    self.db.executemany(
                        "INSERT INTO populations VALUES (?, ?, ?, ?, ?)",
                        [(run_id, generation, island, pos, pid) for pos, pid in enumerate(ids)],
                    )
                self.db.execute(
                    "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)",
                    (run_id, generation, json.dumps(stats), time.time()),
                )
                self.db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def last_generation(self, run_id: str) -> int | None:
        return self.db.execute("SELECT MAX(generation) FROM generations WHERE run=?", (run_id,)).fetchone()[0]

    def population(self, run_id: str, generation: int) -> list[list[str]]:
        rows = self.db.execute(
            "SELECT island, program FROM populations WHERE run=? AND generation=? ORDER BY island, position",
            (run_id, generation),
        ).fetchall()
        islands: dict[int, list[str]] = {}
        for island, pid in rows:
            islands.setdefault(island, []).append(pid)
        return [islands[k] for k in sorted(islands)]

    def generation_stats(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT generation, stats FROM generations WHERE run=? ORDER BY generation", (run_id,)
        ).fetchall()
        return [dict(json.loads(s), generation=g) for g, s in rows]

    # -- results --------------------------------------------------------------------------
    def save_result(self, run_id: str, kind: str, name: str, program_id: str,
                    train: dict | None, held_out: dict | None, error: str | None = None) -> None:
        self._write(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, kind, name, program_id, json.dumps(train), json.dumps(held_out), error),
        )

    def results(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT kind, name, program, train, held_out, error FROM results WHERE run=? ORDER BY kind DESC, name",
            (run_id,),
        ).fetchall()
        return [
            {"kind": r[0], "name": r[1], "program": r[2], "train": json.loads(r[3]) if r[3] else None,
             "held_out": json.loads(r[4]) if r[4] else None, "error": r[5]}
            for r in rows
        ]


# -- LLM calls (ledger, record and replay) ---------------------------------------------
def _llm_row_keys() -> tuple[str, ...]:
    return ("run", "seq", "prompt_hash", "occurrence", "model", "system", "prompt", "response", "error",
            "prompt_tokens", "completion_tokens", "latency_s", "usd", "outcome", "created")


def record_llm_call(archive: "Archive", row: dict) -> None:
    keys = _llm_row_keys()
    archive._write(f"INSERT OR REPLACE INTO llm_calls VALUES ({', '.join('?' * len(keys))})",
                   tuple(row.get(k) for k in keys))


def llm_calls(archive: "Archive", run_id: str) -> list[dict]:
    keys = _llm_row_keys()
    rows = archive.db.execute(f"SELECT {', '.join(keys)} FROM llm_calls WHERE run=? ORDER BY seq", (run_id,)).fetchall()
    return [dict(zip(keys, r)) for r in rows]


def set_llm_outcome(archive: "Archive", run_id: str, seq: int, outcome: str) -> None:
    archive._write("UPDATE llm_calls SET outcome=? WHERE run=? AND seq=?", (outcome, run_id, seq))


class RunCache:
    """The Evaluator's cache, backed by the archive and tagging new rows with the run and the
    adapter's code (``adapters.base.adapter_code``).

    A result is reused only if the adapter's code has not changed since it was recorded: an
    adapter's author who fixed ``evaluate`` (or upgraded autopoiesis) gets fresh scores, not
    the old ones. Another run's failure is not reused either: most often it was the
    adapter's own mistake, perhaps fixed since in code the fingerprint does not cover (a
    helper module), and a failure costs little to find again. This run's own failures are
    (a resumed run repeats nothing), and every success of the same code is."""

    def __init__(self, archive: Archive, run_id: str, code: str | None = None):
        self.archive, self.run_id, self.code = archive, run_id, code

    def get(self, key: tuple[str, str]) -> Outcome | None:
        found = self.archive.evaluation(key)
        if found is None:
            return None
        hit, run, code = found
        if code != self.code or (hit.metrics is None and run != self.run_id):
            return None
        return hit

    def put(self, outcome: Outcome) -> None:
        self.archive.put(outcome, self.run_id, self.code)
