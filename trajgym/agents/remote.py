"""Student turns on an OpenAI-compatible inference server (vLLM): tokens in, tokens out.

The prompt is rendered and tokenized here and sent as token ids to ``/v1/completions``; the
server answers with the sampled token ids (``return_tokens_as_token_ids``) and their
log-probs, so RL trains on exactly what was sampled, with no re-tokenization of the text.
:meth:`RemoteBatcher.sync_adapter` loads a freshly saved LoRA adapter into the server
(vLLM: ``/v1/load_lora_adapter``, started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and
``--enable-lora``), so that the next rollouts sample from the current policy. It has the
:class:`~trajgym.agents.batching.Batcher` interface: the server does the batching.

Tested against a real vLLM (``tests/test_vllm.py``, vLLM 0.32's CPU build). Its contracts,
read from its source: a sampled token's log-prob is, by default (``--logprobs-mode
raw_logprobs``), the model's at temperature 1, whatever the request's temperature;
``processed_logprobs`` gives it after temperature and top-p (renormalized over the nucleus);
``prompt_logprobs`` are always at temperature 1. Loading an adapter under a name already
loaded is refused unless ``load_inplace`` is set. A prompt longer than ``--max-model-len`` is
a 400; a reply that would not fit is cut short (finish_reason ``length``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from trajgym.agents.replies import Generated
from trajgym.errors import ConfigError, InfrastructureError


class ServerConfig(BaseModel):
    """An OpenAI-compatible completions server that generates the rollouts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="The served base model's name.")
    api_key_env: str | None = Field(None, description="Environment variable with the API key.")
    timeout_s: float = Field(300.0, gt=0, description="Per-request timeout.")
    retries: int = Field(5, ge=1, description="Attempts on 429 / 5xx / connection errors.")
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = Field(
        "raw_logprobs",
        description="The server's --logprobs-mode (vLLM's default: raw_logprobs, the model's "
        "log-probs at temperature 1). Sampling at another temperature needs "
        "processed_logprobs, so that the recorded log-probs are the sampling distribution's.",
    )

    def check_sampling(self, temperature: float, top_p: float) -> None:
        """Refuse a sampling setting whose log-probs this server would report differently.

        RL compares the recorded log-probs with the trainer's ``log_softmax(logits / T)``
        over the whole vocabulary: vLLM's raw log-probs are that only at T = 1 (or greedy),
        its processed ones only without a nucleus (top-p renormalizes them).
        """
        if self.logprobs_mode == "raw_logprobs" and temperature not in (0.0, 1.0):
            raise ConfigError(
                f"Sampling at temperature {temperature} on a server that reports raw "
                "log-probs (temperature 1): start vLLM with --logprobs-mode processed_logprobs "
                "and set server.logprobs_mode: processed_logprobs, or sample at temperature 1."
            )
        if self.logprobs_mode == "processed_logprobs" and temperature > 0 and top_p < 1.0:
            raise ConfigError(
                f"top_p {top_p} on a server that reports processed log-probs: vLLM "
                "renormalizes them over the nucleus, the trainer does not. Use top_p 1, or a "
                "server with --logprobs-mode raw_logprobs and temperature 1."
            )


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


def _retrying(
    config: ServerConfig, post: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """``post`` retried with backoff on 429 / 5xx / connection errors.

    What still fails is an :class:`InfrastructureError` carrying the server's own message
    (vLLM's ``{"error": {"message": ...}}``): a rollout records it as the episode's error.
    """
    retrying = retry(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(config.retries),
        wait=wait_exponential(min=0.5, max=20),
        reraise=True,
    )(post)

    def posting(route: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(retrying(route, body))
        except httpx.HTTPStatusError as e:
            raise InfrastructureError(
                f"{config.base_url} {route}: {e.response.status_code} {_message(e.response)}"
            ) from None
        except httpx.TransportError as e:
            raise InfrastructureError(
                f"{config.base_url} {route}: {type(e).__name__}: {e}"
            ) from None

    return posting


def _message(response: httpx.Response) -> str:
    """The error message in a vLLM / OpenAI error body, else the body itself."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


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
        config.check_sampling(temperature, top_p)
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
        """Serve the adapter saved at ``path`` (a path the server can read) as ``name``.

        A name the server already holds is reloaded in place (a run resumed from a checkpoint
        syncs the step it stopped at again); the adapter served before is unloaded.
        """
        previous = self.served
        body = {"lora_name": name, "lora_path": str(path.resolve()), "load_inplace": True}
        self._post("load_lora_adapter", body)
        self.served = name
        if previous not in (self.config.model, name):
            try:
                self._post("unload_lora_adapter", {"lora_name": previous})
            except InfrastructureError:
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
