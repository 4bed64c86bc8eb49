"""A local OpenAI-compatible chat server with scripted replies and injected faults.

It drives litellm over real HTTP in tests and benchmarks, with no network and no model:
a ``responder`` turns each request into a reply message, an optional fixed latency models
a provider, and a seeded fault plan injects 429s, 500s, timeouts and malformed bodies.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Responder = Callable[[dict[str, Any]], dict[str, Any]]
"""Maps a chat-completions request body to the reply message ({"role": "assistant", ...})."""

FAULT_KINDS = ("rate_limit", "server_error", "timeout", "malformed")


@dataclass
class FaultPlan:
    """Inject a fault into a share of requests, chosen by a seeded rng."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    timeout_s: float = 5.0  # how long a 'timeout' fault stalls before answering
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> str | None:
        """The fault for the next request, or None."""
        if self.rng.random() < self.rate:
            return self.rng.choice(self.kinds)
        return None


@dataclass
class ServerStats:
    """What the server saw and did."""

    requests: int = 0
    replies: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    in_flight: int = 0
    max_in_flight: int = 0
    # (arrival, departure) of every request, as time.time(): the in-flight curve a
    # benchmark reads back through GET /stats when the server runs in another process.
    spans: list[tuple[float, float]] = field(default_factory=list)


class FakeOpenAIServer:
    """Serve ``/v1/chat/completions`` on 127.0.0.1 from a background thread.

    Use as a context manager; ``base_url`` is what litellm takes as ``api_base``.
    """

    def __init__(
        self, responder: Responder, latency_s: float = 0.0, faults: FaultPlan | None = None
    ) -> None:
        self.responder = responder
        self.latency_s = latency_s
        self.faults = faults or FaultPlan()
        self.stats = ServerStats()
        self.requests: list[dict[str, Any]] = []
        self.authorizations: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. http://127.0.0.1:8123/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        stats = self.stats
        return web.json_response(
            {"requests": stats.requests, "replies": stats.replies, "spans": stats.spans}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        body = await request.json()
        self.authorizations.add(request.headers.get("Authorization", ""))
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            fault = self.faults.draw()
            if fault:
                stats.faults[fault] += 1
                return await self._fault(fault)
            self.requests.append(body)
            message = self.responder(body)
            stats.replies += 1
            return web.json_response(_completion(body, message))
        finally:
            stats.in_flight -= 1
            stats.spans.append((arrived, time.time()))

    async def _fault(self, kind: str) -> web.Response:
        if kind == "rate_limit":
            error = {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}
            return web.json_response(error, status=429, headers={"retry-after": "0"})
        if kind == "server_error":
            error = {"error": {"message": "The server had an error", "type": "server_error"}}
            return web.json_response(error, status=500)
        if kind == "timeout":
            await asyncio.sleep(self.faults.timeout_s)
            return web.json_response({"error": {"message": "too late"}}, status=504)
        return web.Response(text='{"id": "broken", "choices": [', content_type="application/json")


def _completion(request: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    prompt_chars = len(json.dumps(request.get("messages", [])))
    completion_chars = len(json.dumps(message))
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": f"chatcmpl-{random.getrandbits(48):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        # About four characters a token, as a stand-in for a tokenizer.
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": completion_chars // 4,
            "total_tokens": (prompt_chars + completion_chars) // 4,
        },
    }


def scripted_agent_responder(request: dict[str, Any]) -> dict[str, Any]:
    """A crude assistant: asks for an email, looks the user up, then says it is done.

    Enough to drive whole episodes through litellm and the real HTTP path; it does not
    solve tasks (its episodes fail verification, which is what a weak teacher does).
    """
    messages = request.get("messages", [])
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return {"role": "assistant", "content": "All done. Is there anything else?"}
    text = str(last.get("content") or "")
    email = _EMAIL.search(text)
    if email and request.get("tools"):
        call = {
            "id": f"call_{len(messages)}",
            "type": "function",
            "function": {
                "name": "find_user_id_by_email",
                "arguments": json.dumps({"email": email.group(0)}),
            },
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": "Could you please give me your email address?"}


def scripted_user_responder(request: dict[str, Any]) -> dict[str, Any]:
    """A crude simulated user: states the first request, gives its email, then stops."""
    system = str(request["messages"][0].get("content", ""))
    turns = sum(1 for m in request["messages"] if m.get("role") == "assistant")
    opening = _OPENING.search(system)
    email = _EMAIL.search(system)
    if turns == 0:
        return {"role": "assistant", "content": opening.group(1) if opening else "Hello."}
    if turns == 1 and email:
        return {"role": "assistant", "content": f"My email is {email.group(0)}."}
    return {"role": "assistant", "content": "Thanks, that's all. ###STOP###"}


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+\w")
_OPENING = re.compile(r"start with '([^']*)'")


def tool_then_text_responder(request: dict[str, Any]) -> dict[str, Any]:
    """Answer every user turn with one tool call, then a closing sentence (for benchmarks)."""
    messages = request.get("messages", [])
    if messages and messages[-1].get("role") == "tool":
        return {"role": "assistant", "content": "That is done."}
    call = {
        "id": f"call_{len(messages)}",
        "type": "function",
        "function": {"name": "list_product_types", "arguments": "{}"},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def serve_forever(port_queue: Any, latency_s: float) -> None:
    """Run a server in this process until killed (for benchmarks that keep it off their GIL)."""
    with FakeOpenAIServer(tool_then_text_responder, latency_s=latency_s) as server:
        port_queue.put(server.port)
        while True:
            time.sleep(3600)
