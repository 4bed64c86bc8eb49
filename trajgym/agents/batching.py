"""Batched student generation across concurrent episodes.

Episodes run in their own threads and each asks for one reply at a time; a single worker
thread gathers the prompts waiting at that moment (up to ``max_batch``), generates them in
one batch, and hands each episode its reply. On a CPU or a GPU, one batch of 8 costs far
less than 8 generations one after another. Each episode names its session, so that its KV
cache carries over from one turn to the next (see ``kv_sessions``).

Which prompts share a batch changes the floating-point sums (padding widths, kernel choice),
and a greedy reply can flip on a near tie. An evaluation therefore serves in *lockstep*
(:meth:`Batcher.expect`): each round waits for every episode in play, then generates their
prompts sorted by session, so batch composition follows the episodes' keys, not the threads'
timing, and the same checkpoint evaluated twice gives the same replies.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
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


# Lockstep waits at most this long for an episode's turn before serving what it has: a safety
# net for a runner that stopped scheduling (a crash), never reached in a healthy run.
LOCKSTEP_STALL_S = 120.0


@dataclass
class _Request:
    session: str
    prompt: str
    future: Future[Generated]


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
        seed: int = 0,
    ) -> None:
        import torch

        from trajgym.agents.kv_sessions import SessionGenerator

        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max_batch
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batches: list[int] = []  # sizes, for inspection
        self.rounds: list[list[str]] = []  # each batch's sessions, for inspection
        self.sessions = SessionGenerator(model, tokenizer, max_sessions=4 * max_batch)
        self._rng = torch.Generator(device=model.device)
        self._rng.manual_seed(seed)  # sampling follows the rounds: reproducible in lockstep
        self._ephemeral = itertools.count()
        self._pending: list[_Request] = []
        self._forgotten: list[str] = []
        self._closing = False
        self._playing: tuple[int, int] | None = None  # lockstep: (episodes left, slots)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="trajgym-batcher", daemon=True)
        self._thread.start()

    def expect(self, episodes: int, slots: int) -> None:
        """Serve in lockstep: ``episodes`` to play, ``slots`` of them in flight at a time.

        Every episode must then call :meth:`finished` once, however it ends.
        """
        with self._changed:
            self._playing = (episodes, slots)
            self._changed.notify_all()

    def finished(self) -> None:
        """One expected episode is over (it asks for no more replies)."""
        with self._changed:
            if self._playing is not None:
                left, slots = self._playing
                self._playing = (max(left - 1, 0), slots)
            self._changed.notify_all()

    def submit(self, prompt: str, session: str | None = None) -> Generated:
        """Generate one reply (blocks until its batch is done); ``session`` keeps the cache."""
        future: Future[Generated] = Future()
        key = session if session is not None else f"~{next(self._ephemeral):08d}"
        with self._changed:
            self._pending.append(_Request(key, prompt, future))
            self._changed.notify_all()
        return future.result()

    def forget(self, session: str) -> None:
        """Drop a finished session's cache (a later call for it starts afresh)."""
        with self._changed:  # dropped by the worker, between batches
            self._forgotten.append(session)

    def close(self) -> None:
        """Stop the worker thread and drop every cache (the model is freed with the batcher)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self.sessions.sessions.clear()

    def _serve(self) -> None:
        while (batches := self._next_batches()) is not None:
            for batch in batches:
                self._generate(batch)

    def _next_batches(self) -> list[list[_Request]] | None:
        """The next round's batches (None once closing with nothing left to serve)."""
        with self._changed:
            self._changed.wait_for(lambda: self._closing or bool(self._pending))
            if self._playing is None:  # (set before any episode starts, so read after a request)
                taken = self._gather()
            else:
                self._changed.wait_for(self._round_is_full, timeout=LOCKSTEP_STALL_S)
                taken, self._pending = self._pending, []
                taken.sort(key=lambda r: r.session)
            for session in self._forgotten:
                self.sessions.forget(session)
            self._forgotten.clear()
            if not taken:
                return None if self._closing else []
        step = self.max_batch
        batches = [taken[i : i + step] for i in range(0, len(taken), step)]
        self.rounds += [[r.session for r in b] for b in batches]
        return batches

    def _round_is_full(self) -> bool:
        assert self._playing is not None
        left, slots = self._playing
        return self._closing or (bool(self._pending) and len(self._pending) >= min(left, slots))

    def _gather(self) -> list[_Request]:
        """Free mode: what waits, plus what comes within 20 ms of the last (up to a batch)."""
        while 0 < len(self._pending) < self.max_batch and not self._closing:
            if not self._changed.wait_for(self._more_than(len(self._pending)), timeout=0.02):
                break
        taken, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        return taken

    def _more_than(self, seen: int) -> Callable[[], bool]:
        return lambda: len(self._pending) > seen

    def _generate(self, batch: list[_Request]) -> None:
        self.batches.append(len(batch))
        try:
            results = self.sessions.generate(
                [(r.session, r.prompt) for r in batch],
                self.max_new_tokens,
                self.temperature,
                self.top_p,
                self._rng,
            )
        except BaseException as e:  # hand the failure to every waiting episode
            for r in batch:
                r.future.set_exception(e)
            return
        finally:
            for r in batch:
                if r.session.startswith("~"):
                    self.sessions.forget(r.session)
        for r, result in zip(batch, results, strict=True):
            r.future.set_result(result)
