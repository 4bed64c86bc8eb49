"""The HTML trajectory viewer: what the page holds, that model output stays text, and the
page itself, loaded in headless Chromium over the DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import time
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from trajgym.agents.expert import ScriptedExpert
from trajgym.cli import view as cli_view
from trajgym.envs import make
from trajgym.records.schema import (
    Finding,
    FunctionCall,
    JudgeVerdict,
    Message,
    Provenance,
    StateChange,
    TeacherLabel,
    ToolCall,
    Trajectory,
)
from trajgym.rollouts.rollout import rollout
from trajgym.views.viewer import facets, load_sources, page_data, render_html, write_report

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no /usr/bin/chromium: scripts/setup.sh installs Debian's chromium when run as root",
)
# Closes the data element, runs a script, loads an image: all of it must stay text.
HOSTILE = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><!--'
TEACHER_WORDS = "Teacher here: I would look the order up first."
DIFF = "--- a/src/app.py\n+++ b/src/app.py\n@@ -1 +1 @@\n-old = 1\n+new = 2\n"


def _hostile(t: Trajectory) -> Trajectory:
    """``t`` as an errored episode whose user, tool and model all wrote markup."""
    bad_call = ToolCall(id="c_bad", function=FunctionCall(name="lookup", arguments="{not json"))
    messages = (
        t.messages[0],
        Message(role="user", content=HOSTILE),
        Message(role="assistant", tool_calls=(bad_call,)),
        Message(role="tool", tool_call_id="c_bad", name="lookup", content="Error: " + HOSTILE),
    )
    return t.model_copy(
        update={
            "messages": messages,
            "status": "error",
            "error": "provider failed: " + HOSTILE,
            "reward": None,
            "verdict": None,
            "termination": "error",
            "sample_index": 1,
        }
    )


@pytest.fixture(scope="module")
def trajectories() -> list[Trajectory]:
    env = make("trajgym/Retail-v1", split="test")
    tasks = env.unwrapped.tasks("test")
    cancel = next(t.id for t in tasks if t.family == "cancel_pending_order")
    status = next(t.id for t in tasks if t.family == "order_status")
    judged = rollout(env, ScriptedExpert(), seed=0, task_id=cancel)
    plain = rollout(env, ScriptedExpert(), seed=1, task_id=status)
    env.close()
    grade = JudgeVerdict(
        passed=True,
        score=0.75,
        findings=(Finding(criterion="goal", passed=True, note="reached"),),
        rationale="Cancelled as asked.",
        judge="embedded",
        prompt_hash="p",
    )
    turn = next(i for i, m in enumerate(plain.messages) if m.role == "assistant")
    assert plain.verdict is not None
    labelled = plain.model_copy(
        update={
            "sample_index": 2,
            "provenance": Provenance(kind="on_policy_teacher", agent="ExpertLabeler"),
            "labels": (
                TeacherLabel(index=turn, message=Message(role="assistant", content=TEACHER_WORDS)),
            ),
            "verdict": plain.verdict.model_copy(
                update={
                    "changes": (StateChange(path="files/src/app.py", kind="modified", diff=DIFF),)
                }
            ),
        }
    )
    return [judged.model_copy(update={"judge": grade}), plain, _hostile(plain), labelled]


@pytest.fixture(scope="module")
def files(trajectories: list[Trajectory], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("viewer")
    paths = [folder / "first.jsonl", folder / "second.jsonl"]
    for path, part in zip(paths, (trajectories[:2], trajectories[2:]), strict=True):
        path.write_text("".join(t.model_dump_json() + "\n" for t in part))
    return paths


def _embedded(page: str) -> dict[str, Any]:
    found = re.search(
        r'<script id="trajgym-data" type="application/json">(.*?)</script>', page, re.S
    )
    assert found is not None
    return json.loads(found.group(1))


def _rebuild(record: dict[str, Any], data: dict[str, Any]) -> Trajectory:
    """A trajectory from the page's record of it: shared strings put back."""
    record = {k: v for k, v in record.items() if k not in ("source", "index", "facets")}
    if "tools_ref" in record:
        record["tools"] = data["toolsets"][record.pop("tools_ref")]
    for message in record["messages"]:
        if "content_ref" in message:
            message["content"] = data["texts"][message.pop("content_ref")]
    return Trajectory.model_validate(record)


def test_every_trajectory_is_in_the_page_exactly(
    files: list[Path], trajectories: list[Trajectory]
) -> None:
    data = _embedded(render_html(load_sources(files)))
    assert data["sources"] == [str(f) for f in files]
    assert [_rebuild(r, data) for r in data["trajectories"]] == trajectories
    assert [(r["source"], r["index"]) for r in data["trajectories"]] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert len(data["texts"]) == 1 and len(data["toolsets"]) == 1  # stored once, not 4 times


def test_filter_values(files: list[Path], trajectories: list[Trajectory]) -> None:
    data = page_data(load_sources(files))
    assert data["filters"] == [
        "file",
        "env",
        "split",
        "family",
        "provenance",
        "outcome",
        "status",
        "judge",
    ]
    got = [r["facets"] for r in data["trajectories"]]
    assert [f["outcome"] for f in got] == ["success", "success", "no reward", "success"]
    assert [f["status"] for f in got] == ["ok", "ok", "error", "ok"]
    assert [f["judge"] for f in got] == ["passed", "not judged", "not judged", "not judged"]
    assert [f["provenance"] for f in got] == ["expert", "expert", "expert", "on_policy_teacher"]
    assert {f["env"] for f in got} == {"trajgym/Retail-v1"} and {f["split"] for f in got} == {
        "test"
    }
    assert [f["file"] for f in got] == [str(files[0])] * 2 + [str(files[1])] * 2
    failed = trajectories[0].model_copy(update={"reward": 0.0, "judge": None})
    assert facets(failed, "x")["outcome"] == "failure"


def test_untrusted_text_cannot_leave_its_element(files: list[Path]) -> None:
    page = render_html(load_sources(files), title="<b>mine</b>")
    assert page.count("<script") == 2 and page.count("</script>") == 2  # ours: data, code
    assert "<img" not in page and page.count("<!--") == 1  # the template's own comment
    assert "window.__pwned = 1" in page  # still there, as escaped JSON text
    assert "<title>&lt;b&gt;mine&lt;/b&gt;</title>" in page and "<b>mine" not in page


def test_the_page_loads_nothing_from_outside() -> None:
    assets = resources.files("trajgym.views").joinpath("viewer_assets")
    text = "".join(
        assets.joinpath(n).read_text() for n in ("viewer.html", "viewer.css", "viewer.js")
    )
    for pattern in (r"https?:", r"\bsrc\s*=", r"\bhref\s*=", r"url\(", r"@import", r"\bfetch\("):
        assert not re.search(pattern, text), pattern
    assert "default-src 'none'" in text


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(cli_view.view)
    app.command("other")(lambda: None)  # two commands, so that `view` is named as in trajgym
    return app


def test_cli_writes_one_page(files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(_cli(), ["view", str(files[0].parent), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 trajectories" in result.output
    assert len(_embedded(out.read_text())["trajectories"]) == 4


def test_cli_malformed_file_is_a_clear_error(files: list[Path], tmp_path: Path, cli) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(files[0].read_text().splitlines()[0] + '\n{"env_id": "x"}\n')
    code, out, err = cli("view", str(bad), "-o", str(tmp_path / "r.html"))
    assert code == 2 and f"error: {bad}:2 is not a trajgym trajectory" in err
    assert "Traceback" not in out + err and not (tmp_path / "r.html").exists()
    code, out, err = cli("view", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "No such file" in err
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    for name, says in (("empty.jsonl", "No trajectories in"), ("binary.jsonl", "Cannot read")):
        code, out, err = cli("view", str(tmp_path / name))
        assert code == 2 and says in err and "Traceback" not in out + err


# The page in a browser -------------------------------------------------------------------


class DevTools:
    """Just enough of the Chrome DevTools protocol to drive one page over a websocket."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.events: list[dict[str, Any]] = []
        self._calls = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def listen(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data:
                self._waiting.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._calls += 1
        reply = asyncio.get_running_loop().create_future()
        self._waiting[self._calls] = reply
        await self.socket.send_str(
            json.dumps({"id": self._calls, "method": method, "params": params})
        )
        data = await asyncio.wait_for(reply, 30)
        assert "error" not in data, data
        return data["result"]

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def until(self, expression: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.js(expression):
            assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
            await asyncio.sleep(0.05)

    def problems(self) -> list[str]:
        """Uncaught exceptions, the page's console errors and warnings, logged errors."""
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(p["exceptionDetails"])[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in (
                "error",
                "assert",
                "warning",
            ):
                found.append(json.dumps(p["args"])[:500])
            # The browser's own warnings (deprecations, interventions) are not the page's.
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(p["entry"]["text"])
        return found


def _start_chromium(profile: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A headless Chromium and the websocket URL of its page."""
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"chromium did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    return proc, page["webSocketDebuggerUrl"]


async def _pick(tools: DevTools, name: str, value: str) -> None:
    """Choose ``value`` in the filter ``name``, as a person would."""
    await tools.js(
        f"(() => {{ const s = document.getElementById('filter-{name}'); s.value = {json.dumps(value)};"
        " s.dispatchEvent(new Event('change')); })()"
    )


async def _search(tools: DevTools, words: str, expect: int) -> None:
    await tools.js(
        f"(() => {{ const s = document.getElementById('search'); s.value = {json.dumps(words)};"
        " s.dispatchEvent(new Event('input')); })()"
    )
    await tools.until(f"document.querySelectorAll('#list li').length === {expect}")


async def _count(tools: DevTools, selector: str) -> int:
    return int(await tools.js(f"document.querySelectorAll({json.dumps(selector)}).length"))


async def _text(tools: DevTools, selector: str) -> str:
    return str(await tools.js(f"document.querySelector({json.dumps(selector)}).textContent"))


async def _browse(url: str, tmp_path: Path, opening: str) -> None:
    import aiohttp

    proc, socket_url = _start_chromium(tmp_path / "profile")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(socket_url, max_msg_size=0) as ws:
                tools = DevTools(ws)
                listener = asyncio.create_task(tools.listen())
                try:
                    for domain in ("Runtime", "Log", "Page", "Network"):
                        await tools.call(f"{domain}.enable")
                    await tools.call(
                        "Emulation.setDeviceMetricsOverride",
                        width=1280,
                        height=900,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    await tools.call("Page.navigate", url=url)
                    await tools.until("document.body && document.body.dataset.ready === '1'")
                    await _check_page(tools, opening, tmp_path)
                finally:
                    listener.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    sent = [
        e["params"]["request"]["url"]
        for e in tools.events
        if e["method"].startswith("Network.requestWillBe")
    ]
    assert sent and all(u.startswith(("file://", "data:", "about:")) for u in sent), sent


async def _check_page(tools: DevTools, opening: str, tmp_path: Path) -> None:
    assert await _count(tools, "#list li") == 4
    assert (await _text(tools, "#count")).startswith("4 of 4 ")
    assert await _text(tools, "#detail .msg.user .text") == opening
    assert await _count(tools, "#changes .change") == 1
    assert "Cancelled as asked." in await _text(tools, "#judge")

    await _pick(tools, "status", "error")  # only the hostile episode: its markup is text
    assert await _count(tools, "#list li") == 1
    assert await _text(tools, "#detail .msg.user .text") == HOSTILE
    assert await _count(tools, "#detail .msg.error, #detail .call.error") == 2
    assert await tools.js("window.__pwned === undefined")
    assert await _count(tools, "script") == 2 and await _count(tools, "img") == 0
    await _pick(tools, "status", "")

    await _pick(tools, "provenance", "on_policy_teacher")
    assert (await _text(tools, ".turn.labelled .teacher")).endswith(TEACHER_WORDS)
    assert await _count(tools, "#changes .diff .add") == 1
    await _pick(tools, "provenance", "")

    await _search(tools, "__PWNED", expect=1)
    await _search(tools, "", expect=4)
    await tools.js("document.querySelector('#list li').click()")
    await _screenshot_shows_conversation(tools, opening, tmp_path / "viewer.png")
    assert tools.problems() == []


async def _screenshot_shows_conversation(tools: DevTools, opening: str, path: Path) -> None:
    from PIL import Image

    on_screen = await tools.js(
        """(() => {
        document.getElementById('conversation').scrollIntoView();
        const m = document.querySelector('#detail .msg.user');
        const r = m.getBoundingClientRect();
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        const inside = r.top >= 0 && r.bottom <= innerHeight && r.left >= 0 && r.right <= innerWidth;
        return inside && m.contains(hit) ? m.textContent : null;
        })()"""
    )
    assert on_screen is not None and opening in on_screen
    shot = await tools.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG" and image.size == (1280, 900)
    colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50  # text and panels, not a blank page
    assert path.stat().st_size > 20_000


@needs_chromium
def test_page_in_headless_chromium(
    files: list[Path], trajectories: list[Trajectory], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    assert write_report(files, page) == 4
    opening = trajectories[0].messages[1].text
    asyncio.run(_browse(page.as_uri(), tmp_path, opening))
    assert (tmp_path / "viewer.png").exists()
