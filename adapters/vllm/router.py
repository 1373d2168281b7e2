"""The router: an OpenAI-compatible endpoint in front of vLLM servers, applying the deployed policy.

Clients call the router instead of vLLM (``/v1/completions``, ``/v1/chat/completions``,
streaming or not). Per request it asks the deployed ``dispatch`` which server takes it
and ``priority`` where it queues (sent as vLLM's per-request ``priority``, unless the
in-engine plugin orders the queue), streams the answer back and records one
``RequestRecord`` with TTFT and inter-token times measured from the stream. Upstream
the router always streams (with usage), so a non-streaming client gets an assembled
answer and the same measurements.

A server that refuses connections or breaks a stream is marked down at once. One that
is merely slow (its ``/metrics`` or a connection timing out, as a busy CPU server's or a
briefly frozen machine's do) is marked down only after three timeouts in a row: slow is
not dead. Attempts in flight together that time out together (a burst of requests during
one stall of the machine) are one timeout, not several. Only connecting and a server's
first answer (its headers, sent at once for a stream) are timed: a request may wait in a
loaded server's queue, or stream a long answer, for as long as its client waits. A request
that no server marked up could take (none is up, or each failed it) is tried on those
marked down before it fails, as Envoy's panic mode does: a server marked down during a
freeze of this machine is most likely up, and one that answers is marked up at once. A
kept-alive connection that the server closed just before the router sent on it is no
failure: the request goes out again on another connection. A request that has sent
nothing to its client yet is retried, on another server first and on a slow one again if
none is left; one that has gets a clear error event. Every request ends in exactly one record,
``ok`` or not. The router runs on an asyncio loop that the caller drives (``observe`` in the
adapter), so policy calls happen on the main thread, under the hot path's deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import aiohttp
from aiohttp import web

from autopoiesis.metrics import EngineSample, RequestRecord
from autopoiesis.program import PolicyError

from .scrape import Scraper

PRIORITY_SCALE = 1000.0  # vLLM's priority is an integer: the policy's float, in thousandths
TIMEOUTS_TO_DOWN = 3


@dataclass
class Replica:
    index: int
    url: str  # server root, e.g. http://127.0.0.1:8001
    up: bool = True
    outstanding: int = 0
    assigned: int = 0
    running: float = 0.0
    waiting: float = 0.0
    kv_used_fraction: float = 0.0
    timeouts: int = 0  # /metrics or connection timeouts in a row (overlapping attempts' count once)
    timed_out_at: float = -math.inf  # router time of the last counted timeout

    def view(self) -> SimpleNamespace:
        return SimpleNamespace(index=self.index, url=self.url, outstanding=self.outstanding, assigned=self.assigned,
                               running=self.running, waiting=self.waiting, kv_used_fraction=self.kv_used_fraction,
                               ready=self.up)


class Upstream(Exception):
    """A server failed (connection refused, broken stream): mark it down, maybe retry."""


class Slow(Upstream):
    """A server did not answer in time (connecting, or before its first byte): it may be busy."""


class ClientGone(Exception):
    """The client hung up: not the server's fault. Leaving the upstream stream aborts the
    request in vLLM, which frees its slot."""


@dataclass
class _Call:
    """One client request in flight through the router."""

    id: int
    arrival: float
    prompt_tokens: int
    replica: int = -1
    first_token: float = math.nan
    output_tokens: int = 0
    usage: dict = field(default_factory=dict)
    stream: web.StreamResponse | None = None  # the client's stream, once a byte of it has been sent

    @property
    def sent_to_client(self) -> bool:
        return self.stream is not None


def estimate_prompt_tokens(body: dict) -> int:
    """Exact for token-id prompts; otherwise about 4 bytes per token (the policy's view, not billing)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list):
        text = "".join(p if isinstance(p, str) else "" for p in prompt)
    elif isinstance(prompt, str):
        text = prompt
    else:
        text = "".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
    return max(1, math.ceil(len(text.encode()) / 4))


class Router:
    """Routes OpenAI-compatible requests to vLLM servers under the deployed policy."""

    def __init__(self, urls: list[str], priority_mode: str = "request", scrape_s: float = 1.0,
                 answer_timeout_s: float = 600.0, scrape_timeout_s: float = 5.0, connect_timeout_s: float = 5.0):
        self.replicas = [Replica(i, u.rstrip("/").removesuffix("/v1")) for i, u in enumerate(urls)]
        self.priority_mode = priority_mode  # "request": send it; "plugin": the engine computes it
        self.policy: Any = None  # a HotPath with dispatch and priority
        self.epoch = time.monotonic()
        self.records: list[RequestRecord] = []
        self.samples: list[EngineSample] = []
        self.events: list[tuple[float, str, str]] = []
        self.open: dict[int, _Call] = {}  # request id -> the call, until its record is made
        self.arrivals: list[int] = []  # prompt tokens (estimated) of each request that arrived since the last take
        self.on_record: Callable[[RequestRecord], None] | None = None
        self._ids = 0
        self.scrape_s, self.scrape_timeout_s = scrape_s, scrape_timeout_s
        # no total: a request's queueing and streaming take what they take (its client bounds them)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
        self.answer_timeout_s = answer_timeout_s  # for a server's headers
        self.scraper = Scraper()
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.port = 0

    def now(self) -> float:
        return time.monotonic() - self.epoch

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # no cap on connections (aiohttp's default is 100): past it a request would wait in the pool,
        # first come, where no server's priority queue can see it
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=self.timeout,
                                             trace_configs=[_reuse_tracer()])
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- health and engine samples --------------------------------------------------------
    async def _watch(self) -> None:
        """Scrape every server's /metrics; a server that answers again is marked up."""
        while True:
            await asyncio.gather(*(self._scrape(r) for r in self.replicas))
            await asyncio.sleep(self.scrape_s)

    async def _scrape(self, replica: Replica) -> None:
        started = self.now()
        try:
            timeout = aiohttp.ClientTimeout(total=self.scrape_timeout_s)
            async with await self._request("GET", replica.url + "/metrics", timeout=timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise Upstream(f"/metrics answered {resp.status}")
        except (Slow, asyncio.TimeoutError):  # aiohttp's connection timeout is one too
            self.timed_out(replica, f"/metrics ({self.scrape_timeout_s:g} s)", started)
            return
        except (aiohttp.ClientError, Upstream) as e:
            self.mark_down(replica, f"/metrics: {type(e).__name__}: {e}")
            return
        sample = self.scraper.sample(replica.index, self.now(), text)
        replica.running, replica.waiting, replica.kv_used_fraction = sample.running, sample.waiting, sample.kv_usage
        self.samples.append(sample)
        self.mark_up(replica)

    def mark_up(self, replica: Replica) -> None:
        """The server answered (its /metrics, or a request): it is up, with no timeouts counted."""
        replica.timeouts = 0
        if not replica.up:
            replica.up = True
            self.events.append((self.now(), "up", f"replica {replica.index} ({replica.url}) answers again"))

    def timed_out(self, replica: Replica, what: str, started: float) -> None:
        """Count a timeout of an attempt begun at ``started``, unless the last counted one came
        after that: both waited out the same stall (of the server or of this machine, which
        fires every pending timer at once), and counting each would take a server down for
        one freeze with a burst in flight."""
        if started < replica.timed_out_at:
            return
        replica.timed_out_at = self.now()
        replica.timeouts += 1
        if replica.timeouts >= TIMEOUTS_TO_DOWN:
            self.mark_down(replica, f"{replica.timeouts} timeouts in a row, the last one {what}")

    def mark_down(self, replica: Replica, why: str) -> None:
        if replica.up:
            replica.up = False
            self.events.append((self.now(), "down", f"replica {replica.index} ({replica.url}): {why}"[:300]))

    # -- the endpoints --------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        up = sum(r.up for r in self.replicas)
        return web.json_response({"replicas": len(self.replicas), "up": up}, status=200 if up else 503)

    async def models(self, request: web.Request) -> web.Response:
        for replica in [r for r in self.replicas if r.up] or self.replicas:
            try:
                async with await self._request("GET", replica.url + "/v1/models") as resp:
                    return web.json_response(await resp.json(), status=resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, Upstream) as e:
                self.mark_down(replica, f"{type(e).__name__}: {e}")
        return _error(503, "no vLLM server is up")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            return _error(400, f"invalid JSON body: {e}")
        self._ids += 1
        call = _Call(self._ids, self.now(), estimate_prompt_tokens(body))
        self.arrivals.append(call.prompt_tokens)
        self.open[call.id] = call
        client_stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        view = SimpleNamespace(id=call.id, arrival=call.arrival, prompt_tokens=call.prompt_tokens, generated=0)
        upstream = dict(body, stream=True, stream_options={"include_usage": True})
        if self.policy is not None and self.priority_mode == "request" and "priority" not in body:
            try:
                upstream["priority"] = _as_vllm_priority(self.policy.priority(view, call.arrival))
            except PolicyError:
                pass  # no decision: the server's default order
        outcome = "ok"
        response: web.StreamResponse | None = None
        tried: set[int] = set()  # failed this request (or down)
        slow: dict[int, int] = {}  # timeouts on this request: tried again only when no other is left
        try:
            while True:
                replica = self._choose(view, tried, slow)
                if replica is None:
                    why = "every vLLM server failed or timed out on this request"
                    outcome = f"error: {why}"
                    if response is None:
                        return _error(503, why)
                    break
                tried.add(replica.index)
                call.replica = replica.index
                replica.assigned += 1
                replica.outstanding += 1
                started = self.now()
                try:
                    response = await self._forward(request, replica, upstream, call, client_stream, wants_usage)
                    if response.status >= 400:
                        outcome = f"rejected: {response.status}"
                    break
                except Slow as e:
                    self.timed_out(replica, str(e), started)
                    slow[replica.index] = slow.get(replica.index, 0) + 1
                    if slow[replica.index] < TIMEOUTS_TO_DOWN:
                        tried.discard(replica.index)  # still up: eligible again once the others are tried
                except Upstream as e:
                    self.mark_down(replica, str(e))
                    if call.sent_to_client:  # the client has part of an answer: end it with a clear error
                        outcome = f"error: {e}"
                        response = call.stream
                        await _send_error_event(response, f"vLLM server {replica.index} failed mid-stream: {e}")
                        break
                finally:
                    replica.outstanding -= 1
        except ClientGone:
            outcome = "error: the client went away"
            return response or web.Response(status=499)
        except (ConnectionResetError, asyncio.CancelledError):
            outcome = "error: the client went away"
            raise
        finally:
            self._record(call, outcome)
        return response

    def _choose(self, view: SimpleNamespace, tried: set[int], slow: Any = ()) -> Replica | None:
        untried = [r for r in self.replicas if r.index not in tried]
        candidates = [r for r in untried if r.up] or untried  # the last resort: servers marked down
        candidates = [r for r in candidates if r.index not in slow] or candidates
        if not candidates:
            return None
        if len(candidates) == 1 or self.policy is None:
            return min(candidates, key=lambda r: r.outstanding)
        try:
            return candidates[int(self.policy.dispatch(view, tuple(r.view() for r in candidates), view.arrival))]
        except PolicyError:
            return min(candidates, key=lambda r: r.outstanding)

    async def _forward(self, request: web.Request, replica: Replica, body: dict, call: _Call,
                       client_stream: bool, wants_usage: bool) -> web.StreamResponse:
        resp = await self._request("POST", replica.url + request.path, json=body)
        self.mark_up(replica)
        async with resp:
            if resp.status >= 400:  # the server refused the request itself (bad parameters): pass it on
                return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")
            out: web.StreamResponse | None = None
            chunks: list[dict] = []
            try:
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        call.usage = chunk["usage"]
                    choices = chunk.get("choices") or []
                    if any(_has_token(c) for c in choices) and math.isnan(call.first_token):
                        call.first_token = self.now()
                    if not client_stream:
                        chunks.append(chunk)
                        continue
                    if not choices and not wants_usage:
                        continue  # the usage-only chunk the client did not ask for
                    if out is None:
                        out = call.stream = await _open_stream(request)
                    await _to_client(out, b"data: " + data + b"\n\n")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                raise Upstream(f"{type(e).__name__}: {e}") from None
            if not call.usage and not chunks and out is None:
                raise Upstream("the stream ended before any answer")
            if client_stream:
                if out is None:
                    out = await _open_stream(request)
                await _to_client(out, b"data: [DONE]\n\n")
                await out.write_eof()
                return out
            return web.json_response(_assemble(chunks, call.usage))

    async def _request(self, method: str, url: str, **options: Any) -> aiohttp.ClientResponse:
        """Send and wait for the answer's headers. A kept-alive connection that the server
        closed before answering is tried again on another: vLLM's server (uvicorn) closes
        idle ones after 5 s, and a router on a busy machine can send on one (or on several
        pooled ones in turn) just as it does; that is no server failure. The server read
        nothing, so trying again is safe, a POST included (RFC 9112 9.3.1); aiohttp itself
        tries again once, for GET only. Each try discards the closed connection, so a fresh
        one ends the loop."""
        while True:
            attempt = SimpleNamespace(reused=False)
            try:
                return await asyncio.wait_for(self.session.request(method, url, trace_request_ctx=attempt, **options),
                                              self.answer_timeout_s)
            except asyncio.TimeoutError as e:  # connecting, or no answer yet: slow, not dead
                raise Slow(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
            except aiohttp.ClientConnectorError as e:  # refused: nothing listens
                raise Upstream(f"{type(e).__name__}: {e}") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if not attempt.reused:
                    raise Upstream(f"{type(e).__name__}: {e}") from None
            except aiohttp.ClientError as e:
                raise Upstream(f"{type(e).__name__}: {e}") from None

    def _record(self, call: _Call, outcome: str) -> None:
        self.open.pop(call.id, None)
        finish = self.now()
        first = call.first_token if not math.isnan(call.first_token) else finish
        record = RequestRecord(call.arrival, first, finish, int(call.usage.get("prompt_tokens", call.prompt_tokens)),
                               int(call.usage.get("completion_tokens", 0)), replica=call.replica,
                               request_id=call.id, outcome=outcome)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def take(self) -> tuple[list[RequestRecord], list[EngineSample], list[tuple[float, str, str]], list[int]]:
        """What happened since the last take: records, engine samples, events, arrivals' prompt tokens."""
        out = self.records, self.samples, self.events, self.arrivals
        self.records, self.samples, self.events, self.arrivals = [], [], [], []
        return out


def _reuse_tracer() -> aiohttp.TraceConfig:
    """Marks a request's ``trace_request_ctx`` when it goes out on a kept-alive connection."""

    async def reused(session, context, params) -> None:
        if context.trace_request_ctx is not None:
            context.trace_request_ctx.reused = True

    tracer = aiohttp.TraceConfig()
    tracer.on_connection_reuseconn.append(reused)
    return tracer


def _as_vllm_priority(value: float) -> int:
    value = float(value)
    if not math.isfinite(value):
        raise PolicyError(f"priority {value} is not finite")
    return int(max(-2**62, min(2**62, round(value * PRIORITY_SCALE))))


def _has_token(choice: dict) -> bool:
    if choice.get("text"):
        return True
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))


async def _open_stream(request: web.Request) -> web.StreamResponse:
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await out.prepare(request)
    except ConnectionResetError:
        raise ClientGone() from None
    return out


async def _to_client(out: web.StreamResponse, data: bytes) -> None:
    """Write to the client; aiohttp's reset error is also a ClientError, which must not
    be taken for the server's failure."""
    try:
        await out.write(data)
    except ConnectionResetError:
        raise ClientGone() from None


async def _send_error_event(out: web.StreamResponse | None, message: str) -> None:
    if out is None:
        return
    try:
        payload = {"error": {"message": message, "type": "upstream_error", "code": 502}}
        await out.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await out.write_eof()
    except ConnectionError:
        pass


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "router_error", "code": status}}, status=status)


def _assemble(chunks: list[dict], usage: dict) -> dict:
    """A non-streaming answer from the stream's chunks (completions or chat completions)."""
    first = chunks[0] if chunks else {}
    chat = first.get("object", "").startswith("chat")
    choices: dict[int, dict] = {}
    for chunk in chunks:
        for c in chunk.get("choices") or []:
            i = c.get("index", 0)
            if chat:
                slot = choices.setdefault(i, {"index": i, "message": {"role": "assistant", "content": ""},
                                              "finish_reason": None, "logprobs": None})
                delta = c.get("delta") or {}
                slot["message"]["role"] = delta.get("role") or slot["message"]["role"]
                slot["message"]["content"] += delta.get("content") or ""
            else:
                slot = choices.setdefault(i, {"index": i, "text": "", "finish_reason": None, "logprobs": None})
                slot["text"] += c.get("text") or ""
            slot["finish_reason"] = c.get("finish_reason") or slot["finish_reason"]
    return {"id": first.get("id", ""), "object": "chat.completion" if chat else "text_completion",
            "created": first.get("created", int(time.time())), "model": first.get("model", ""),
            "choices": [choices[i] for i in sorted(choices)], "usage": usage or None}
