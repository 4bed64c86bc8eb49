"""``trajgym serve ENV``: an environment served with OpenEnv's HTTP and WebSocket protocol."""

from __future__ import annotations

from typing import Annotated

import typer

from trajgym.cli.common import SPLIT_HELP, console
from trajgym.errors import TrajgymError
from trajgym.records.schema import Split

# What `pip install 'trajgym[openenv]'` brings; a missing one of these is the extra missing.
OPENENV_PACKAGES = ("openenv", "fastapi", "uvicorn", "websockets")


def serve(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/RetailLite-v0.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every one.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    split: Annotated[Split, typer.Option(help=SPLIT_HELP)] = "train",
    max_sessions: Annotated[
        int, typer.Option(help="Sessions open at once, each with its own environment.")
    ] = 64,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds a session may go without a reset or step; 0: forever.")
    ] = 900.0,
) -> None:
    """Serve an environment with OpenEnv's protocol, many sessions at once.

    Each WebSocket connection (OpenEnv's EnvClient, at /ws) is a session with its own
    environment: reset (seed, task_id, persona, split), step with the assistant's message
    (content and/or tool_calls), state. The last step's observation carries the verified
    verdict. A session ends when its client closes, or after --idle-timeout seconds idle;
    either way its episode is ended (a Workspace sandbox is released).
    """
    try:
        from trajgym.integrations.openenv_server import make_app, run
    except ImportError as e:
        if (e.name or "").split(".")[0] not in OPENENV_PACKAGES:
            raise
        raise TrajgymError(
            f"`trajgym serve` needs OpenEnv ({e.name} is missing): pip install 'trajgym[openenv]'"
        ) from e
    app = make_app(
        env_id,
        split=split,
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout or None,
    )
    expiry = f"{idle_timeout:g} s" if idle_timeout else "never"
    console.print(
        f"Serving {env_id} ({split}) on http://{host}:{port}: WebSocket sessions at /ws, "
        f"at most {max_sessions} at once, idle expiry {expiry}."
    )
    run(app, host=host, port=port)
