"""LLM clients on the official SDKs, with retries we control and one result type.

``openai:MODEL`` and any OpenAI-compatible server (vLLM, SGLang, llama.cpp, a gateway)
by base URL go through the ``openai`` SDK; ``anthropic:MODEL`` through ``anthropic``.
The SDKs' own retries are off: ``complete_with_retries`` retries rate limits (honouring
Retry-After), server errors, timeouts and dropped connections with exponential backoff
and jitter, so every attempt is counted in the ledger.
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str


class LLMError(Exception):
    """A failed call. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable, self.retry_after = retryable, retry_after


class Client(Protocol):
    name: str
    model: str

    def complete(self, system: str, prompt: str, max_tokens: int, temperature: float) -> Completion: ...


def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _classify(error: Exception, sdk) -> LLMError:
    if isinstance(error, sdk.RateLimitError):
        return LLMError(f"rate limited (429): {error}", True, _retry_after(error))
    if isinstance(error, sdk.APITimeoutError):
        return LLMError("timed out", True)
    if isinstance(error, sdk.APIConnectionError):
        return LLMError(f"connection failed or cut short: {error}", True)
    if isinstance(error, sdk.APIStatusError):
        status = error.status_code
        return LLMError(f"HTTP {status}: {error}", status >= 500 or status == 408, _retry_after(error))
    return LLMError(f"{type(error).__name__}: {error}", False)


class OpenAIClient:
    """OpenAI, or any OpenAI-compatible endpoint when ``base_url`` is given."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0):
        import openai

        self._sdk = openai
        key = api_key or os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)
        if key is None:
            raise LLMError("OPENAI_API_KEY is not set", False)
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self.model = model
        self.name = f"openai-compatible:{model}@{base_url}" if base_url else f"openai:{model}"

    def complete(self, system: str, prompt: str, max_tokens: int, temperature: float) -> Completion:
        start = time.monotonic()
        try:
            response = self._client.chat.completions.create(
                model=self.model, max_tokens=max_tokens, temperature=temperature,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
            )
            text = response.choices[0].message.content or ""
            usage = response.usage
            prompt_tokens = usage.prompt_tokens if usage else 0
            completion_tokens = usage.completion_tokens if usage else 0
        except self._sdk.OpenAIError as e:
            raise _classify(e, self._sdk) from None
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise LLMError(f"malformed response: {type(e).__name__}: {e}", True) from None
        return Completion(text, prompt_tokens, completion_tokens, time.monotonic() - start, self.model)


class AnthropicClient:
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0):
        import anthropic

        self._sdk = anthropic
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key is None:
            raise LLMError("ANTHROPIC_API_KEY is not set", False)
        self._client = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self.model = model
        self.name = f"anthropic:{model}"
        # recent SDKs dropped sampling parameters from messages.create; send them only where accepted
        import inspect

        self._takes_temperature = "temperature" in inspect.signature(self._client.messages.create).parameters

    def complete(self, system: str, prompt: str, max_tokens: int, temperature: float) -> Completion:
        start = time.monotonic()
        try:
            sampling = {"temperature": temperature} if self._takes_temperature else {}
            response = self._client.messages.create(
                model=self.model, max_tokens=max_tokens, system=system,
                messages=[{"role": "user", "content": prompt}], **sampling,
            )
            text = "".join(getattr(block, "text", "") for block in response.content)
            prompt_tokens, completion_tokens = response.usage.input_tokens, response.usage.output_tokens
        except self._sdk.AnthropicError as e:
            raise _classify(e, self._sdk) from None
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise LLMError(f"malformed response: {type(e).__name__}: {e}", True) from None
        return Completion(text, prompt_tokens, completion_tokens, time.monotonic() - start, self.model)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0


def complete_with_retries(
    client: Client, system: str, prompt: str, max_tokens: int = 2048, temperature: float = 0.8,
    policy: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep,
    on_attempt: Callable[[LLMError | None, float], None] | None = None, rng: random.Random | None = None,
) -> Completion:
    """Call until success or a non-retryable error; delays grow 2x with full jitter, at least Retry-After."""
    rng = rng or random.Random()
    for attempt in range(policy.attempts):
        try:
            completion = client.complete(system, prompt, max_tokens, temperature)
        except LLMError as error:
            if on_attempt:
                on_attempt(error, 0.0)
            if not error.retryable or attempt == policy.attempts - 1:
                raise
            delay = rng.uniform(0, min(policy.max_delay_s, policy.base_delay_s * 2 ** attempt))
            if error.retry_after is not None:
                delay = max(delay, min(error.retry_after, policy.max_delay_s))
            sleep(delay)
            continue
        if on_attempt:
            on_attempt(None, completion.latency_s)
        return completion
    raise LLMError("no attempts", False)  # unreachable with attempts >= 1


class Ensemble:
    """Several clients with weights: each call goes to one, drawn by a seeded rng
    (a cheap model for most calls, a strong one sometimes). Completions carry the model
    that answered, so the ledger prices each call right."""

    def __init__(self, members: list[tuple[Client, float]], seed: int = 0):
        if not members or any(w <= 0 for _, w in members):
            raise LLMError("an ensemble needs at least one client, each with a positive weight", False)
        self.members, self._rng = members, random.Random(seed)
        self.model = "+".join(c.model for c, _ in members)
        self.name = "ensemble(" + ", ".join(f"{c.name}@{w:g}" for c, w in members) + ")"

    def complete(self, system: str, prompt: str, max_tokens: int, temperature: float) -> Completion:
        clients, weights = zip(*self.members)
        client = self._rng.choices(clients, weights=weights)[0]
        return client.complete(system, prompt, max_tokens, temperature)


def parse_specs(specs: list[str], url: str | None = None, model: str | None = None, seed: int = 0) -> Client:
    """One or several ``provider:MODEL[@weight]`` specs (several: a weighted ensemble)."""
    members = []
    for spec in specs:
        name, _, weight = spec.rpartition("@") if "@" in spec else (spec, "", "1")
        try:
            members.append((parse_spec(name), float(weight)))
        except ValueError:
            raise LLMError(f"bad weight in '{spec}' (use provider:MODEL@0.8)", False) from None
    if url:
        members.append((parse_spec("", url, model), 1.0))
    return members[0][0] if len(members) == 1 else Ensemble(members, seed)


def parse_spec(spec: str, url: str | None = None, model: str | None = None) -> Client:
    """``openai:MODEL``, ``anthropic:MODEL``, or an OpenAI-compatible ``url`` + ``model``."""
    if url:
        if not model:
            raise LLMError("--llm-url needs --llm-model", False)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LLMError(f"--llm-url must be an http:// or https:// URL such as http://127.0.0.1:8000/v1, got '{url}'",
                           False)
        return OpenAIClient(model, base_url=url)
    provider, _, name = spec.partition(":")
    if not name:
        raise LLMError(f"--llm expects openai:MODEL or anthropic:MODEL, got '{spec}'", False)
    if provider == "openai":
        return OpenAIClient(name)
    if provider == "anthropic":
        return AnthropicClient(name)
    raise LLMError(f"unknown LLM provider '{provider}' (openai, anthropic, or --llm-url for any compatible server)", False)
