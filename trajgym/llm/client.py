"""The one module that calls language models: litellm, with retries, limits and costs.

Every teacher, simulated user and judge call goes through :class:`LLMClient`. Transient
provider failures (429, 5xx, timeouts, malformed bodies) are retried with exponential
backoff and jitter; what still fails raises :class:`ProviderError`, which a rollout records
as ``status="error"``. API keys are read from the environment variable the config names and
never stored in a config, a trajectory or a log.

Every call can be recorded into a cassette and replayed from it offline, failures included
(``record`` / ``replay``, or ``TRAJGYM_RECORD`` / ``TRAJGYM_REPLAY`` for every client of a
run): see :mod:`trajgym.llm.cassette`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from trajgym.errors import ConfigError, ProviderError
from trajgym.llm.cassette import (
    CallKey,
    RecordedCall,
    Scope,
    cassette_for,
    current_scope,
    not_recorded,
    request_hash,
)
from trajgym.records.schema import FunctionCall, Message, ToolCall, Usage

# litellm fetches a remote cost map at import unless told not to; the bundled one is enough.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class LLMConfig(BaseModel):
    """How to reach a model through litellm."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        description="litellm model string: 'openai/gpt-4o-mini', 'anthropic/claude-...', or "
        "'openai/<name>' with api_base for any OpenAI-compatible server."
    )
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible server.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable that holds the API key."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(1024, gt=0, description="Most tokens a reply may have.")
    seed: int | None = Field(None, description="Sampling seed, where the provider honours it.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds before a call counts as timed out.")
    max_attempts: int = Field(6, ge=1, description="Attempts per call, retries included.")
    backoff_s: float = Field(1.0, ge=0, description="Initial backoff; it doubles, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest single backoff.")
    max_concurrency: int = Field(64, ge=1, description="Most calls in flight at once.")
    input_cost_per_token: float | None = Field(None, description="USD a prompt token (override).")
    output_cost_per_token: float | None = Field(None, description="USD a completion token.")
    record: Path | None = Field(
        None,
        description="Cassette to record every call into (a call it already answers is not sent "
        "again). Unset: $TRAJGYM_RECORD, if set.",
    )
    replay: Path | None = Field(
        None,
        description="Cassette to answer every call from, offline: a call it lacks is a "
        "ProviderError. Unset: $TRAJGYM_REPLAY, if set.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_configs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "API keys are never stored in configs: put the key in an environment variable "
                "and name that variable in 'api_key_env'."
            )
        return data

    @model_validator(mode="after")
    def _record_or_replay(self) -> LLMConfig:
        if self.record is not None and self.replay is not None:
            raise ValueError("set either 'record' or 'replay', not both")
        return self

    def with_cassette(self, record: Path | None, replay: Path | None) -> LLMConfig:
        """This config recording into, or replaying from, a run's cassette if it names one."""
        if record is None and replay is None:
            return self
        return LLMConfig.model_validate({**self.model_dump(), "record": record, "replay": replay})

    def decoding(self) -> dict[str, float | int | str | None]:
        """The decoding parameters, for a trajectory's provenance."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Completion:
    """One model reply and what it cost."""

    message: Message
    usage: Usage
    finish_reason: str | None


class LLMClient:
    """A thread-safe litellm client with a concurrency limit and running usage totals.

    Callers block in :meth:`complete` from any thread, but the HTTP work of every client runs
    on one shared asyncio loop: hundreds of calls in flight then cost a few milliseconds of
    CPU each, where as many threads each inside litellm thrash the GIL (measured: 4x slower).

    With a cassette (``record`` / ``replay`` in the config, else the environment variables)
    each call is keyed by the request, the caller's :func:`~trajgym.llm.cassette.cassette_scope`
    and its occurrence there; ``replayed`` counts the calls answered from the cassette.
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._slots: asyncio.Semaphore | None = None  # made on the loop, at first use
        self._lock = threading.Lock()
        self.usage = Usage()
        self.calls = 0
        self.retries = 0
        self.replayed = 0
        self.cassette, self.replaying = cassette_for(config.record, config.replay)
        self._scope = Scope(())  # for calls made outside any cassette_scope
        # A replay never reaches a provider, so it needs no key (offline machines, CI).
        needs_key = config.api_key_env and not self.replaying
        if needs_key and config.api_key_env not in os.environ:
            raise ConfigError(
                f"Environment variable '{config.api_key_env}' (api_key_env) is not set."
            )

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        """Call the model; retry transient failures; raise ProviderError if they persist.

        With a cassette, a recorded answer comes back instead (replaying: always, or the
        recorded ProviderError).
        """
        # The key is taken here, on the caller's thread, where its cassette scope is set.
        key = self._key(messages, tools)
        recorded = self._recorded(key)
        if recorded is not None:
            return recorded
        return _run(self._call(messages, tools, key))

    async def acomplete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        """:meth:`complete` for callers already on an event loop."""
        key = self._key(messages, tools)
        recorded = self._recorded(key)
        if recorded is not None:
            return recorded
        return await self._call(messages, tools, key)

    async def _call(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        key: CallKey | None,
    ) -> Completion:
        """Call the provider with retries; record the outcome when recording."""
        litellm = _litellm()
        c = self.config
        kwargs: dict[str, Any] = {
            "model": c.model,
            "messages": messages,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "timeout": c.timeout_s,
            "num_retries": 0,  # tenacity below owns retrying
            "api_key": self._api_key(),
        }
        optional = {"api_base": c.api_base, "top_p": c.top_p, "seed": c.seed}
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if c.api_base and c.input_cost_per_token is None and c.output_cost_per_token is None:
            # A self-hosted server has no price: saying so spares litellm a failing price-list
            # lookup on every call (a tenth of its CPU a call, which bounds concurrency).
            kwargs.update(input_cost_per_token=0.0, output_cost_per_token=0.0)
        if tools:
            kwargs["tools"] = tools
        retrying = AsyncRetrying(
            stop=stop_after_attempt(c.max_attempts),
            wait=wait_random_exponential(multiplier=c.backoff_s, max=c.backoff_max_s),
            retry=retry_if_exception(_is_transient),
            before_sleep=lambda _: self._count_retry(),
            reraise=True,
        )
        if self._slots is None:
            self._slots = asyncio.Semaphore(c.max_concurrency)
        try:
            async with self._slots:
                response: Any = await retrying(litellm.acompletion, **kwargs)
            completion = self._parse(response)
        except Exception as e:
            error = ProviderError(_describe(c.model, e, c.max_attempts))
            self._record(key, error=str(error))
            raise error from None
        self._record(key, completion=completion)
        self._count(completion)
        return completion

    def _key(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> CallKey | None:
        """(scope, request hash, occurrence) of this call; None without a cassette."""
        if self.cassette is None:
            return None
        c = self.config
        # Only what changes the answer: keys, URLs, timeouts and retries do not.
        request = request_hash(
            {
                "model": c.model,
                "messages": messages,
                "tools": tools or None,
                "temperature": c.temperature,
                "top_p": c.top_p,
                "max_tokens": c.max_tokens,
                "seed": c.seed,
            }
        )
        scope = current_scope() or self._scope
        return (scope.labels, request, scope.occurrence(request))

    def _recorded(self, key: CallKey | None) -> Completion | None:
        """The cassette's answer under ``key``; None sends the call to the provider."""
        if key is None or self.cassette is None:
            return None
        record = self.cassette.get(key)
        if record is None:
            if self.replaying:
                raise not_recorded(self.cassette, self.config.model, key)
            return None
        if record.error is not None:
            if self.replaying:
                raise ProviderError(record.error)
            return None  # recording: a provider that failed then may answer now
        assert record.message is not None  # a record holds a message or an error
        completion = Completion(record.message, record.usage, record.finish_reason)
        self._count(completion, replayed=True)
        return completion

    def _record(
        self, key: CallKey | None, completion: Completion | None = None, error: str | None = None
    ) -> None:
        if key is None or self.cassette is None:
            return
        self.cassette.append(
            RecordedCall(
                scope=key[0],
                request=key[1],
                n=key[2],
                model=self.config.model,
                message=completion.message if completion else None,
                usage=completion.usage if completion else Usage(),
                finish_reason=completion.finish_reason if completion else None,
                error=error,
            )
        )

    def _count(self, completion: Completion, replayed: bool = False) -> None:
        with self._lock:
            self.calls += 1
            self.replayed += replayed
            self.usage = self.usage + completion.usage

    def _api_key(self) -> str | None:
        if self.config.api_key_env:
            return os.environ[self.config.api_key_env]
        # The OpenAI SDK insists on a key even for local servers that ignore it.
        return "no-key" if self.config.api_base else None

    def _count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def _parse(self, response: Any) -> Completion:
        choice = response.choices[0]
        raw = choice.message
        calls = tuple(
            ToolCall(
                id=tc.id or f"call_{n}",
                function=FunctionCall(
                    name=tc.function.name or "", arguments=tc.function.arguments or ""
                ),
            )
            for n, tc in enumerate(raw.tool_calls or ())
        )
        message = Message(role="assistant", content=raw.content or None, tool_calls=calls or None)
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self._cost(response, prompt, completion)
        return Completion(
            message,
            Usage(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost),
            choice.finish_reason,
        )

    def _cost(self, response: Any, prompt: int, completion: int) -> float:
        c = self.config
        if c.input_cost_per_token is not None or c.output_cost_per_token is not None:
            return prompt * (c.input_cost_per_token or 0.0) + completion * (
                c.output_cost_per_token or 0.0
            )
        if c.api_base:  # a self-hosted server: no price list applies
            return 0.0
        try:
            return float(_litellm().completion_cost(completion_response=response))
        except Exception:  # unknown or local models have no price
            return 0.0


def to_wire(message: Message) -> dict[str, Any]:
    """A message as OpenAI-compatible APIs accept it (tool messages carry no name)."""
    wire = message.to_openai()
    if message.role == "tool":
        wire.pop("name", None)
    if message.role == "assistant" and "content" not in wire:
        wire["content"] = None
    return wire


T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the shared background loop and wait for its result."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="trajgym-llm", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _loop).result()


def _litellm() -> Any:
    """Import litellm on first use (it takes seconds), quietly."""
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _is_transient(error: BaseException) -> bool:
    litellm = _litellm()
    transient = (
        litellm.RateLimitError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.APIResponseValidationError,
    )
    if isinstance(error, transient):
        return True
    if isinstance(error, litellm.APIError):  # malformed bodies surface as a bare APIError
        return getattr(error, "status_code", 500) >= 500
    return False


def _describe(model: str, error: BaseException, attempts: int) -> str:
    kind = type(error).__name__
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{model}: {kind}: {text} (after up to {attempts} attempts)"
