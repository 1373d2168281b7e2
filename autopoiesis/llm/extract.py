"""Turn an LLM's reply into a child program, or a reason why not.

Replies come as SEARCH/REPLACE diff blocks against the parent, as fenced code (one or
several blocks, with prose around), or as bare code. A block that defines only some
of the parent's functions replaces just those (new helpers are added); a block that
defines them all is a full rewrite.
"""

from __future__ import annotations

import ast
import re
from typing import Iterable

from ..program import parse, replace_function


class ExtractionError(Exception):
    """No usable program in the reply; the message says why."""


DIFF = re.compile(r"<{5,9} ?SEARCH[^\n]*\n(.*?)\n?={5,9}[^\n]*\n(.*?)\n?>{5,9} ?REPLACE", re.S)
FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)


def extract(reply: str | None, parent: str, slot_names: Iterable[str]) -> tuple[str, str]:
    """(child source, how it was made: 'diff' | 'rewrite' | 'partial')."""
    if reply is None or not reply.strip():
        raise ExtractionError("empty response")
    slot_names = list(slot_names)
    diffs = DIFF.findall(reply)
    if diffs:
        return apply_diffs(parent, diffs), "diff"
    blocks = [body for lang, body in FENCE.findall(reply) if lang.lower() in ("", "python", "py", "python3")]
    if not blocks and _defines_any(reply, slot_names):
        blocks = [reply]
    candidates = [b for b in blocks if _defines_any(b, slot_names)]
    if not candidates:
        if blocks:
            raise ExtractionError(f"no code block defines any of {', '.join(slot_names)}")
        raise ExtractionError("no code found in the response")
    block = candidates[-1]  # the final version, when a reply shows drafts first
    try:
        tree = parse(block)
    except SyntaxError as e:
        raise ExtractionError(f"code block has a syntax error on line {e.lineno}: {e.msg}") from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    parent_slots = [s for s in slot_names if f"def {s}(" in parent] or slot_names
    if all(s in defined for s in parent_slots):
        return block.strip() + "\n", "rewrite"
    return merge(parent, block, tree), "partial"


def apply_diffs(parent: str, diffs: list[tuple[str, str]]) -> str:
    source = parent
    for number, (search, replace) in enumerate(diffs, 1):
        if search in source:
            if source.count(search) > 1:
                raise ExtractionError(f"diff block {number}: the search text occurs {source.count(search)} times")
            source = source.replace(search, replace, 1)
            continue
        loose = _loose_replace(source, search, replace)
        if loose is None:
            raise ExtractionError(f"diff block {number} does not apply: its search text is not in the parent")
        source = loose
    if source == parent:
        raise ExtractionError("the diff changes nothing")
    return source


def _loose_replace(source: str, search: str, replace: str) -> str | None:
    """Match ignoring trailing whitespace and blank lines at the ends (a common LLM slip)."""
    want = [line.rstrip() for line in search.strip("\n").splitlines()]
    lines = source.splitlines()
    have = [line.rstrip() for line in lines]
    hits = [i for i in range(len(have) - len(want) + 1) if have[i:i + len(want)] == want]
    if len(hits) != 1:
        return None
    i = hits[0]
    return "\n".join(lines[:i] + replace.strip("\n").splitlines() + lines[i + len(want):]) + "\n"


def merge(parent: str, block: str, tree: ast.Module) -> str:
    """Replace the parent's functions that the block redefines; add its new ones and imports."""
    source = parent
    lines = block.splitlines()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            source = replace_function(source, node.name, text)
    imports = [ast.get_source_segment(block, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    missing = [i for i in imports if i and i not in source]
    return ("\n".join(missing) + "\n\n" + source) if missing else source


def _defines_any(text: str, names: list[str]) -> bool:
    return any(re.search(rf"^\s*def {re.escape(n)}\s*\(", text, re.M) for n in names)
