// The trajectory viewer: a filterable list on the left, one trajectory on the right.
// Every string from the data reaches the page through text nodes (el() below), never as
// HTML: model output is untrusted.
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("trajgym-data").textContent);
  const ALL = DATA.trajectories;
  const LONG_CHARS = 1200; // a tool result longer than this (or LONG_LINES) is collapsed
  const LONG_LINES = 40;
  const MAX_LISTED = 2000; // list items built at once; the count still covers every match

  // The filters and each trajectory's value for them ("facets") come computed from Python.
  const FILTERS = DATA.filters;
  const state = { selected: -1, query: "", chosen: {}, visible: [] };
  const haystacks = new Map();

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name === "open") node.open = true;
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(text, tone) {
    return el("span", { class: "badge " + (tone || "muted"), text: text });
  }

  function fmt(x, digits) {
    if (x === undefined || x === null) return "—";
    if (typeof x === "number" && !Number.isInteger(x)) return x.toFixed(digits === undefined ? 3 : digits);
    return String(x);
  }

  function pretty(value) {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function parseJson(text) {
    const s = (text || "").trim();
    if (!(s.startsWith("{") || s.startsWith("["))) return undefined;
    try { return JSON.parse(s); } catch (e) { return undefined; }
  }

  function content(m) {
    if (m.content_ref !== undefined) return DATA.texts[m.content_ref];
    return m.content || "";
  }

  function haystack(i) {
    if (!haystacks.has(i)) {
      const t = ALL[i];
      const parts = [t.task_id, t.persona, t.error || "", t.judge ? t.judge.rationale || "" : ""];
      for (const m of t.messages) {
        if (m.role === "system") continue;
        parts.push(m.content || "");
        for (const c of m.tool_calls || []) parts.push(c.function.name, c.function.arguments);
      }
      haystacks.set(i, parts.join("\n").toLowerCase());
    }
    return haystacks.get(i);
  }

  function matches(i, except) {
    const t = ALL[i];
    for (const f of FILTERS) {
      const want = state.chosen[f];
      if (f !== except && want !== undefined && want !== "" && t.facets[f] !== want) return false;
    }
    return !state.query || haystack(i).includes(state.query);
  }

  // Filters and list ----------------------------------------------------------------------

  function buildFilters() {
    const box = document.getElementById("filters");
    for (const f of FILTERS) {
      const values = [...new Set(ALL.map((t) => t.facets[f]))].sort();
      const select = el("select", { id: "filter-" + f, "data-filter": f });
      select.append(el("option", { value: "", text: "all" }));
      for (const v of values) select.append(el("option", { value: v, text: v }));
      select.addEventListener("change", () => { state.chosen[f] = select.value; update(); });
      box.append(el("label", { for: select.id, text: f }), select);
    }
    let timer = 0;
    document.getElementById("search").addEventListener("input", (event) => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.query = event.target.value.trim().toLowerCase(); update(); }, 120);
    });
  }

  function refreshOptionCounts() {
    for (const f of FILTERS) {
      const counts = new Map();
      let total = 0;
      ALL.forEach((t, i) => {
        if (!matches(i, f)) return;
        total += 1;
        counts.set(t.facets[f], (counts.get(t.facets[f]) || 0) + 1);
      });
      for (const option of document.getElementById("filter-" + f).options) {
        const n = option.value === "" ? total : counts.get(option.value) || 0;
        option.textContent = (option.value === "" ? "all" : option.value) + " (" + n + ")";
      }
    }
  }

  function update(force) {
    state.visible = ALL.map((_, i) => i).filter((i) => matches(i));
    const wins = state.visible.filter((i) => ALL[i].reward === 1).length;
    document.getElementById("count").textContent =
      state.visible.length + " of " + ALL.length + " trajectories shown · " + wins + " successful";
    refreshOptionCounts();
    renderList();
    if (state.visible.includes(state.selected)) {
      if (force) select(state.selected);
    } else {
      select(state.visible.length ? state.visible[0] : -1);
    }
  }

  function renderList() {
    const list = document.getElementById("list");
    list.replaceChildren();
    for (const i of state.visible.slice(0, MAX_LISTED)) {
      const t = ALL[i];
      const tone = t.status === "error" ? "bad" : t.facets.outcome === "success" ? "good" : "bad";
      const item = el("li", { "data-index": i, class: i === state.selected ? "selected" : null },
        el("div", { class: "task", text: t.task_id }),
        el("div", { class: "sub" },
          badge(t.status === "error" ? "error" : "reward " + fmt(t.reward, 2), tone),
          t.judge ? badge("judge " + t.facets.judge, t.judge.passed ? "good" : "bad") : null,
          t.env_id.replace("trajgym/", "") + " · " + t.split + " · " + t.provenance.kind));
      item.addEventListener("click", () => select(i));
      list.append(item);
    }
    if (state.visible.length > MAX_LISTED) {
      list.append(el("li", { class: "sub", text: (state.visible.length - MAX_LISTED) + " more: narrow the filters" }));
    }
  }

  function select(i) {
    state.selected = i;
    for (const item of document.querySelectorAll("#list li.selected")) item.classList.remove("selected");
    const item = document.querySelector('#list li[data-index="' + i + '"]');
    if (item) { item.classList.add("selected"); item.scrollIntoView({ block: "nearest" }); }
    if (i >= 0 && location.hash !== "#t=" + i) {
      // A link to this trajectory; some browsers refuse history changes on file:// pages.
      try { history.replaceState(null, "", "#t=" + i); } catch (e) { /* the link is a nicety */ }
    }
    renderDetail(i);
  }

  // One trajectory ------------------------------------------------------------------------

  function renderDetail(i) {
    const detail = document.getElementById("detail");
    detail.replaceChildren();
    detail.scrollTop = 0;
    if (i < 0) { detail.append(el("p", { class: "empty", text: "No trajectory matches the filters." })); return; }
    const t = ALL[i];
    detail.append(
      header(t),
      el("div", { class: "cards" }, verdictCard(t), judgeCard(t)),
      changesCard(t),
      conversationCard(t),
      el("div", { class: "cards" }, provenanceCard(t), costCard(t)));
  }

  function dl(rows) {
    return el("dl", { class: "meta" }, rows.filter((r) => r).map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
  }

  function header(t) {
    return el("section", { class: "card", id: "summary" },
      el("h2", { text: t.task_id }),
      el("div", {},
        t.status === "error" ? badge("error", "bad") : badge(t.facets.outcome, t.facets.outcome === "success" ? "good" : "bad"),
        badge("reward " + fmt(t.reward, 2), t.reward === 1 ? "good" : "muted"),
        badge(t.termination, t.termination === "error" || t.termination === "truncated" ? "warn" : "muted")),
      dl([
        ["environment", t.env_id + " (v" + t.env_version + ")"],
        ["split / family", t.split + " / " + t.family],
        ["persona / seed", t.persona + " / " + t.seed],
        ["sample", String(t.sample_index || 0)],
        ["file", DATA.sources[t.source] + " #" + t.index],
        ["ended by", t.termination],
        t.error ? ["error", el("span", { class: "bad", text: t.error })] : null,
      ]));
  }

  function verdictCard(t) {
    const card = el("section", { class: "card", id: "verdict" }, el("h3", { text: "Environment verdict" }));
    const v = t.verdict;
    if (!v) {
      card.append(el("p", { class: "muted", text: "Not verified (no verdict recorded)." }));
      return card;
    }
    const checks = Object.entries(v.checks || {});
    card.append(dl([
      ["reward", fmt(v.reward, 2)],
      ["state matches gold", badge(v.state_match ? "yes" : "no", v.state_match ? "good" : "bad")],
      ["outputs told", mark(Object.entries(v.outputs || {}))],
      ["violations", (v.violations || []).length
        ? el("ul", {}, v.violations.map((x) => el("li", { class: "bad", text: x }))) : "none"],
      checks.length ? ["checks", mark(checks)] : null,
      ["hashes", el("details", {}, el("summary", { text: "final / gold" }),
        el("pre", { text: (v.final_state_hash || "—") + "\n" + (v.gold_state_hash || "—") }))],
    ]));
    return card;
  }

  function mark(entries) {
    if (!entries.length) return "none required";
    return el("ul", {}, entries.map(([k, ok]) => el("li", { class: ok ? "good" : "bad" }, (ok ? "✓ " : "✗ ") + k)));
  }

  function judgeCard(t) {
    const card = el("section", { class: "card", id: "judge" }, el("h3", { text: "Judge verdict" }));
    const j = t.judge;
    if (!j) {
      card.append(el("p", { class: "muted", text: "Not judged." }));
      return card;
    }
    card.append(dl([
      ["verdict", badge(t.facets.judge, j.status === "error" ? "warn" : j.passed ? "good" : "bad")],
      ["score", fmt(j.score, 2)],
      ["judge", j.judge],
      j.error ? ["error", el("span", { class: "bad", text: j.error })] : null,
      ["cost", usageText(j.usage)],
    ]));
    if ((j.findings || []).length) {
      card.append(el("table", {}, el("tr", {}, el("th", { text: "criterion" }), el("th", { text: "" }), el("th", { text: "note" })),
        j.findings.map((f) => el("tr", {}, el("td", { text: f.criterion }),
          el("td", { class: f.passed ? "good" : "bad", text: f.passed ? "✓" : "✗" }), el("td", { text: f.note || "" })))));
    }
    if (j.rationale) card.append(el("p", { class: "text", text: j.rationale }));
    return card;
  }

  function changesCard(t) {
    const changes = (t.verdict && t.verdict.changes) || [];
    const card = el("section", { class: "card", id: "changes" }, el("h3", { text: "Final-state diff (" + changes.length + ")" }));
    if (!changes.length) card.append(el("p", { class: "muted", text: "No state change recorded." }));
    for (const c of changes) {
      const tone = { added: "good", deleted: "bad", modified: "warn" }[c.kind] || "muted";
      const box = el("div", { class: "change" }, badge(c.kind, tone), el("span", { class: "path", text: c.path }));
      if (c.diff) box.append(diffBlock(c.diff));
      else if (c.kind === "modified" && isObject(c.before) && isObject(c.after)) box.append(fieldTable(c.before, c.after));
      else {
        if (c.before !== undefined && c.before !== null) box.append(el("div", { class: "muted", text: "before" }), el("pre", { text: pretty(c.before) }));
        if (c.after !== undefined && c.after !== null) box.append(el("div", { class: "muted", text: "after" }), el("pre", { text: pretty(c.after) }));
      }
      card.append(box);
    }
    return card;
  }

  function plural(n, noun) { return n + " " + noun + (n === 1 ? "" : "s"); }

  function isObject(x) { return x !== null && typeof x === "object" && !Array.isArray(x); }

  function fieldTable(before, after) {
    return el("table", {}, el("tr", {}, el("th", { text: "field" }), el("th", { text: "before" }), el("th", { text: "after" })),
      Object.keys(after).map((k) => el("tr", {}, el("td", {}, el("code", { text: k })),
        el("td", { class: "bad" }, el("pre", { text: pretty(before[k]) })),
        el("td", { class: "good" }, el("pre", { text: pretty(after[k]) })))));
  }

  function diffBlock(diff) {
    return el("pre", { class: "diff" }, diff.replace(/\n$/, "").split("\n").map((line) => {
      const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add"
        : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
      return el("span", { class: kind || null }, line + "\n");
    }));
  }

  function conversationCard(t) {
    const labels = new Map((t.labels || []).map((l) => [l.index, l.message]));
    const card = el("section", { class: "card", id: "conversation" },
      el("h3", { text: "Conversation (" + plural(t.messages.length, "message") + (labels.size ? ", " + plural(labels.size, "teacher label") : "") + ")" }));
    const list = el("div", { class: "conversation" });
    t.messages.forEach((m, i) => {
      const node = message(m, i);
      if (!labels.has(i)) { list.append(node); return; }
      list.append(el("div", { class: "turn labelled" }, node, message(labels.get(i), i, "teacher")));
    });
    card.append(list);
    return card;
  }

  function message(m, i, who) {
    const text = content(m);
    if (m.role === "system") {
      return el("details", { class: "msg system" },
        el("summary", { text: "#" + i + " system prompt (" + text.length + " characters)" }), el("pre", { text: text }));
    }
    const error = m.role === "tool" && text.startsWith("Error:");
    const head = who === "teacher" ? "teacher's label: what it would have done"
      : m.role === "tool" ? "tool result · " + (m.name || "?") : m.role;
    const box = el("div", { class: "msg " + m.role + (who ? " " + who : "") + (error ? " error" : ""), "data-index": i },
      el("div", { class: "head", text: "#" + i + " " + head }));
    if (m.role === "tool") box.append(toolResult(text));
    else if (text) box.append(el("div", { class: "text", text: text }));
    for (const call of m.tool_calls || []) box.append(toolCall(call));
    if (!text && !(m.tool_calls || []).length) box.append(el("div", { class: "muted", text: "(empty message)" }));
    return box;
  }

  function toolCall(call) {
    const args = parseJson(call.function.arguments);
    const bad = args === undefined && (call.function.arguments || "").trim() !== "";
    return el("div", { class: "call" + (bad ? " error" : "") },
      el("span", { class: "fn", text: "ƒ " + call.function.name }), el("span", { class: "muted", text: "  " + call.id }),
      bad ? el("div", { class: "bad", text: "arguments are not valid JSON:" }) : null,
      el("pre", { text: bad ? call.function.arguments : pretty(args || {}) }));
  }

  function toolResult(text) {
    const parsed = parseJson(text);
    const shown = parsed === undefined ? text : pretty(parsed);
    const lines = shown.split("\n");
    if (shown.length <= LONG_CHARS && lines.length <= LONG_LINES) return el("pre", { text: shown });
    return el("details", {},
      el("summary", { text: lines[0].slice(0, 100) + " … (" + lines.length + " lines, " + shown.length + " characters)" }),
      el("pre", { text: shown }));
  }

  function usageText(u) {
    if (!u) return "—";
    return (u.prompt_tokens || 0) + " prompt + " + (u.completion_tokens || 0) + " completion tokens, $" + (u.cost_usd || 0).toFixed(4);
  }

  function provenanceCard(t) {
    const p = t.provenance;
    const tools = t.tools_ref === undefined ? [] : DATA.toolsets[t.tools_ref];
    return el("section", { class: "card", id: "provenance" }, el("h3", { text: "Provenance" }), dl([
      ["kind", p.kind], ["agent", p.agent], ["model", p.model || "—"],
      ["decoding", Object.keys(p.decoding || {}).length ? el("pre", { text: pretty(p.decoding) }) : "—"],
      ["tools", tools.length ? el("details", {}, el("summary", { text: tools.length + " tools: " + tools.map(toolName).join(", ") }),
        el("pre", { text: pretty(tools) })) : "—"],
    ]));
  }

  function toolName(schema) { return (schema.function && schema.function.name) || schema.name || "?"; }

  function costCard(t) {
    const timings = t.timings || [];
    const sum = (k) => timings.reduce((s, x) => s + x[k], 0);
    return el("section", { class: "card", id: "cost" }, el("h3", { text: "Usage and timings" }), dl([
      ["agent", usageText(t.usage)],
      ["simulated user", usageText(t.user_usage)],
      ["steps", String(timings.length)],
      ["agent time", fmt(sum("agent_s")) + " s"],
      ["env time", fmt(sum("env_s"), 4) + " s"],
      timings.length ? ["per step", el("details", {}, el("summary", { text: "agent s / env s" }),
        el("pre", { text: timings.map((x, k) => k + ": " + fmt(x.agent_s) + " / " + fmt(x.env_s, 4)).join("\n") }))] : null,
    ]));
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    const at = state.visible.indexOf(state.selected);
    if ((event.key === "j" || event.key === "ArrowDown") && at + 1 < state.visible.length) select(state.visible[at + 1]);
    if ((event.key === "k" || event.key === "ArrowUp") && at > 0) select(state.visible[at - 1]);
  });

  buildFilters();
  const wanted = /^#t=(\d+)$/.exec(location.hash);
  state.selected = wanted && Number(wanted[1]) < ALL.length ? Number(wanted[1]) : -1;
  update(true);
  document.body.setAttribute("data-ready", "1");
}());
