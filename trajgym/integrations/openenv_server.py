"""``trajgym serve``: a trajgym environment behind OpenEnv's own HTTP and WebSocket server.

The protocol is OpenEnv's: its ``HTTPEnvServer`` registers the routes (``/ws`` sessions,
the stateless ``/reset``, ``/step`` and ``/state``, ``/schema``, ``/metadata``,
``/health``) and gives each WebSocket connection its own environment, up to
``max_concurrent_envs``, in a thread of its own. :class:`TrajgymEnvServer` adds only what
it lacks for many long-lived sessions in one server:

- idle expiry that can be tested and tuned: OpenEnv's reaper wakes at most every 5 s and
  may close a session in the middle of a long step; here it wakes every
  ``reap_every_s`` and spares a session whose step is running;
- an expired session's connection answers with a clear error (OpenEnv closes the
  environment but the WebSocket goes on using it);
- a capacity error that says how to get more sessions;
- every session still open at shutdown is closed (its sandbox released).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from openenv.core.env_server.exceptions import SessionCapacityError
from openenv.core.env_server.http_server import HTTPEnvServer
from openenv.core.env_server.types import ConcurrencyConfig, Observation, WSErrorCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from trajgym.envs import tool_env
from trajgym.envs.users.base import UserFactory
from trajgym.errors import ConfigError
from trajgym.integrations.openenv import TrajgymAction, TrajgymEnvironment, TrajgymObservation

log = logging.getLogger(__name__)
DEFAULT_MAX_SESSIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 900.0


class TrajgymEnvServer(HTTPEnvServer):
    """OpenEnv's ``HTTPEnvServer`` for one trajgym environment, one env per session."""

    def __init__(
        self,
        env_id: str,
        *,
        split: str = "train",
        user: UserFactory | str = "scripted",
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
        reap_every_s: float | None = None,
        **env_kwargs: Any,
    ) -> None:
        """Serve ``env_id``; a session idle ``idle_timeout_s`` (None: never) is closed.

        The environment is made once now, so that a wrong id or split fails before serving
        (and the task lists are cached before sessions race to build them).
        """
        if max_sessions < 1:
            raise ConfigError(f"max_sessions must be at least 1, not {max_sessions}.")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ConfigError(f"The idle timeout must be positive seconds, not {idle_timeout_s}.")
        probe = tool_env(env_id, split=split, user=user, **env_kwargs)
        try:
            probe.tasks()
        finally:
            probe.close()
        factory = functools.partial(TrajgymEnvironment, env_id, split, user, **env_kwargs)
        config = ConcurrencyConfig(max_concurrent_envs=max_sessions, session_timeout=idle_timeout_s)
        super().__init__(factory, TrajgymAction, TrajgymObservation, concurrency_config=config)
        self.env_id, self.split = env_id, split
        timeout = idle_timeout_s or 0.0
        self.reap_every_s = reap_every_s or min(max(timeout / 4, 0.05), 5.0)
        self._busy: set[str] = set()

    async def _create_session(self) -> tuple[str, Any]:
        try:
            return await super()._create_session()
        except SessionCapacityError as e:
            expiry = self._session_idle_timeout_s
            raise SessionCapacityError(
                e.active_sessions,
                e.max_sessions,
                message=(
                    f"Server at capacity: {e.active_sessions}/{e.max_sessions} sessions are "
                    "open. Close a client, or restart `trajgym serve` with a larger "
                    "--max-sessions"
                    + (f" (idle sessions are closed after {expiry:g} s)." if expiry else ".")
                ),
            ) from None

    async def _run_in_session_executor(
        self, session_id: str, func: Callable[..., Observation], *args: Any, **kwargs: Any
    ) -> Observation:
        # A session whose reset or step is running is not idle, however long it takes.
        self._busy.add(session_id)
        try:
            return await super()._run_in_session_executor(session_id, func, *args, **kwargs)
        finally:
            self._busy.discard(session_id)
            self._update_session_activity(session_id)

    async def _reap_idle_sessions(self) -> None:
        """Close the sessions idle past the timeout, every ``reap_every_s``."""
        timeout = self._session_idle_timeout_s
        if timeout is None:
            return
        while True:
            try:
                await asyncio.sleep(self.reap_every_s)
                await self.reap(timeout)
            except asyncio.CancelledError:
                break
            except Exception as e:  # the reaper must outlive one bad session
                log.warning("The idle-session reaper failed (it will retry): %s", e)

    async def reap(self, timeout: float) -> list[str]:
        """Close every session without a reset or step for ``timeout`` seconds; their ids."""
        now = time.time()
        async with self._session_lock:
            stale = [
                sid
                for sid, info in self._session_info.items()
                if now - info.last_activity_at > timeout and sid not in self._busy
            ]
            for sid in stale:
                env = self._sessions.get(sid)
                if isinstance(env, TrajgymEnvironment):
                    env.closed_because = f"expired after {timeout:g} s without a reset or step"
        for sid in stale:
            await self._destroy_session(sid)
        if stale:
            log.info("Closed %d idle session(s).", len(stale))
        return stale

    async def close_all_sessions(self) -> None:
        """Close every open session (at shutdown): each env's episode ends, its hold released."""
        async with self._session_lock:
            open_ids = [sid for sid, env in self._sessions.items() if env is not None]
        for sid in open_ids:
            await self._destroy_session(sid)


class WebSocketEndings:
    """Two fixes to how OpenEnv's ``/ws`` handler ends a connection (an ASGI middleware).

    - A refused session (the server is full): the handler sends its error and closes at
      once, usually before OpenEnv's client has sent its first message; that send then
      fails with "received 1000 (OK)" and the error is never read. Here the close waits
      (``read_s`` at most) for the client's first message, so the client reads the error.
    - A session's end: the handler closes the env and then the socket, which raises
      ``WebSocketDisconnect`` when the client hung up first (as OpenEnv's client does):
      a traceback in the log for every session. It is dropped here.
    """

    def __init__(self, app: ASGIApp, read_s: float = 5.0) -> None:
        """Wrap ``app``."""
        self.app, self.read_s = app, read_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the call on, ending WebSockets as described above."""
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        refused = False

        async def sending(message: Message) -> None:
            nonlocal refused
            if message["type"] == "websocket.send":
                refused = refused or f'"{WSErrorCode.CAPACITY_REACHED.value}"' in (
                    message.get("text") or ""
                )
            elif message["type"] == "websocket.close" and refused:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receive(), self.read_s)
            await send(message)

        with contextlib.suppress(WebSocketDisconnect):
            await self.app(scope, receive, sending)


def make_app(
    env_id: str,
    *,
    split: str = "train",
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    reap_every_s: float | None = None,
    user: UserFactory | str = "scripted",
    **env_kwargs: Any,
) -> FastAPI:
    """A FastAPI app serving ``env_id`` with OpenEnv's routes (its server: ``app.state.server``).

    Raises:
        UnknownEnvironmentError: ``env_id`` is not registered (the message suggests one).
        ConfigError: a bad split, session limit or timeout.
    """
    server = TrajgymEnvServer(
        env_id,
        split=split,
        user=user,
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout_s,
        reap_every_s=reap_every_s,
        **env_kwargs,
    )
    app = FastAPI(
        title=f"trajgym {env_id} (OpenEnv)",
        description=f"{env_id} served with OpenEnv's protocol: WebSocket sessions at /ws.",
    )
    server.register_routes(app)
    app.add_middleware(WebSocketEndings)
    app.router.on_shutdown.append(server.close_all_sessions)
    app.state.server = server
    return app


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on a background thread (port 0: a free one); yields its base URL."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="trajgym-openenv", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"The server did not start on {host}:{port}.")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
