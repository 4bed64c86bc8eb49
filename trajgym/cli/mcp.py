"""``trajgym mcp ENV``: an environment's episodes served to MCP clients (stdio or HTTP)."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer

from trajgym.cli.common import SPLIT_HELP
from trajgym.records.schema import Split


def mcp(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/RetailLite-v0.")],
    transport: Annotated[
        Literal["stdio", "http"],
        typer.Option(help="stdio (one client, its own process) or http (streamable HTTP)."),
    ] = "stdio",
    host: Annotated[str, typer.Option(help="HTTP: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP: the port to listen on.")] = 8000,
    split: Annotated[Split, typer.Option(help=SPLIT_HELP)] = "train",
    task_id: Annotated[
        str | None, typer.Option(help="The task every session plays (default: drawn by seed).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of every session's reset (task, persona, user).")
    ] = None,
) -> None:
    """Serve an environment's tools over MCP: each client session plays its own episode.

    A session gets the env's tools (trajgym's schemas; a tool error is a result with
    isError, `is_error` in the Python SDK), `message_user` to talk to the simulated user,
    `episode_info` (also the resource trajgym://episode) for the policy and the user's
    opening message, and
    `finish_episode` for the verified reward. Over HTTP the endpoint is
    http://HOST:PORT/mcp and sessions need the initialize handshake.
    """
    from trajgym.integrations.mcp_server import EpisodeSettings, serve

    settings = EpisodeSettings(env_id=env_id, split=split, task_id=task_id, seed=seed)
    if transport == "http":  # stdout is the protocol's under stdio: say nothing there
        print(f"Serving {env_id} over MCP at http://{host}:{port}/mcp", file=sys.stderr)
    serve(settings, transport, host=host, port=port)
