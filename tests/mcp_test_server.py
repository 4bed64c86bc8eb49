"""A small MCP server for the tests: notes kept in memory, one process per stdio session.

Run as ``python tests/mcp_test_server.py`` (stdio). ``read_note`` of a missing note is a tool
error (``isError``); ``crash`` exits the process mid-call (a lost connection).
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("notes")
notes: dict[str, str] = {}


@server.tool()
def add_note(title: str, body: str) -> str:
    """Save a note under a title (replacing one with the same title)."""
    notes[title] = body
    return f"Saved note '{title}'."


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_note(title: str) -> str:
    """Read the note with this title."""
    if title not in notes:
        raise ToolError(f"no note titled '{title}'; titles: {sorted(notes)}")
    return notes[title]


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def crash() -> str:
    """Exit the server process at once."""
    os._exit(3)


if __name__ == "__main__":
    server.run("stdio")
