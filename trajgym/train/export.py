"""Export trajectories to the formats people train on, with filters on the way out.

- ``hf``: a Hugging Face dataset folder (parquet, one split per trajectory split) with a
  ``messages`` column in OpenAI format and a ``tools`` column (JSON text), which TRL's
  ``SFTTrainer`` consumes as is; load it with ``datasets.load_dataset(folder)``.
- ``openai``: OpenAI chat fine-tuning JSONL (``{"messages": [...], "tools": [...]}``).
- ``sharegpt``: ShareGPT JSONL (``conversations`` of ``from``/``value`` turns, tools as text).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trajgym.agents.tool_text import render_call, render_response
from trajgym.errors import TrajgymError
from trajgym.llm.client import to_wire
from trajgym.records.schema import Trajectory
from trajgym.records.store import read_input

Format = Literal["hf", "openai", "sharegpt"]


class ExportError(TrajgymError):
    """Nothing to export: the filters keep none of the input."""


class ExportFilter(BaseModel):
    """Which trajectories to keep."""

    model_config = ConfigDict(extra="forbid")

    splits: list[str] | None = Field(None, description="Keep these task splits.")
    provenance: list[str] | None = Field(None, description="Keep these provenance kinds.")
    min_reward: float | None = Field(None, description="Keep rewards at or above this.")
    status: list[str] | None = Field(["ok"], description="Keep these statuses.")

    def keep(self, t: Trajectory) -> bool:
        """Whether ``t`` passes every filter."""
        return (
            (self.splits is None or t.split in self.splits)
            and (self.provenance is None or t.provenance.kind in self.provenance)
            and (self.min_reward is None or (t.reward is not None and t.reward >= self.min_reward))
            and (self.status is None or t.status in self.status)
        )


def export(
    inputs: Iterable[str | Path], output: str | Path, fmt: Format, keep: ExportFilter
) -> dict[str, int]:
    """Write the kept trajectories of ``inputs`` to ``output``; return counts per split.

    A missing or empty input, or filters that keep nothing, is an error and writes nothing:
    a pipeline must not carry on with an empty training set.
    """
    found = [t for path in inputs for t in read_input(path)]
    kept = [t for t in found if keep.keep(t)]
    if not kept:
        raise ExportError(
            f"None of the {len(found)} trajectories passes the filters "
            f"({keep.model_dump(exclude_none=True)}); nothing was written."
        )
    output = Path(output)
    if fmt == "hf":
        return _export_hf(kept, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = (_openai_row(t) if fmt == "openai" else _sharegpt_row(t) for t in kept)
    _write_jsonl(output, rows)
    counts: dict[str, int] = defaultdict(int)
    for t in kept:
        counts[t.split] += 1
    return dict(counts)


def _openai_row(t: Trajectory) -> dict[str, Any]:
    return {"messages": [to_wire(m) for m in t.messages], "tools": list(t.tools)}


def _hf_row(t: Trajectory) -> dict[str, Any]:
    messages = [
        {
            "role": m.role,
            "content": m.content,
            "tool_calls": [c.model_dump() for c in m.tool_calls] if m.tool_calls else None,
            "tool_call_id": m.tool_call_id,
            "name": m.name,
        }
        for m in t.messages
    ]
    return {
        "messages": messages,
        "tools": json.dumps(list(t.tools)),
        "env_id": t.env_id,
        "task_id": t.task_id,
        "family": t.family,
        "persona": t.persona,
        "sample_index": t.sample_index,
        "reward": t.reward,
        "provenance": t.provenance.kind,
        "model": t.provenance.model,
    }


def _sharegpt_row(t: Trajectory) -> dict[str, Any]:
    turns = []
    for m in t.messages:
        if m.role == "system":
            turns.append({"from": "system", "value": m.text})
        elif m.role == "user":
            turns.append({"from": "human", "value": m.text})
        elif m.role == "assistant":
            parts = [m.text] if m.text else []
            parts += [render_call(c) for c in m.tool_calls or ()]
            turns.append({"from": "gpt", "value": "\n".join(parts)})
        else:
            turns.append({"from": "tool", "value": render_response(m)})
    return {"conversations": turns, "tools": json.dumps(list(t.tools))}


def _export_hf(kept: list[Trajectory], folder: Path) -> dict[str, int]:
    import datasets

    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in kept:
        by_split[t.split].append(_hf_row(t))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in by_split.items():
        datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}.parquet"))
    # The card's config tells load_dataset which file is which split ('ood' is no default name).
    card = ["---", "configs:", "- config_name: default", "  data_files:"]
    card += [f"  - split: {s}\n    path: data/{s}.parquet" for s in sorted(by_split)]
    card += ["---", "", "Trajectories exported by trajgym (OpenAI chat format; tools as JSON)."]
    (folder / "README.md").write_text("\n".join(card) + "\n")
    return {s: len(r) for s, r in by_split.items()}


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
