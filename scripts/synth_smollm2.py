"""Run `trajgym synthesize` once with the local SmolLM2 as the proposer (no network, no key).

The default student is served behind an OpenAI-compatible chat endpoint on 127.0.0.1 (the
fake server's HTTP layer, with the model as its responder), so the run goes through litellm
exactly as with a hosted model. Prints the report: how many blueprints a 135M model gets
through the execution checks.

    .venv/bin/python scripts/synth_smollm2.py --n 10 --out runs/synth-smollm2/tasks.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import torch

from trajgym.agents.models import load_student
from trajgym.llm.client import LLMConfig
from trajgym.rollouts.synthesis import SynthesisConfig, synthesize
from trajgym.testing.fake_openai import FakeOpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="trajgym/RetailLite-v0")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/synth-smollm2/tasks.jsonl"))
    args = parser.parse_args()
    model, tokenizer = load_student(dtype="float32")  # bf16 is emulated on most CPUs
    lock = threading.Lock()
    torch.manual_seed(0)

    def respond(request: dict[str, Any]) -> dict[str, Any]:
        ids = tokenizer.apply_chat_template(
            request["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with lock, torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=0.7
            )
        return {
            "role": "assistant",
            "content": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True),
        }

    with FakeOpenAIServer(respond) as server:
        config = SynthesisConfig(
            env=args.env,
            n=args.n,
            max_retries=args.retries,
            llm=LLMConfig(
                model="openai/smollm2", api_base=server.base_url, timeout_s=600, max_attempts=1
            ),
            output=args.out,
        )
        report = synthesize(config)
    print(json.dumps(report.as_dict(), indent=1))


if __name__ == "__main__":
    main()
