"""A self-contained HTML viewer for trajectory files: one page, no network, data inline.

The page is a template with its stylesheet and script inlined (``viewer_assets/``) and the
trajectories embedded as JSON in a ``<script type="application/json">`` element. Model output
is untrusted: the JSON is escaped so that no text can close that element, and the script
only ever puts data into the page as text (``textContent``), never as HTML.

Long strings that repeat in every trajectory of a file (the system prompt, the tool schemas)
are stored once and referred to by index, which keeps a page of a few thousand episodes small.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from trajgym.errors import TrajgymError
from trajgym.records.schema import Trajectory
from trajgym.records.store import read_trajectories

_ASSETS = "viewer_assets"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Inside <script>, only "</script" or "<!--" could end the element early; escaping every
# '<', '>' and '&' rules out both. U+2028/9 are escaped for old JavaScript parsers.
_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_SHARED_MIN_CHARS = 200  # shorter system prompts are kept in place
FILTERS = ("file", "env", "split", "family", "provenance", "outcome", "status", "judge")


class ViewerError(TrajgymError):
    """Input the viewer cannot show (no such file, nothing to show)."""


@dataclass(frozen=True)
class Source:
    """The trajectories read from one file."""

    path: str
    trajectories: tuple[Trajectory, ...]


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files to read: each file as given, each folder's ``*.jsonl`` files in name order.

    Raises:
        ViewerError: A path that does not exist, or a folder without JSONL files.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise ViewerError(f"No *.jsonl files in folder '{path}'.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ViewerError(f"No such file: '{path}'. Pass trajectory JSONL files or folders.")
    return files


def load_sources(paths: Iterable[Path]) -> list[Source]:
    """Read every file (see :func:`expand`); a malformed line raises ``StoreError``."""
    sources = []
    for path in expand(paths):
        try:
            sources.append(Source(str(path), tuple(read_trajectories(path))))
        except (OSError, UnicodeDecodeError) as e:  # a binary file, say: name it, no traceback
            raise ViewerError(f"Cannot read '{path}' as trajectory JSONL: {e}") from None
    return sources


def render_html(sources: Sequence[Source], title: str = "trajgym trajectories") -> str:
    """The whole page as one HTML string."""
    parts = {
        "title": html.escape(title),
        "style": _asset("viewer.css"),
        "script": _asset("viewer.js"),
        "data": embed_json(page_data(sources, title)),
    }
    # One pass, so that a placeholder-like string inside the data is never substituted.
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], _asset("viewer.html"))


def write_report(paths: Iterable[Path], output: Path, title: str | None = None) -> int:
    """Write the page for ``paths`` to ``output``; the number of trajectories shown.

    Raises:
        ViewerError: A missing file, or no trajectory at all in the files.
        StoreError: A line that is not a trajectory (its file and line are named).
    """
    sources = load_sources(paths)
    count = sum(len(s.trajectories) for s in sources)
    if count == 0:
        raise ViewerError(f"No trajectories in {', '.join(s.path for s in sources)}.")
    default = ", ".join(Path(s.path).name for s in sources)
    page = render_html(sources, title or f"trajgym: {default}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return count


def page_data(sources: Sequence[Source], title: str = "") -> dict[str, Any]:
    """What the page's script reads: the trajectories, with repeated long strings shared.

    Each entry of ``trajectories`` is a trajectory's JSON (``None`` fields left out) plus
    ``source`` (index into ``sources``), ``index`` (its position in that file) and ``facets``
    (its value for each of ``filters``, see :func:`facets`). A system message's ``content``
    may be replaced by ``content_ref`` (index into ``texts``), and ``tools`` by ``tools_ref``
    (index into ``toolsets``).
    """
    texts: dict[str, int] = {}
    toolsets: dict[str, int] = {}
    records = []
    for number, source in enumerate(sources):
        for index, trajectory in enumerate(source.trajectories):
            record = trajectory.model_dump(mode="json", exclude_none=True)
            record["source"], record["index"] = number, index
            record["facets"] = facets(trajectory, source.path)
            _share_system_prompts(record, texts)
            tools = record.pop("tools", [])
            if tools:
                key = json.dumps(tools, sort_keys=True)
                record["tools_ref"] = toolsets.setdefault(key, len(toolsets))
            records.append(record)
    return {
        "title": title,
        "filters": list(FILTERS),
        "sources": [s.path for s in sources],
        "texts": list(texts),
        "toolsets": [json.loads(k) for k in toolsets],
        "trajectories": records,
    }


def facets(trajectory: Trajectory, source: str) -> dict[str, str]:
    """What the page filters ``trajectory`` by: one value per name of ``FILTERS``."""
    t = trajectory
    if t.reward is None:
        outcome = "no reward"
    else:
        outcome = "success" if t.reward == 1.0 else "failure"
    if t.judge is None:
        judge = "not judged"
    elif t.judge.status == "error":
        judge = "judge error"
    else:
        judge = "passed" if t.judge.passed else "failed"
    values = {
        "file": source,
        "env": t.env_id,
        "split": t.split,
        "family": t.family,
        "provenance": t.provenance.kind,
        "outcome": outcome,
        "status": t.status,
        "judge": judge,
    }
    return {name: values[name] for name in FILTERS}


def embed_json(data: object) -> str:
    """JSON that is safe to place between ``<script type="application/json">`` tags."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)


def _share_system_prompts(record: dict[str, Any], texts: dict[str, int]) -> None:
    for message in record["messages"]:
        content = message.get("content")
        if message["role"] == "system" and content and len(content) >= _SHARED_MIN_CHARS:
            message["content_ref"] = texts.setdefault(content, len(texts))
            del message["content"]


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(_ASSETS).joinpath(name).read_text(encoding="utf-8")
