"""LLM access for the LLM operators: clients, retries, ledger and budgets, record and replay."""

from .client import AnthropicClient, Completion, Ensemble, LLMError, OpenAIClient, RetryPolicy, parse_spec, parse_specs
from .extract import ExtractionError, extract
from .ledger import Budget, BudgetExhausted, Ledger, Session

__all__ = ["AnthropicClient", "Budget", "Ensemble", "BudgetExhausted", "Completion", "ExtractionError", "LLMError",
           "Ledger", "OpenAIClient", "RetryPolicy", "Session", "extract", "parse_spec", "parse_specs"]
