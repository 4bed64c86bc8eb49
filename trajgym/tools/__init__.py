"""Tools: typed functions whose JSON schemas come from their signatures."""

from trajgym.tools.base import Tool, ToolError, tool
from trajgym.tools.toolkit import Toolkit, ToolOutcome

__all__ = ["Tool", "ToolError", "ToolOutcome", "Toolkit", "tool"]
