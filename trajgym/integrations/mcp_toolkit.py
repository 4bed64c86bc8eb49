"""An external MCP server's tools as trajgym tools: :class:`McpToolkit`.

The tools keep the JSON schemas the server lists (they are not derived again from anything)
and are called through one MCP client session, kept open until the toolkit reconnects or
closes. The MCP client is async and trajgym's envs are sync, so the session lives on an
event loop of its own, on a background thread; each call is handed to it and waited for.

A call's failure reaches the model as trajgym's other tool errors do, a tool message
``"Error: ..."``: a result the server marks ``isError``, and a protocol error the server
answers with (an unknown tool, arguments it refuses, a crash in its handler). A lost
connection or a timeout is not the model's doing: it raises :class:`McpUnavailable`, an
infrastructure failure, which a rollout records as ``status="error"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import shlex
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from trajgym.errors import ConfigError, InfrastructureError, TrajgymError
from trajgym.tools import Toolkit
from trajgym.tools.base import Tool, ToolError

try:
    import mcp.types as types
    from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
except ImportError as e:  # the extra is not installed
    raise TrajgymError("MCP support needs the mcp package: pip install 'trajgym[mcp]'") from e

# The server's failures, not the model's: the episode is an error, not a tool message.
_UNAVAILABLE = (types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT)
_CLOSE_TIMEOUT_S = 10.0  # a stdio server gets 2 s to exit, then SIGTERM, then SIGKILL (SDK's)


class McpUnavailable(InfrastructureError):
    """The MCP server could not be reached, went away or timed out."""


class McpServerSpec(BaseModel):
    """How to reach an MCP server: a command speaking stdio, or a streamable HTTP URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: tuple[str, ...] = Field((), description="Program and arguments of a stdio server.")
    url: str | None = Field(None, description="Endpoint of a streamable HTTP server (…/mcp).")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables for a stdio server, over the few the SDK passes on (PATH, HOME).",
    )
    cwd: str | None = Field(None, description="Working directory of a stdio server.")

    @model_validator(mode="after")
    def _one_way(self) -> McpServerSpec:
        if bool(self.command) == bool(self.url):
            raise ValueError("give either a command (stdio) or a url (streamable HTTP)")
        return self

    @classmethod
    def parse(cls, text: str) -> McpServerSpec:
        """``http(s)://...`` is a URL; anything else a command line, split as a shell would."""
        if text.startswith(("http://", "https://")):
            return cls(url=text)
        return cls(command=tuple(shlex.split(text)))

    def __str__(self) -> str:
        return self.url or shlex.join(self.command)


@dataclass(frozen=True)
class McpTool(Tool[Any]):
    """A tool of an MCP server: its schema is the server's ``inputSchema``, as listed."""

    input_schema: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, Any]:
        """The server's ``inputSchema``, as it listed it."""
        return self.input_schema


class McpToolkit(Toolkit[Any]):
    """The tools of an MCP server, called through one client session (see the module doc).

    The state a toolkit's ``call`` receives is ignored: the state lives in the server. A tool
    that the server does not mark read-only (``readOnlyHint``) counts as one that writes, as
    the MCP spec's defaults say. Connects at construction; ``close()`` (or a ``with`` block)
    ends the session, and a stdio server's process with it.
    """

    def __init__(self, server: McpServerSpec | str, *, timeout_s: float = 30.0) -> None:
        """Connect to ``server`` and list its tools; an unreachable server is a ConfigError."""
        self.server = McpServerSpec.parse(server) if isinstance(server, str) else server
        self.timeout_s = timeout_s
        try:
            self._connection, listed = _Connection.open(self.server, timeout_s)
        except McpUnavailable as e:
            raise ConfigError(f"Cannot open a session with MCP server {self.server}: {e}") from e
        self._finalizer = weakref.finalize(self, _Connection.close, self._connection)
        super().__init__(self._tool(t) for t in listed)

    @property
    def history(self) -> list[tuple[str, str, bool]]:
        """The calls of this session: (tool, arguments as JSON, whether it succeeded)."""
        return self._connection.history

    @property
    def connected(self) -> bool:
        """Whether a session is open."""
        return self._finalizer.alive

    def reconnect(self) -> None:
        """End the session and start a fresh one (a new episode's); raises McpUnavailable.

        The server must list the same tools again: an env's tools are fixed when it is made.
        """
        self.close()
        self._connection, listed = _Connection.open(self.server, self.timeout_s)
        self._finalizer = weakref.finalize(self, _Connection.close, self._connection)
        tools = [self._tool(t) for t in listed]
        if tuple(t.schema for t in tools) != self.schemas:
            self.close()
            raise McpUnavailable(f"the MCP server {self.server} now lists other tools")
        self.tools = {t.name: t for t in tools}  # whose functions call the new session

    def close(self) -> None:
        """End the session (idempotent)."""
        self._finalizer()

    def __enter__(self) -> McpToolkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tool(self, listed: types.Tool) -> McpTool:
        read_only = listed.annotations is not None and listed.annotations.read_only_hint is True
        return McpTool(
            name=listed.name,
            description=listed.description or listed.title or listed.name,
            fn=functools.partial(_run, self._connection, listed.name),
            # The server validates the arguments against its own schema; this model only
            # carries them to the function.
            args_model=create_model(
                f"{listed.name}_arguments", __config__=ConfigDict(extra="allow")
            ),
            writes=not read_only,
            ends_episode=False,
            input_schema=dict(listed.input_schema),
        )


def _run(connection: _Connection, name: str, state: Any, **arguments: Any) -> str:
    """A tool's function: the result's text, or a ToolError (``Toolkit.call``'s tool message)."""
    text, failed = connection.call(name, arguments)
    connection.history.append((name, json.dumps(arguments, sort_keys=True), not failed))
    if failed:
        raise ToolError(text.removeprefix("Error: "))
    return text


class _Connection:
    """One client session held open by a task on a private event loop thread."""

    def __init__(self, server: McpServerSpec, timeout_s: float) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self.history: list[tuple[str, str, bool]] = []  # (tool, arguments, ok), in order
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mcp-client", daemon=True)
        self.session: ClientSession | None = None
        self.stop: asyncio.Event | None = None
        self.holder: concurrent.futures.Future[None] | None = None

    @classmethod
    def open(cls, server: McpServerSpec, timeout_s: float) -> tuple[_Connection, list[types.Tool]]:
        """A connected session and the tools the server lists; raises McpUnavailable."""
        connection = cls(server, timeout_s)
        connection.thread.start()
        listed: concurrent.futures.Future[list[types.Tool]] = concurrent.futures.Future()
        holding = connection._hold(listed)
        connection.holder = asyncio.run_coroutine_threadsafe(holding, connection.loop)
        try:
            return connection, listed.result(timeout=timeout_s)
        except Exception as e:
            connection.close()
            timed_out = isinstance(e, concurrent.futures.TimeoutError)
            reason = f"no answer in {timeout_s:g} s" if timed_out else _describe(e)
            raise McpUnavailable(reason) from e

    async def _hold(self, listed: concurrent.futures.Future[list[types.Tool]]) -> None:
        """Open the session, hand over the tool list, and keep it open until told to stop."""
        self.stop = asyncio.Event()
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(_transport(self.server))
                session = ClientSession(read, write, read_timeout_seconds=self.timeout_s)
                self.session = await stack.enter_async_context(session)
                await self.session.initialize()
                listed.set_result(await _list_tools(self.session))
                await self.stop.wait()
        except BaseException as e:
            if not listed.done():
                listed.set_exception(e)
            elif not isinstance(e, asyncio.CancelledError | GeneratorExit):
                raise

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """The result's text and whether it is an error; raises McpUnavailable."""
        if self.session is None or self.holder is None or self.holder.done():
            raise McpUnavailable(f"no open session with the MCP server {self.server}")
        future = asyncio.run_coroutine_threadsafe(_call(self.session, name, arguments), self.loop)
        try:
            return future.result(timeout=self.timeout_s + 5)
        except McpUnavailable:
            raise
        except Exception as e:
            future.cancel()
            raise McpUnavailable(f"calling '{name}' on {self.server}: {_describe(e)}") from e

    def close(self) -> None:
        """Stop the session (waiting for a stdio server to exit), then the loop and thread."""
        if not self.loop.is_closed():
            if self.stop is not None:
                self.loop.call_soon_threadsafe(self.stop.set)
            if self.holder is not None:
                try:
                    self.holder.result(timeout=_CLOSE_TIMEOUT_S)
                except Exception:  # closing: the session's own failure changes nothing now
                    self.holder.cancel()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=_CLOSE_TIMEOUT_S)
            if not self.thread.is_alive():
                self.loop.close()


@asynccontextmanager
async def _transport(server: McpServerSpec) -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) streams of the server's transport."""
    if server.url is not None:
        async with streamable_http_client(server.url) as streams:
            yield streams
        return
    program, *args = server.command
    params = StdioServerParameters(
        command=program, args=args, env=dict(server.env) or None, cwd=server.cwd
    )
    async with stdio_client(params) as streams:
        yield streams


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


async def _call(session: ClientSession, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
    try:
        result = await session.call_tool(name, arguments)
    except MCPError as e:
        if e.code in _UNAVAILABLE:
            raise McpUnavailable(f"calling '{name}': {e.message}") from e
        return e.message, True  # a protocol error the server answered: the model can act on it
    except RuntimeError as e:  # a result the SDK refuses (structured content off its schema)
        return str(e), True
    return _render(result), result.is_error


def _render(result: types.CallToolResult) -> str:
    """A result's content as text: text blocks as they are, other blocks named."""
    parts = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {resource.uri}]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link {block.uri}]")
        else:
            parts.append(f"[{block.type} {getattr(block, 'mime_type', '')}]".replace(" ]", "]"))
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, separators=(",", ":"), default=str)
    return "\n".join(parts)


def _describe(error: BaseException) -> str:
    """An exception in a line; an exception group (anyio's) by its first leaf."""
    while getattr(error, "exceptions", None):
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"
