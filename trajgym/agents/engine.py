"""The student's generation engine: continuous batching over a preallocated KV cache.

Episodes run in their own threads and each asks for one reply at a time
(:meth:`Engine.submit`); one worker thread runs *steps*. A step runs every conversation that
has work: one token for a row that is decoding, the new part of its prompt for a row whose
turn just began (prefill and decode share the step, packed without padding). A row whose
reply ends leaves at once, and its next turn joins at the next step: nothing waits for the
longest reply of a batch, and no round waits for every episode.

Each conversation keeps its keys and values in a slot of :mod:`trajgym.agents.kv_slots`
across its turns; the first message (system prompt and tool schemas, identical for every
episode of an environment) is computed once per model and shared through the prefix bank.

**Determinism.** Which rows share a step changes floating-point sums, and a greedy reply can
flip on a near tie, so the schedule must not depend on thread timing. With
:meth:`Engine.expect` (an evaluation or RL run says how many episodes it plays and how many
at a time), a step runs only once every episode in play has its request in: when a reply
ends, the next step waits for that episode's next prompt, or its end and the next episode's
first prompt (a scripted user answers in milliseconds). New requests are admitted in the
order of their sessions' keys, to the lowest free slot. So each step's rows, slots and token
counts follow from the episodes alone, and the same checkpoint evaluated twice gives the same
replies. Sampling draws each reply from its own stream (:mod:`trajgym.agents.sampling`).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trajgym.agents.engine_model import compute_dtype, forward, read_weights, unsupported
from trajgym.agents.engine_sessions import Prefix, Session, ordering_base
from trajgym.agents.kv_slots import KVSlots, RowStep, make_plan
from trajgym.agents.replies import Generated
from trajgym.agents.sampling import Sampling, choose, row_seed

if TYPE_CHECKING:
    from trajgym.agents.batching import Batcher

# A run in lockstep waits at most this long for an episode's turn before serving what it has:
# a safety net for a runner that stopped scheduling (a crash), never reached in a healthy run.
LOCKSTEP_STALL_S = 120.0
MIN_PREFIX = 16  # a first message shorter than this is not worth sharing
MAX_PREFIXES = 8  # prefixes kept in the bank (unused ones dropped first)
STEP_TOKENS = 4096  # tokens one step runs at most: longer prefills run in chunks
START_LENGTH = 1024  # positions per slot at first; doubled when a conversation needs more


@dataclass
class EngineStats:
    """What the engine did, for tests and benchmarks."""

    steps: int = 0
    rows: int = 0  # sum over steps of the rows run (rows / steps: the mean batch)
    computed_tokens: int = 0  # tokens run through the model, prefixes included
    prefix_tokens: int = 0  # of which prefixes
    reused_tokens: int = 0  # prompt tokens served from a cache (a session's or a prefix)
    generated_tokens: int = 0
    reallocations: int = 0  # KV cache allocations after the first
    batch_sizes: dict[int, int] = field(default_factory=dict)  # rows per step: steps


@dataclass
class _Request:
    session: str
    ids: list[int]
    max_new_tokens: int
    future: Future[tuple[list[int], list[float]]]
    arrival: int


class Engine:
    """One student model served to many episodes; keep it for a whole evaluation or RL run.

    ``dtype`` is the compute dtype of the weights and caches (``auto``: bf16 where it runs
    natively, else fp32). After the model's weights change (an RL update), call
    :meth:`refresh` between runs.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str = "auto",
        slots: int = 8,
        max_length: int | None = None,
    ) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"The generation engine cannot run this model: {reason}.")
        self.model, self.tokenizer = model, tokenizer
        self.sampling = Sampling(max_new_tokens, temperature, top_p, seed)
        self.weights = read_weights(model, compute_dtype(dtype, model))
        w = self.weights
        self.max_length = min(max_length or w.cos.shape[0], w.cos.shape[0])
        self.cache = KVSlots(
            len(w.layers),
            w.kv_heads,
            w.head_dim,
            slots,
            min(START_LENGTH, self.max_length),
            w.dtype,
        )
        self.eos = tokenizer.eos_token_id
        self.stats = EngineStats()
        self.trace: list[tuple[str, ...]] | None = None  # each step's rows, when a list
        self._sessions: dict[str, Session] = {}
        self._prefixes: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._queue: list[_Request] = []
        self._forgotten: list[str] = []
        self._ranks: dict[str, int] = {}
        self._running = 0
        self._playing: tuple[int, int] | None = None  # (episodes left, in flight)
        self._closing = False
        self._arrivals = itertools.count()
        self._ephemeral = itertools.count()
        self._tokenizing = threading.Lock()  # a fast tokenizer is not safe across threads
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="trajgym-engine", daemon=True)
        self._thread.start()

    # The ReplySource interface ---------------------------------------------------------------

    def submit(
        self, prompt: str | list[int], session: str | None = None, max_new_tokens: int | None = None
    ) -> Generated:
        """Generate one reply (blocks until it is done); ``session`` keeps the cache."""
        if isinstance(prompt, list):
            ids = list(prompt)
        else:
            with self._tokenizing:
                ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        name = session if session is not None else f"~{next(self._ephemeral):08d}"
        future: Future[tuple[list[int], list[float]]] = Future()
        limit = max_new_tokens or self.sampling.max_new_tokens
        with self._changed:
            if self._closing:
                raise RuntimeError("The engine is closed.")
            self._queue.append(_Request(name, ids, limit, future, next(self._arrivals)))
            self._changed.notify_all()
        try:
            tokens, logprobs = future.result()
        finally:
            if session is None:
                self.forget(name)
        with self._tokenizing:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generated(text, len(ids), len(tokens), tuple(ids), tuple(tokens), tuple(logprobs))

    def forget(self, session: str) -> None:
        """A conversation is over: its slot is freed before the next step."""
        with self._changed:
            self._forgotten.append(session)
            self._changed.notify_all()

    def expect(self, episodes: int, slots: int) -> None:
        """Serve deterministically: ``episodes`` to play, ``slots`` of them in flight.

        Every episode must then call :meth:`finished` once, however it ends.
        """
        with self._changed:
            self._playing = (episodes, slots)
            self._ranks.clear()
            self._changed.notify_all()

    def finished(self) -> None:
        """One expected episode is over (it asks for no more replies)."""
        with self._changed:
            if self._playing is not None:
                left, slots = self._playing
                self._playing = (max(left - 1, 0), slots)
            self._changed.notify_all()

    def reseed(self, seed: int) -> None:
        """Sample the next run's replies from streams of ``seed`` (one engine, many runs)."""
        from dataclasses import replace

        self.sampling = replace(self.sampling, seed=seed)

    def refresh(self) -> None:
        """Read the model's weights again (they changed in place) and drop every cache.

        Call it between runs: no request may be in flight.
        """
        self.drop_caches()
        with self._changed:
            self.weights = read_weights(self.model, self.weights.dtype)

    def drop_caches(self) -> None:
        """Forget every conversation and prefix, and hand the KV cache's pages back.

        Between RL's rollouts and its update, which then has that memory (the rollouts' KV
        was ~1.5 GB of the main job's peak). The next request commits pages again, as a new
        engine's would. No request may be in flight.
        """
        with self._changed:
            if self._queue or self._running:
                raise RuntimeError("caches dropped while replies are being generated")
            self._sessions.clear()
            self._prefixes.clear()
            old = self.cache
            layers, _, kv, _, dim = old.keys.shape
            self.cache = KVSlots(layers, kv, dim, old.slots, old.length, old.keys.dtype)
            old.release()

    def close(self) -> None:
        """Serve what is queued, stop the worker and drop every cache."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self._sessions.clear()
        self._prefixes.clear()
        self.cache.release()

    # The worker ------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._changed:
                if not self._wait_for_work():
                    return
                self._drop_forgotten()
                self._admit()
                rows = self._plan_rows()
            if not rows:
                continue
            try:
                plan = make_plan(
                    [RowStep(s.slot, chunk, s.past, s.span) for s, chunk in rows], self.cache
                )
                logits = forward(self.weights, self.cache, plan)
            except BaseException as e:  # hand the failure to every row of the step
                with self._changed:
                    for s, _ in rows:
                        self._fail(s, e)
                continue
            with self._changed:
                self._advance(rows, logits)

    def _wait_for_work(self) -> bool:
        """Wait until a step may run (False: closing and nothing left to serve)."""
        while True:
            active = len(self._queue) + self._running
            if self._closing:
                return active > 0
            if self._playing is None or self._ready():
                if active:
                    return True
                self._changed.wait()
                continue
            if not self._changed.wait_for(self._ready, timeout=LOCKSTEP_STALL_S) and active:
                return True  # the safety net: serve what has come

    def _ready(self) -> bool:
        """Every episode in play has its request in (or there is no plan to follow)."""
        active = len(self._queue) + self._running
        if self._closing or self._playing is None:
            return self._closing or active > 0
        left, slots = self._playing
        return active > 0 and active >= min(left, slots)

    def _drop_forgotten(self) -> None:
        keep = []
        for name in sorted(set(self._forgotten)):
            session = self._sessions.get(name)
            if session is not None and session.request is not None:
                keep.append(name)  # dropped once its reply is out
            elif session is not None:
                self._release(session)
        self._forgotten = keep
        self._compact()

    def _release(self, session: Session) -> None:
        del self._sessions[session.name]
        if session.prefix is not None:
            session.prefix.users -= 1

    def _compact(self) -> None:
        """Keep the slots in use at the bottom: decode attention runs over slots [0, n)."""
        taken = sorted(self._sessions.values(), key=lambda s: s.slot)
        for hole, session in enumerate(taken):
            if session.slot != hole:
                self.cache.move(session.slot, hole, session.past)
                session.slot = hole

    def _admit(self) -> None:
        """Queued requests take their sessions' slots, in the order of their keys."""
        queue, self._queue = self._queue, []
        queue.sort(key=self._admission_order)
        for request in queue:
            session = self._sessions.get(request.session) or self._open(request.session)
            error = self._start(session, request)
            if error is not None:
                request.future.set_exception(error)
                self._release(session)

    def _admission_order(self, request: _Request) -> tuple[str, int, int]:
        known = self._sessions.get(request.session)
        if known is not None:
            return known.base, known.rank, request.arrival
        return ordering_base(request.session), 1 << 30, request.arrival

    def _open(self, name: str) -> Session:
        """A new session: its ordering key, and the lowest free slot (grown if none)."""
        base = ordering_base(name)
        rank = self._ranks.get(base, 0)
        self._ranks[base] = rank + 1
        taken = {s.slot for s in self._sessions.values()}
        free = [i for i in range(self.cache.slots) if i not in taken]
        if not free:
            idle = [s for s in self._sessions.values() if s.request is None]
            if idle:  # the least recently used conversation starts afresh if it comes back
                victim = min(idle, key=lambda s: s.used)
                self._release(victim)
                free = [victim.slot]
            else:
                self._grow(slots=2 * self.cache.slots)
                free = [len(taken)]
        session = Session(name=name, base=base, rank=rank, slot=free[0])
        self._sessions[name] = session
        return session

    def _start(self, session: Session, request: _Request) -> Exception | None:
        """Line up a request's new tokens after what the session's cache already holds."""
        ids = request.ids
        if len(ids) >= self.max_length:
            return ValueError(
                f"A prompt of {len(ids)} tokens does not fit the engine's {self.max_length}."
            )
        reuse = min(len(os.path.commonprefix([session.tokens, ids])), len(ids) - 1)
        if session.prefix is not None and reuse < len(session.prefix.tokens):
            session.prefix.users -= 1  # the conversation no longer starts with its prefix
            session.prefix, session.tokens, reuse = None, [], 0
        if not session.tokens:
            session.prefix = self._prefix_for(ids)
            reuse = len(session.prefix.tokens) if session.prefix is not None else 0
            if session.prefix is not None:
                session.prefix.users += 1
        needed = len(ids) - session.span[1] + request.max_new_tokens
        if needed > self.cache.length and self.cache.length < self.max_length:
            self._grow(length=min(1 << (needed - 1).bit_length(), self.max_length))
        session.tokens = ids[:reuse]
        session.pending = ids[reuse:]
        session.request, session.generated, session.logprobs = request, [], []
        session.turn += 1
        self.stats.reused_tokens += reuse
        self._running += 1
        if self.sampling.temperature > 0:
            import torch

            session.rng = torch.Generator().manual_seed(
                row_seed(self.sampling.seed, session.key, session.turn)
            )
        return None

    def _prefix_for(self, ids: list[int]) -> Prefix | None:
        """The shared first message of ``ids`` (computed now if new); None if it has none."""
        if self.eos is None or self.eos not in ids:
            return None
        end = ids.index(self.eos) + 1
        if end < MIN_PREFIX or end >= len(ids) or end > self.cache.length:
            return None
        tokens = tuple(ids[:end])
        known = self._prefixes.get(tokens)
        if known is not None:
            self._prefixes.move_to_end(tokens)
            return known
        step = make_plan([RowStep(self.cache.scratch, list(tokens), 0, (0, 0))], self.cache)
        forward(self.weights, self.cache, step)
        keys, values = self.cache.scratch_prefix(end)
        prefix = Prefix(tokens, keys, values)
        self._prefixes[tokens] = prefix
        self.stats.prefix_tokens += end
        self.stats.computed_tokens += end
        unused = [k for k, p in self._prefixes.items() if p.users == 0 and p is not prefix]
        for k in unused[: max(len(self._prefixes) - MAX_PREFIXES, 0)]:
            del self._prefixes[k]
        start = 0
        for p in self._prefixes.values():
            p.start, start = start, start + len(p.tokens)
        kept = list(self._prefixes.values())
        self.cache.set_bank([p.keys for p in kept], [p.values for p in kept])
        return prefix

    def _grow(self, slots: int = 0, length: int = 0) -> None:
        self.cache = self.cache.grown(slots, length)
        self.stats.reallocations += 1

    def _plan_rows(self) -> list[tuple[Session, list[int]]]:
        """This step's rows in slot order.

        Decode rows first get their token, then prefills share what is left of the token
        budget (a long prompt runs over several steps).
        """
        working = sorted((s for s in self._sessions.values() if s.pending), key=lambda s: s.slot)
        budget = STEP_TOKENS - sum(len(s.pending) == 1 for s in working)
        rows = []
        for s in working:
            if len(s.pending) == 1:
                rows.append((s, s.pending))
            elif budget > 0 or not rows:
                take = max(budget, 1)
                rows.append((s, s.pending[:take]))
                budget -= len(s.pending[:take])
        return rows

    def _advance(self, rows: list[tuple[Session, list[int]]], logits: Any) -> None:
        """Record the step: cached tokens, each complete row's next token, finished replies."""
        self.stats.steps += 1
        self.stats.rows += len(rows)
        self.stats.batch_sizes[len(rows)] = self.stats.batch_sizes.get(len(rows), 0) + 1
        if self.trace is not None:
            self.trace.append(tuple(s.key for s, _ in rows))
        ready = []
        for i, (s, chunk) in enumerate(rows):
            s.tokens += chunk
            s.pending = s.pending[len(chunk) :]
            s.used = self.stats.steps
            self.stats.computed_tokens += len(chunk)
            if not s.pending:
                ready.append(i)
        if not ready:
            return
        import torch

        picked = [rows[i][0] for i in ready]
        tokens, logprobs = choose(
            logits[torch.tensor(ready)], self.sampling, [s.rng for s in picked]
        )
        for s, token, logprob in zip(picked, tokens, logprobs, strict=True):
            s.generated.append(token)
            s.logprobs.append(logprob)
            self.stats.generated_tokens += 1
            assert s.request is not None
            full = s.past + 1 >= min(self.cache.length, self.max_length - s.span[1])
            if token == self.eos or len(s.generated) >= s.request.max_new_tokens or full:
                s.request.future.set_result((s.generated, s.logprobs))
                s.request = None
                self._running -= 1
            else:
                s.pending = [token]

    def _fail(self, session: Session, error: BaseException) -> None:
        if session.request is not None:
            session.request.future.set_exception(error)
            session.request = None
            self._running -= 1
        if session.name in self._sessions:
            self._release(session)


def local_engine(
    model: Any,
    tokenizer: Any,
    slots: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    dtype: str = "auto",
) -> Engine | Batcher:
    """The fastest local generator that runs ``model``: this engine, else the older Batcher.

    ``slots`` is where the engine starts (it grows when more episodes are in flight); the
    Batcher's batch is capped at 16, what its padded caches afford.
    """
    if unsupported(model) is None:
        return Engine(model, tokenizer, max_new_tokens, temperature, top_p, seed, dtype, slots)
    from trajgym.agents.batching import Batcher

    return Batcher(model, tokenizer, min(slots, 16), max_new_tokens, temperature, top_p, seed)
