"""Student turns on an OpenAI-compatible inference server (vLLM): tokens in, tokens out.

The prompt is rendered and tokenized here and sent as token ids to ``/v1/completions``; the
server answers with the sampled token ids (``return_tokens_as_token_ids``) and their
log-probs, so RL trains on exactly what was sampled, with no re-tokenization of the text.
:meth:`RemoteBatcher.sync_adapter` loads a freshly saved LoRA adapter into the server
(vLLM: ``/v1/load_lora_adapter``, started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and
``--enable-lora``), so that the next rollouts sample from the current policy. It has the
:class:`~trajgym.agents.batching.Batcher` interface: the server does the batching.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from trajgym.agents.replies import Generated
from trajgym.errors import InfrastructureError


class ServerConfig(BaseModel):
    """An OpenAI-compatible completions server that generates the rollouts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="The served base model's name.")
    api_key_env: str | None = Field(None, description="Environment variable with the API key.")
    timeout_s: float = Field(300.0, gt=0, description="Per-request timeout.")
    retries: int = Field(5, ge=1, description="Attempts on 429 / 5xx / connection errors.")


def _retryable(error: BaseException) -> bool:
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code == 429 or error.response.status_code >= 500
    return isinstance(error, httpx.TransportError)


def _client(config: ServerConfig, base_url: str) -> httpx.Client:
    """An HTTP client for the server at ``base_url``, with its key if one is configured."""
    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=base_url.rstrip("/") + "/", headers=headers, timeout=config.timeout_s
    )


def _retrying(config: ServerConfig, post: Callable[[str, dict[str, Any]], dict[str, Any]]) -> Any:
    """``post`` retried with backoff on 429 / 5xx / connection errors."""
    return retry(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(config.retries),
        wait=wait_exponential(min=0.5, max=20),
        reraise=True,
    )(post)


class RemoteBatcher:
    """Generates each submitted prompt on the server; keeps no state but the served name."""

    def __init__(
        self,
        config: ServerConfig,
        tokenizer: Any,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.served = config.model  # the base model, or the adapter last synced
        self._client = _client(config, config.base_url)
        self._post = _retrying(config, self._post_once)

    def submit(self, prompt: str, session: str | None = None) -> Generated:
        """Sample a reply to the rendered ``prompt`` (``session`` is the server's business)."""
        ids = list(self.tokenizer(prompt, add_special_tokens=False).input_ids)
        body = {
            "model": self.served,
            "prompt": ids,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        choice = self._post("completions", body)["choices"][0]
        logprobs = choice.get("logprobs") or {}
        try:
            tokens = [int(str(t).removeprefix("token_id:")) for t in logprobs["tokens"]]
            chosen = [float(lp) for lp in logprobs["token_logprobs"]]
        except (KeyError, TypeError, ValueError) as e:
            raise InfrastructureError(
                "The server did not return token ids and log-probs; a vLLM server started "
                f"with an OpenAI-compatible API is needed ({type(e).__name__}: {e})."
            ) from None
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generated(text, len(ids), len(tokens), tuple(ids), tuple(tokens), tuple(chosen))

    def sync_adapter(self, path: Path, name: str) -> None:
        """Serve the adapter saved at ``path`` (a path the server can read) as ``name``."""
        previous = self.served
        self._post("load_lora_adapter", {"lora_name": name, "lora_path": str(path.resolve())})
        self.served = name
        if previous != self.config.model:
            try:
                self._post("unload_lora_adapter", {"lora_name": previous})
            except httpx.HTTPError:
                pass  # an old adapter left loaded costs memory, not correctness

    def forget(self, session: str) -> None:
        """Nothing is cached here."""

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _post_once(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.post(route, json=body)
        response.raise_for_status()
        if not response.content:
            return {}
        try:
            return dict(response.json())
        except ValueError:
            return {}


class RemoteScorer:
    """A teacher on a vLLM server, scoring sequences.

    The log-prob of every token of a sequence as the model read it (vLLM's
    ``prompt_logprobs``), and the ids its tokenizer gives a text (``/tokenize``).
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._client = _client(config, config.base_url.rstrip("/").removesuffix("/v1"))
        self._post = _retrying(config, self._post_once)

    def token_logprobs(self, ids: list[int]) -> list[float | None]:
        """``lp[i] = log p(ids[i] | ids[:i])``; ``lp[0]`` is None (nothing predicts it)."""
        body = {
            "model": self.config.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,  # vLLM: the prompt token's own log-prob (plus top 0)
        }
        choice = self._post("v1/completions", body)["choices"][0]
        try:
            scored = choice["prompt_logprobs"]
            out: list[float | None] = [None]
            for token, entry in zip(ids[1:], scored[1:], strict=True):
                out.append(float(entry[str(token)]["logprob"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InfrastructureError(
                "The server did not return prompt log-probs for every token; a vLLM server "
                f"(which accepts `prompt_logprobs`) is needed ({type(e).__name__}: {e})."
            ) from None
        return out

    def tokenize(self, text: str) -> list[int]:
        """The server tokenizer's ids for ``text`` (vLLM's ``/tokenize``)."""
        body = {"model": self.config.model, "prompt": text, "add_special_tokens": False}
        return [int(t) for t in self._post("tokenize", body)["tokens"]]

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _post_once(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.post(route, json=body)
        response.raise_for_status()
        return dict(response.json())
