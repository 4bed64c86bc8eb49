"""Record and replay every LLM call: an append-only JSONL cassette keyed by request.

A cassette holds one line per model call: which call it was, and what came back (the
assistant message, usage and finish reason) or the :class:`ProviderError` it ended in. A
call is named by three things:

- ``request``: the sha256 of a canonical JSON of what decides the answer (model, messages,
  tools, temperature, top_p, max_tokens, seed); never keys, URLs, timeouts or retries.
- ``scope``: labels the caller sets around calls made one after another
  (:func:`cassette_scope`; generation scopes each episode, grading each trajectory).
  Episodes run concurrently, so identical requests of different episodes arrive in no fixed
  order; within one scope they do.
- ``n``: how many identical requests came earlier in the scope, so a simulated user that
  re-asks, or a sampled model asked the same thing twice, gets each recorded answer in turn.

Recording answers a call from the cassette when it holds a successful answer under that key
(a resumed run stays consistent with its cassette) and otherwise calls the provider and
appends the outcome; a recorded failure is tried again, and the later line wins. Replaying
never calls a provider: a call the cassette lacks raises :class:`NotRecorded`, a
``ProviderError``, so the episode or grade becomes an error like any provider failure.

Each line is one ``write`` on an ``O_APPEND`` descriptor: a crash leaves at most a torn last
line, which opening for recording cuts off (replaying skips it). Threads share one
:class:`Cassette` per file (:func:`open_cassette`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from trajgym.errors import ConfigError, ProviderError, TrajgymError
from trajgym.records.schema import Frozen, Message, Usage

# Shared with the trajectory store: both files are append-only JSONL with the same crash rule.
from trajgym.records.store import cut_torn_tail

RECORD_ENV = "TRAJGYM_RECORD"
REPLAY_ENV = "TRAJGYM_REPLAY"

CallKey = tuple[tuple[str, ...], str, int]
"""(scope labels, request hash, occurrence n): one recorded call."""


class CassetteError(TrajgymError):
    """A cassette file that is missing or cannot be read as written by trajgym."""


class NotRecorded(ProviderError):
    """A replayed run made a call its cassette does not hold; no provider was called."""


class RecordedCall(Frozen):
    """One line of a cassette: a call's key and its outcome (a message or an error)."""

    version: Literal[1] = 1
    scope: tuple[str, ...] = Field(description="Labels of the scope the call was made in.")
    request: str = Field(description="sha256 of the canonical request (see request_hash).")
    n: int = Field(ge=0, description="Identical requests made earlier in the same scope.")
    model: str = Field(description="The litellm model, for readers of the file.")
    message: Message | None = Field(None, description="The assistant message, if it succeeded.")
    usage: Usage = Field(default_factory=Usage, description="What the call cost.")
    finish_reason: str | None = None
    error: str | None = Field(None, description="The final ProviderError text, if it failed.")

    @model_validator(mode="after")
    def _one_outcome(self) -> RecordedCall:
        if (self.message is None) == (self.error is None):
            raise ValueError("a recorded call holds either a message or an error")
        return self

    @property
    def key(self) -> CallKey:
        """(scope, request, n)."""
        return (self.scope, self.request, self.n)


def request_hash(request: dict[str, Any]) -> str:
    """The sha256 of ``request`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(
        request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


# Scopes --------------------------------------------------------------------------------------


class Scope:
    """Labels naming a sequence of calls made one after another, and the requests seen in it."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def occurrence(self, request: str) -> int:
        """How many identical requests came earlier in this scope; counts this one."""
        with self._lock:
            n = self._seen[request]
            self._seen[request] = n + 1
        return n


# A context variable, not a global: each worker thread (or asyncio task) has its own.
_current: ContextVar[Scope | None] = ContextVar("trajgym_cassette_scope", default=None)


@contextmanager
def cassette_scope(*labels: str | int) -> Iterator[Scope]:
    """Name the calls made inside (in this thread or task) for record and replay.

    Nested scopes add their labels to the outer ones. Each entry counts identical requests
    from zero, so labels must name one sequence of calls: entering the same labels again
    gets the same recorded answers.
    """
    outer = _current.get()
    scope = Scope((outer.labels if outer else ()) + tuple(str(x) for x in labels))
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def episode_scope(
    key: tuple[str, str, int], role: str | None = None
) -> AbstractContextManager[Scope]:
    """The scope of one episode's calls (teacher and user), or of its grading (role 'judge').

    The environment enters without its ``-vN``: a version that changes only the reward asks
    the same requests under the same scope, so its episodes can replay an older cassette as
    far as their requests agree. (Episode seeds still hash the full id, so a persona drawn
    per episode can differ across versions; then the user's requests differ too.)
    """
    env_id, task_id, sample_index = key
    extra = (role,) if role else ()
    return cassette_scope(re.sub(r"-v\d+$", "", env_id), task_id, sample_index, *extra)


def current_scope() -> Scope | None:
    """The innermost scope entered in this thread or task, if any."""
    return _current.get()


# The file ------------------------------------------------------------------------------------


class Cassette:
    """An append-only JSONL file of recorded calls, indexed by key; thread-safe.

    The index keeps where each line lies, not the line: a large run's cassette stays on disk
    and each replayed call reads its own line.
    """

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        self.writable = writable
        self.repaired_bytes = 0
        self._lock = threading.Lock()
        self._index: dict[CallKey, tuple[int, int]] = {}
        self._per_scope: Counter[tuple[str, ...]] = Counter()
        if writable:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.repaired_bytes = cut_torn_tail(self.path)
            self._writer = self.path.open("ab", buffering=0)
        elif not self.path.is_file():
            raise CassetteError(
                f"Cassette '{self.path}' does not exist. Record one first: "
                f"`trajgym generate ... --record {self.path}` or {RECORD_ENV}={self.path}."
            )
        self._reader = self.path.open("rb", buffering=0)
        self._load()
        stat = os.fstat(self._reader.fileno())
        self._size, self._inode = stat.st_size, stat.st_ino

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: CallKey) -> RecordedCall | None:
        """The latest record under ``key``, or None."""
        with self._lock:
            where = self._index.get(key)
        if where is None:
            return None
        offset, length = where
        return RecordedCall.model_validate_json(os.pread(self._reader.fileno(), length, offset))

    def calls_in(self, scope: tuple[str, ...]) -> int:
        """How many distinct calls the cassette holds in ``scope``."""
        with self._lock:
            return self._per_scope[scope]

    def append(self, record: RecordedCall) -> None:
        """Write ``record`` as one line (one ``write``) and index it; later lines win."""
        if not self.writable:
            raise CassetteError(f"Cassette '{self.path}' is open for replay, not recording.")
        data = (record.model_dump_json(exclude_none=True) + "\n").encode()
        with self._lock:
            written = self._writer.write(data)
            if written != len(data):  # a full disk, say: never leave half a record behind
                raise OSError(f"short write to cassette '{self.path}'")
            # O_APPEND leaves the position after this very line, even if others appended.
            end = self._writer.tell()
            self._note(record.key, end - len(data), len(data))
            self._size = max(self._size, end)

    def changed(self) -> bool:
        """Whether the file was replaced or written by someone else since it was read."""
        with self._lock:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                return True
            return stat.st_ino != self._inode or stat.st_size != self._size

    def close(self) -> None:
        """Close the file (every record is already written)."""
        with self._lock:
            self._reader.close()
            if self.writable:
                self._writer.close()

    def _load(self) -> None:
        """Index every complete line."""
        offset = 0
        with self.path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break  # torn by a crash: cut when recording, skipped when replaying
                if line.strip():
                    try:
                        record = RecordedCall.model_validate_json(line)
                    except ValidationError as e:
                        first = e.errors(include_url=False)[0]
                        where = ".".join(str(p) for p in first["loc"])
                        raise CassetteError(
                            f"{self.path}:{number} is not a trajgym cassette record "
                            f"({where}: {first['msg']}). Remove or fix that line."
                        ) from None
                    self._note(record.key, offset, len(line))
                offset += len(line)

    def _note(self, key: CallKey, offset: int, length: int) -> None:
        if key not in self._index:
            self._per_scope[key[0]] += 1
        self._index[key] = (offset, length)


_open: dict[Path, Cassette] = {}
_open_lock = threading.Lock()


def open_cassette(path: str | Path, writable: bool = False) -> Cassette:
    """The process's shared :class:`Cassette` for ``path``, read again if the file changed.

    Every client of a run (teacher, user, judge) then appends through one lock and sees the
    others' records.
    """
    resolved = Path(path).resolve()
    with _open_lock:
        cassette = _open.get(resolved)
        if cassette is None or (writable and not cassette.writable) or cassette.changed():
            cassette = _open[resolved] = Cassette(resolved, writable)
        return cassette


def cassette_for(record: Path | None, replay: Path | None) -> tuple[Cassette | None, bool]:
    """The cassette a client uses and whether it replays; env vars apply when both are None.

    Args:
        record: Record into this cassette (a client's config, or its run's).
        replay: Replay from this cassette.

    Returns:
        The open cassette (None: neither records nor replays) and True when replaying.
    """
    if record is None and replay is None:
        record_env, replay_env = os.environ.get(RECORD_ENV), os.environ.get(REPLAY_ENV)
        if record_env and replay_env:
            raise ConfigError(f"Set either {RECORD_ENV} or {REPLAY_ENV}, not both.")
        record = Path(record_env) if record_env else None
        replay = Path(replay_env) if replay_env else None
    if replay is not None:
        return open_cassette(replay), True
    if record is not None:
        return open_cassette(record, writable=True), False
    return None, False


def not_recorded(cassette: Cassette, model: str, key: CallKey) -> NotRecorded:
    """The error for a replayed call the cassette lacks, saying what to check."""
    scope, request, n = key
    held = cassette.calls_in(scope)
    where = "/".join(scope) or "(no scope)"
    return NotRecorded(
        f"{model}: not in cassette '{cassette.path}' (replay never calls the provider): "
        f"request {request[:12]} #{n} in scope {where}, which holds {held} recorded calls. "
        "The run asks what the recorded one did not (a changed prompt, tool, task, model or "
        "decoding setting), or the recording stopped first; record again with --record."
    )
