"""``trajgym mcp ENV``: an episode's tools served to MCP clients, one episode per session.

Each client session plays its own episode on a trajgym env of its own (``tool_env``, reset
with the server's seed and task id). What the session sees:

- the env's tools, with trajgym's schemas; a call is the assistant's tool call, applied with
  ``env.step``, and a tool message ``"Error: ..."`` comes back as a result with ``isError``;
- ``message_user(message)``: say something to the simulated user and get the reply (the
  assistant's text turn). When the user ends the conversation, or a tool ends the episode
  (a transfer), the episode is verified and the reply says so, with the reward;
- ``episode_info()`` and the resource ``trajgym://episode``: the policy (the env's system
  prompt), the user's opening message, and once the episode is over its verdict (JSON);
- ``finish_episode()``: verify now (the client is done) and return the verdict.

After the verdict every tool but ``episode_info`` is an error. When the session ends, the
env's ``end_episode()`` and ``close()`` run. The task's hidden goal is never shown.

Sessions: over stdio one process serves one client, so the process holds the episode (the
2026-07-28 protocol's per-request connections included). Over streamable HTTP each
handshake session (``Mcp-Session-Id``) holds one; the 2026-07-28 protocol has no sessions,
so this server declines ``server/discover``, which sends the SDK's ``mcp.Client`` (mode
``auto``) to the handshake, and refuses episode calls that come without a session.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from trajgym.envs import tool_env
from trajgym.envs.base import ToolEnv
from trajgym.envs.users.base import STOP
from trajgym.errors import ConfigError, InfrastructureError, TrajgymError
from trajgym.records.schema import FunctionCall, Message, ToolCall, Verdict

try:
    import anyio
    import mcp.types as types
    import uvicorn
    from mcp import MCPError
    from mcp.server import Server, ServerRequestContext
    from mcp.server.stdio import stdio_server
    from mcp.types.version import MODERN_PROTOCOL_VERSIONS
    from starlette.applications import Starlette
except ImportError as e:  # the extra is not installed
    raise TrajgymError("MCP support needs the mcp package: pip install 'trajgym[mcp]'") from e

EPISODE_URI = "trajgym://episode"
TALK, INFO, FINISH = "message_user", "episode_info", "finish_episode"
_SESSION_KEY = "trajgym.episode"  # in a connection's state
_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_EXTRA_TOOLS = (
    types.Tool(
        name=TALK,
        description="Say something to the user and get their reply. When the user ends the "
        "conversation, the episode is verified and the reply gives the reward.",
        input_schema={
            "type": "object",
            "properties": {"message": {"type": "string", "description": "What to tell the user."}},
            "required": ["message"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name=INFO,
        description="The episode: your policy, the user's opening message, and once it is "
        "over its verdict and reward (JSON).",
        input_schema=_NO_ARGS,
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name=FINISH,
        description="End the episode now and verify it; returns the verdict and reward.",
        input_schema=_NO_ARGS,
    ),
)


class EpisodeSettings(BaseModel):
    """Which episode every session plays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env_id: str
    split: str = "train"
    task_id: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Reply:
    """A tool's answer to the client."""

    text: str
    is_error: bool = False


class Episode:
    """One session's episode: a trajgym env of its own, reset when made."""

    def __init__(self, settings: EpisodeSettings) -> None:
        """Make and reset the env; an unknown env, split or task raises a TrajgymError."""
        self.env: ToolEnv[Any] = tool_env(settings.env_id, split=settings.split)
        try:
            options = {"task_id": settings.task_id} if settings.task_id else None
            obs, self.info = self.env.reset(seed=settings.seed, options=options)
        except BaseException:
            self.env.close()
            raise
        self.settings = settings
        self.opening = obs.messages[0].text
        self.verdict: Verdict | None = None
        self.termination: str | None = None
        self._calls = 0
        self._lock = threading.RLock()  # a client may send requests concurrently
        self._closed = False

    def tools(self) -> list[types.Tool]:
        """The env's tools (trajgym's schemas), then the episode's own."""
        listed = [
            types.Tool(
                name=tool.name,
                description=tool.schema["function"]["description"],
                input_schema=tool.schema["function"]["parameters"],
                annotations=types.ToolAnnotations(read_only_hint=not tool.writes),
            )
            for tool in self.env.toolkit.tools.values()
        ]
        clash = {t.name for t in listed} & {t.name for t in _EXTRA_TOOLS}
        if clash:
            raise ConfigError(f"{self.env.id} has tools named like the episode's own: {clash}")
        return listed + list(_EXTRA_TOOLS)

    def handle(self, name: str, arguments: dict[str, Any]) -> Reply:
        """Answer one tool call; an infrastructure failure raises InfrastructureError."""
        with self._lock:
            if name == INFO:
                return Reply(json.dumps(self.describe(), indent=1))
            if name == FINISH:
                if self.verdict is None:
                    self.verdict, self.termination = self.env.verify(), "finished"
                return Reply(json.dumps(self._result(), indent=1))
            if self.verdict is not None:
                return Reply(f"Error: the episode is over ({self._ended()}).", True)
            if name == TALK:
                return self._talk(arguments.get("message"))
            return self._tool(name, arguments)

    def describe(self) -> dict[str, Any]:
        """What the client may know: the policy, the user's opening, and the outcome."""
        with self._lock:
            return self._description()

    def _description(self) -> dict[str, Any]:
        return {
            "env_id": self.env.id,
            "task_id": self.info["task_id"],
            "split": self.settings.split,
            "persona": self.info["persona"],
            "policy": self.info["system_prompt"],
            "user_opening": self.opening,
            "turns": len(self.env.transcript),
            "done": self.verdict is not None,
            **(self._result() if self.verdict is not None else {}),
        }

    def close(self) -> None:
        """Release the env (idempotent): its episode's holdings, then the env itself."""
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self.env.end_episode()
                finally:
                    self.env.close()

    def _talk(self, message: Any) -> Reply:
        if not isinstance(message, str) or not message.strip():
            return Reply("Error: 'message' must be the text to tell the user.", True)
        reply = self._step(Message(role="assistant", content=message))
        text = reply.text.replace(STOP, "").strip()
        if self.verdict is not None:
            text += f"\n\n[The user ended the conversation: {self._ended()}.]"
        return Reply(text)

    def _tool(self, name: str, arguments: dict[str, Any]) -> Reply:
        self._calls += 1
        call = ToolCall(
            id=f"mcp_{self._calls}",
            function=FunctionCall(name=name, arguments=json.dumps(arguments)),
        )
        result = self._step(Message(role="assistant", tool_calls=(call,)))
        text = result.text
        if self.verdict is not None:
            text += f"\n\n[This ended the episode: {self._ended()}.]"
        return Reply(text, result.text.startswith("Error:"))

    def _step(self, action: Message) -> Message:
        obs, _, terminated, _, info = self.env.step(action)
        if terminated:
            self.verdict, self.termination = info["verdict"], info["termination"]
        return obs.messages[0]

    def _ended(self) -> str:
        assert self.verdict is not None
        return f"verified, reward {self.verdict.reward:g}; call {INFO} for the verdict"

    def _result(self) -> dict[str, Any]:
        assert self.verdict is not None
        return {
            "reward": self.verdict.reward,
            "termination": self.termination,
            "verdict": self.verdict.model_dump(mode="json"),
        }


class _Sessions:
    """Finds a request's episode: the process's (stdio), or its HTTP session's."""

    def __init__(self, settings: EpisodeSettings, shared: Episode | None) -> None:
        self.settings = settings
        self.shared = shared
        self._lock = anyio.Lock()

    async def episode(self, ctx: ServerRequestContext[Any, Any]) -> Episode:
        if self.shared is not None:
            return self.shared
        # mcp 2.3 hands lowlevel handlers no public path to their Connection (ServerSession
        # keeps it as `_connection`); its `state` and `exit_stack` are the public, documented
        # per-connection scratch space and teardown.
        connection = getattr(ctx.session, "_connection", None)
        if connection is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            raise MCPError(
                code=types.INVALID_REQUEST,
                message="this server plays one episode per MCP session, which the 2026-07-28 "
                "protocol does not have: connect with the initialize handshake (mcp.Client(url, "
                "mode='legacy'), or ClientSession.initialize()).",
            )
        async with self._lock:  # one episode per session, even for concurrent first calls
            episode = connection.state.get(_SESSION_KEY)
            if episode is None:
                episode = await anyio.to_thread.run_sync(Episode, self.settings)
                connection.state[_SESSION_KEY] = episode
                connection.exit_stack.push_async_callback(anyio.to_thread.run_sync, episode.close)
        assert isinstance(episode, Episode)
        return episode


class _Handlers:
    """The server's request handlers: tools and the episode resource, per session."""

    def __init__(self, sessions: _Sessions, tools: list[types.Tool]) -> None:
        self.sessions = sessions
        self.tools = tools
        self.resource = types.Resource(
            uri=EPISODE_URI,
            name="episode",
            description="This session's episode: policy, the user's opening message, outcome.",
            mime_type="application/json",
        )

    async def list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        episode = await self.sessions.episode(ctx)
        arguments = params.arguments or {}
        try:
            reply = await anyio.to_thread.run_sync(episode.handle, params.name, arguments)
        except InfrastructureError as e:  # a user or judge down: no answer the model can use
            raise MCPError(code=types.INTERNAL_ERROR, message=f"trajgym: {e}") from e
        content: list[types.ContentBlock] = [types.TextContent(text=reply.text)]
        return types.CallToolResult(content=content, is_error=reply.is_error)

    async def list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[self.resource])

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        if params.uri != EPISODE_URI:
            raise MCPError(code=types.INVALID_PARAMS, message=f"No resource {params.uri}.")
        episode = await self.sessions.episode(ctx)
        text = json.dumps(await anyio.to_thread.run_sync(episode.describe), indent=1)
        mime = self.resource.mime_type
        contents = types.TextResourceContents(uri=EPISODE_URI, mime_type=mime, text=text)
        return types.ReadResourceResult(contents=[contents])


def build_server(
    settings: EpisodeSettings, tools: list[types.Tool], shared: Episode | None = None
) -> Server[Any]:
    """The lowlevel MCP server: ``shared`` serves every request (stdio), else one a session."""
    handlers = _Handlers(_Sessions(settings, shared), tools)
    return Server(
        "trajgym",
        instructions=(
            f"Each session plays one episode of {settings.env_id}: call {INFO} (or read "
            f"{EPISODE_URI}) for your policy and the user's opening message, use the tools, "
            f"talk to the user with {TALK}; {FINISH} ends the episode and returns its reward."
        ),
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_resources=handlers.list_resources,
        on_read_resource=handlers.read_resource,
    )


def http_app(settings: EpisodeSettings, host: str = "127.0.0.1", path: str = "/mcp") -> Starlette:
    """A streamable HTTP app (ASGI) serving one episode per session; checks the settings now."""
    probe = Episode(settings)
    try:
        tools = probe.tools()
    finally:
        probe.close()
    server = build_server(settings, tools)

    async def decline_discover(ctx: Any, params: Any) -> None:
        # `mcp.Client`'s auto mode falls back to the handshake on any error but -32022.
        raise MCPError(code=types.METHOD_NOT_FOUND, message="sessions need the handshake")

    server.add_request_handler("server/discover", types.RequestParams, decline_discover)
    return server.streamable_http_app(host=host, streamable_http_path=path)


def serve(
    settings: EpisodeSettings,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Serve until stdin closes (stdio) or the process is stopped (http)."""
    if transport == "http":
        config = uvicorn.Config(http_app(settings, host), host=host, port=port, log_level="warning")
        uvicorn.Server(config).run()
        return
    episode = Episode(settings)  # a bad env, split or task fails here, before serving
    if threading.current_thread() is threading.main_thread():
        # The SDK's client sends SIGTERM to a server that is slow to exit once stdin closes
        # (mcp/client/stdio.py): the episode must still be released.
        signal.signal(signal.SIGTERM, _exit)
    try:
        server = build_server(settings, episode.tools(), shared=episode)
        anyio.run(_serve_stdio, server)
    finally:
        episode.close()


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


async def _serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
