"""llm.Mutate and llm.Crossover: an LLM reads the policy, the workload and past attempts, and writes a better one.

Prompts are built from template files (``operators/prompts/*.txt``; point
``Templates(directory)`` or ``$AUTOPOIESIS_PROMPTS`` at a folder of your own to
override any of them). Every reply is recorded by the ``Session`` with what became of
it; a reply with no usable program raises OperatorError with the reason, and the
child's own sandbox verdict is the evolution loop's to record.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Sequence

from .. import sandbox
from ..llm.client import LLMError
from ..llm.extract import ExtractionError, extract
from ..llm.ledger import BudgetExhausted, Session
from ..program import Program
from .base import Context, Operator, OperatorError

PROMPTS = Path(__file__).resolve().parent / "prompts"


class Templates:
    """Prompt templates by name; a user folder overrides the shipped files one by one."""

    def __init__(self, directory: str | Path | None = None):
        directory = directory or os.environ.get("AUTOPOIESIS_PROMPTS")
        self.dirs = ([Path(directory)] if directory else []) + [PROMPTS]

    def get(self, name: str) -> str:
        for d in self.dirs:
            path = d / f"{name}.txt"
            if path.is_file():
                return path.read_text()
        raise FileNotFoundError(f"no prompt template '{name}.txt' in {', '.join(map(str, self.dirs))}")

    def render(self, name: str, **values: str) -> str:
        return self.get(name).format(**values)


def _fitness_text(fitness) -> str:
    if fitness is None:
        return "not scored yet"
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(fitness.values.items()))


class _LLMOperator(Operator):
    def __init__(self, session: Session, templates: Templates | None = None,
                 max_tokens: int = 2048, temperature: float = 0.8, feedback: int = 4):
        self.session = session
        self.templates = templates or Templates()
        self.max_tokens, self.temperature = max_tokens, temperature
        self.failures: deque[str] = deque(maxlen=feedback)

    def _common(self, context: Context) -> dict[str, str]:
        slots = "\n\n".join(f"def {s.signature}:\n    \"\"\"{s.doc}\"\"\"" for s in context.slots.values())
        objectives = context.extra.get("objectives", ())
        failures = list(self.failures) + list(context.extra.get("failures", ()))
        return {
            "slots": slots,
            "snapshot": context.extra.get("snapshot_summary") or "no summary available",
            "objective": ", ".join(f"{o.direction}imize {o.name}" for o in objectives) or "see fitness",
            "feedback": "\n".join(f"- {f}" for f in failures[-6:]) or "none yet",
        }

    def _ask(self, prompt: str, parents: Sequence[Program], context: Context) -> Program:
        system = self.templates.get("system")
        try:
            completion, seq = self.session.ask(system, prompt, self.max_tokens, self.temperature)
        except BudgetExhausted:
            raise
        except LLMError as e:
            self.failures.append(f"the last call failed: {e}")
            raise OperatorError(f"LLM call failed: {e}") from None
        try:
            source, how = extract(completion.text, parents[0].source, list(context.slots))
        except ExtractionError as e:
            self.session.outcome(seq, f"unusable: {e}")
            self.failures.append(f"a reply was unusable: {e}")
            raise OperatorError(f"LLM reply unusable: {e}") from None
        child = self.child(source, parents, context)
        try:
            sandbox.check(source, context.slots.values())
            self.session.outcome(seq, f"child {child.id} ({how})")
        except sandbox.Rejected as e:
            self.session.outcome(seq, f"child {child.id} ({how}) rejected: {e}")
            self.failures.append(f"a program was rejected: {e}")
        return child  # the evolution loop records the sandbox's verdict on it


class Mutate(_LLMOperator):
    name = "llm.Mutate"
    arity = 1

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        (parent,) = parents
        fitness = context.extra.get("fitness", {})
        examples = [
            f"```python\n{p.source.strip()}\n```\n(fitness: {_fitness_text(f)})"
            for p, f in context.extra.get("top", [])[:2] if p.id != parent.id
        ]
        prompt = self.templates.render(
            "mutate", parent=parent.source.strip(), fitness=_fitness_text(fitness.get(parent.id)),
            examples="\n\n".join(examples) or "none yet", **self._common(context),
        )
        return self._ask(prompt, parents, context)


class Crossover(_LLMOperator):
    name = "llm.Crossover"
    arity = 2

    def __call__(self, parents: Sequence[Program], context: Context) -> Program:
        a, b = parents
        if a.id == b.id:
            raise OperatorError("crossover needs two different parents")
        fitness = context.extra.get("fitness", {})
        prompt = self.templates.render(
            "crossover", parent_a=a.source.strip(), parent_b=b.source.strip(),
            fitness_a=_fitness_text(fitness.get(a.id)), fitness_b=_fitness_text(fitness.get(b.id)),
            **self._common(context),
        )
        return self._ask(prompt, parents, context)
