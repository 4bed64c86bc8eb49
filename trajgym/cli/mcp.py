"""``trajgym mcp ENV``: an environment's episodes served to MCP clients (stdio or HTTP)."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer

from trajgym.errors import ConfigError
from trajgym.records.schema import SPLITS


def mcp(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/RetailLite-v0.")],
    transport: Annotated[
        str, typer.Option(help="stdio (one client, its own process) or http (streamable HTTP).")
    ] = "stdio",
    host: Annotated[str, typer.Option(help="HTTP: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP: the port to listen on.")] = 8000,
    split: Annotated[str, typer.Option(help="train, test or ood: whose tasks.")] = "train",
    task_id: Annotated[
        str | None, typer.Option(help="The task every session plays (default: drawn by seed).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of every session's reset (task, persona, user).")
    ] = None,
) -> None:
    """Serve an environment's tools over MCP: each client session plays its own episode.

    A session gets the env's tools (trajgym's schemas; a tool error is a result with
    isError), `message_user` to talk to the simulated user, `episode_info` (also the
    resource trajgym://episode) for the policy and the user's opening message, and
    `finish_episode` for the verified reward. Over HTTP the endpoint is
    http://HOST:PORT/mcp and sessions need the initialize handshake.
    """
    if transport not in ("stdio", "http"):
        raise ConfigError(f"Unknown transport '{transport}': choose stdio or http.")
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}'. Choose one of: {', '.join(SPLITS)}.")
    from trajgym.integrations.mcp_server import EpisodeSettings, serve

    settings = EpisodeSettings(env_id=env_id, split=split, task_id=task_id, seed=seed)
    kind: Literal["stdio", "http"] = "http" if transport == "http" else "stdio"
    if kind == "http":  # stdout is the protocol's under stdio: say nothing there
        print(f"Serving {env_id} over MCP at http://{host}:{port}/mcp", file=sys.stderr)
    serve(settings, kind, host=host, port=port)
