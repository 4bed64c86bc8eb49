"""Batched student generation across concurrent episodes.

Episodes run in their own threads and each asks for one reply at a time; a single worker
thread gathers the prompts waiting at that moment (up to ``max_batch``), generates them in
one batch, and hands each episode its reply. On a CPU or a GPU, one batch of 8 costs far
less than 8 generations one after another. Each episode names its session, so that its KV
cache carries over from one turn to the next (see ``kv_sessions``).
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from typing import Any

from trajgym.agents.replies import Generated


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[Generated]:
    """Generate a reply to each rendered prompt in one left-padded batch (KV cache on)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so that every prompt ends where generation starts
    try:
        batch = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    batch = {k: v.to(model.device) for k, v in batch.items()}
    sampling = temperature > 0
    with torch.no_grad():
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    width = batch["input_ids"].shape[1]
    results = []
    for row, mask in zip(output, batch["attention_mask"], strict=True):
        new = row[width:]
        done = (new == tokenizer.eos_token_id).nonzero()
        length = int(done[0]) + 1 if len(done) else len(new)
        text = tokenizer.decode(new[:length], skip_special_tokens=True)
        results.append(Generated(text, int(mask.sum()), length))
    return results


class Batcher:
    """Collects prompts from many threads and generates them in batches on one thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max_batch
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batches: list[int] = []  # sizes, for inspection
        from trajgym.agents.kv_sessions import SessionGenerator

        self.sessions = SessionGenerator(model, tokenizer, max_sessions=4 * max_batch)
        self._ephemeral = itertools.count()
        self._queue: queue.Queue[tuple[str | None, str, Future[Generated]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="trajgym-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt: str, session: str | None = None) -> Generated:
        """Generate one reply (blocks until its batch is done); ``session`` keeps the cache."""
        future: Future[Generated] = Future()
        self._queue.put((session, prompt, future))
        return future.result()

    def forget(self, session: str) -> None:
        """Drop a finished session's cache (a later call for it starts afresh)."""
        self.sessions.forget(session)  # a dict pop: atomic under the GIL

    def close(self) -> None:
        """Stop the worker thread and drop every cache (the model is freed with the batcher)."""
        self._queue.put(None)
        self._thread.join()
        self.sessions.sessions.clear()

    def _serve(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            while len(pending) < self.max_batch:
                try:
                    item = self._queue.get(timeout=0.02)
                except queue.Empty:
                    break
                if item is None:  # finish this batch, then stop
                    closing = True
                    break
                pending.append(item)
            self.batches.append(len(pending))
            keys = [s if s is not None else f"~{next(self._ephemeral)}" for s, _, _ in pending]
            try:
                results = self.sessions.generate(
                    [(k, p) for k, (_, p, _) in zip(keys, pending, strict=True)],
                    self.max_new_tokens,
                    self.temperature,
                    self.top_p,
                )
            except BaseException as e:  # hand the failure to every waiting episode
                for _, _, future in pending:
                    future.set_exception(e)
                continue
            finally:
                for key in keys:
                    if key.startswith("~"):
                        self.sessions.forget(key)
            for (_, _, future), result in zip(pending, results, strict=True):
                future.set_result(result)
