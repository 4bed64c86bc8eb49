"""The one module that calls language models: litellm, with retries, limits and costs.

Every teacher, simulated user and judge call goes through :class:`LLMClient`. Transient
provider failures (429, 5xx, timeouts, malformed bodies) are retried with exponential
backoff and jitter; what still fails raises :class:`ProviderError`, which a rollout records
as ``status="error"``. API keys are read from the environment variable the config names and
never stored in a config, a trajectory or a log.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from trajgym.errors import ConfigError, ProviderError
from trajgym.trajectories.schema import FunctionCall, Message, ToolCall, Usage

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

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_configs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "API keys are never stored in configs: put the key in an environment variable "
                "and name that variable in 'api_key_env'."
            )
        return data

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
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._slots: asyncio.Semaphore | None = None  # made on the loop, at first use
        self._lock = threading.Lock()
        self.usage = Usage()
        self.calls = 0
        self.retries = 0
        if config.api_key_env and config.api_key_env not in os.environ:
            raise ConfigError(
                f"Environment variable '{config.api_key_env}' (api_key_env) is not set."
            )

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        """Call the model; retry transient failures; raise ProviderError if they persist."""
        return _run(self.acomplete(messages, tools))

    async def acomplete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        """:meth:`complete` for callers already on an event loop."""
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
            raise ProviderError(_describe(c.model, e, c.max_attempts)) from None
        with self._lock:
            self.calls += 1
            self.usage = self.usage + completion.usage
        return completion

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
