"""A small vLLM-compatible completions server backed by a local transformers model.

It speaks the part of vLLM's OpenAI-compatible API that remote rollouts and remote teachers
use: token-id prompts on ``/v1/completions`` answered with ``token_id:N`` tokens and their
log-probs (and, asked ``prompt_logprobs``, the log-prob of every prompt token as vLLM gives
it: ``[None, {"<id>": {"logprob", "rank", "decoded_token"}}, ...]``), ``/tokenize``, and
``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` for LoRA adapters saved on disk. It
lets the remote paths (and the adapter sync) be tested for real on a CPU, without vLLM.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trajgym.agents.kv_sessions import SessionGenerator


class TokenServer:
    """Serve ``model`` (named ``name``) on 127.0.0.1 from a background thread."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "base") -> None:
        self.base, self.tokenizer, self.name = model, tokenizer, name
        self.adapters: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL."""
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One completion: the body's token-id prompt, sampled by the named model."""
        model = self.base if body["model"] == self.name else self.adapters.get(body["model"])
        if model is None:
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
        import torch

        prompt = [int(t) for t in body["prompt"]]
        with self._lock, torch.no_grad():  # one generation at a time, like a single GPU
            [g] = SessionGenerator(model, self.tokenizer, 1).generate(
                [("request", prompt)],
                int(body.get("max_tokens", 16)),
                float(body.get("temperature", 1.0)),
                float(body.get("top_p", 1.0)),
            )
        logprobs = {
            "tokens": [f"token_id:{t}" for t in g.token_ids],
            "token_logprobs": list(g.logprobs),
        }
        choice = {"index": 0, "text": g.text, "logprobs": logprobs, "finish_reason": "stop"}
        if body.get("prompt_logprobs") is not None:
            choice["prompt_logprobs"] = self._prompt_logprobs(model, prompt)
        return 200, {"object": "text_completion", "model": body["model"], "choices": [choice]}

    def _prompt_logprobs(self, model: Any, prompt: list[int]) -> list[dict[str, Any] | None]:
        """Prompt log-probs as vLLM gives them: None first, then each token's and its rank."""
        import torch

        with self._lock, torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt])).logits[0, :-1].float()
        logp = torch.log_softmax(logits, -1)
        out: list[dict[str, Any] | None] = [None]
        for row, token in zip(logp, prompt[1:], strict=True):
            lp = float(row[token])
            rank = int((row > row[token]).sum()) + 1
            decoded = self.tokenizer.decode([token])
            out.append({str(token): {"logprob": lp, "rank": rank, "decoded_token": decoded}})
        return out

    def tokenize(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The tokenizer's ids for a text prompt."""
        special = bool(body.get("add_special_tokens", True))
        ids = self.tokenizer(body["prompt"], add_special_tokens=special).input_ids
        return 200, {"count": len(ids), "max_model_len": 16384, "tokens": list(ids)}

    def load_adapter(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Load a peft adapter from disk under a name."""
        import copy

        from peft import PeftModel

        with self._lock:
            self.adapters[body["lora_name"]] = PeftModel.from_pretrained(
                copy.deepcopy(self.base), body["lora_path"]
            ).eval()
        return 200, {}

    def unload_adapter(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Forget a named adapter."""
        with self._lock:
            found = self.adapters.pop(body["lora_name"], None)
        return (200, {}) if found is not None else (404, {"error": {"message": "no such adapter"}})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        routes = {
            "/v1/completions": self.complete,
            "/tokenize": self.tokenize,
            "/v1/load_lora_adapter": self.load_adapter,
            "/v1/unload_lora_adapter": self.unload_adapter,
        }

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                route = routes.get(self.path)
                status, payload = (
                    route(body) if route else (404, {"error": {"message": "no route"}})
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        return Handler
