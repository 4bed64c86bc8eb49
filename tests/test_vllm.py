"""trajgym's GPU path against a real vLLM server (its CPU build here): rollouts, scoring, sync.

One server for the whole module (``tests/vllm_server.py``): the default student in fp32, so
that its numbers can be held to the local engine's, LoRA loadable at run time, and
``--logprobs-mode processed_logprobs`` so that a sampled token's log-prob is the sampling
distribution's at any temperature. Without ``.vllm-venv`` (``bash scripts/vllm_setup.sh``)
these tests skip saying why; ``testing/token_server.py`` still covers the remote path then.

Tolerances (fp32 on both sides; what differs is the kernels' summation order): log-probs of
the same tokens within 1e-3 (measured: ~3e-5), greedy tokens identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_smollm2
from vllm_server import Unavailable, VllmServer, start

from trajgym.agents.remote import RemoteBatcher, ServerConfig
from trajgym.errors import ConfigError

pytestmark = [needs_smollm2, pytest.mark.slow]

LOGPROB_TOL = 1e-3
NAME = "student"


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    from trajgym.agents.models import default_student_path

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        server = start(default_student_path(), NAME, log, ["--logprobs-mode=processed_logprobs"])
    except Unavailable as e:
        pytest.skip(str(e))
    print(f"\nvLLM server up in {server.startup_s:.1f} s (log: {log})")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The local model on one thread while the server runs.

    vLLM's CPU worker pins its thread to one core and reserves the other; a two-thread pool
    here then waits on a busy core at every barrier (measured: 10x slower on 2 cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student() -> tuple[Any, Any]:
    from trajgym.agents.models import load_student

    return load_student()


def _config(server: VllmServer, model: str = NAME) -> ServerConfig:
    return ServerConfig(base_url=server.base_url, model=model, logprobs_mode="processed_logprobs")


def _forward_logprobs(model: Any, prompt: list[int], tokens: list[int], temperature: float = 1.0):
    """log p(token | prompt, earlier tokens) under ``model`` in one teacher-forced pass."""
    import torch

    ids = torch.tensor([prompt + tokens], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    chosen = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])
    return chosen.squeeze(-1).tolist()


def _retail_prompt(tokenizer: Any, seed: int = 0) -> str:
    from trajgym.envs import make

    env = make("trajgym/RetailLite-v0", split="test")
    obs, info = env.reset(seed=seed)
    messages = [{"role": "system", "content": info["system_prompt"]}]
    messages += [m.to_openai() for m in obs.messages]
    env.close()
    return str(
        tokenizer.apply_chat_template(
            messages, tools=info["tools"], tokenize=False, add_generation_prompt=True
        )
    )


def test_sampling_a_server_cannot_report_is_refused() -> None:
    raw = ServerConfig(base_url="http://127.0.0.1:9/v1", model=NAME)
    raw.check_sampling(1.0, 0.9)  # vLLM's default mode: right at temperature 1 (or greedy)
    raw.check_sampling(0.0, 1.0)
    with pytest.raises(ConfigError, match="processed_logprobs"):
        raw.check_sampling(0.7, 1.0)
    processed = raw.model_copy(update={"logprobs_mode": "processed_logprobs"})
    processed.check_sampling(0.7, 1.0)
    with pytest.raises(ConfigError, match="nucleus"):
        processed.check_sampling(1.0, 0.9)


def test_remote_student_plays_retaillite_as_the_local_engine(vllm, student) -> None:
    """Greedy episodes on vLLM end as the local engine's, token for token."""
    from trajgym.agents.batching import Batcher
    from trajgym.agents.student import StudentAgent, StudentConfig
    from trajgym.envs import make
    from trajgym.rollouts.rollout import rollout

    model, tokenizer = student
    seeds, tokens = range(4), 48
    decoding = StudentConfig(max_new_tokens=tokens, temperature=0.0)

    def play(seed: int, source: Any) -> tuple[Any, list[Any]]:
        env = make("trajgym/RetailLite-v0", split="test", max_episode_steps=4)
        agent = StudentAgent(model, tokenizer, decoding, batcher=source)
        trajectory = rollout(env, agent, seed=seed)
        agent.end()
        env.close()
        return trajectory, agent.turns

    remote = RemoteBatcher(_config(vllm), tokenizer, tokens, temperature=0.0)
    local = Batcher(model, tokenizer, max_batch=len(seeds), max_new_tokens=tokens)
    try:
        with ThreadPoolExecutor(len(seeds)) as pool:
            served = list(pool.map(lambda s: play(s, remote), seeds))
            mine = list(pool.map(lambda s: play(s, local), seeds))
    finally:
        remote.close()
        local.close()
    for (theirs, their_turns), (ours, our_turns) in zip(served, mine, strict=True):
        assert theirs.status == "ok", theirs.error
        assert (theirs.task_id, theirs.termination, theirs.success) == (
            ours.task_id,
            ours.termination,
            ours.success,
        )
        assert [t.token_ids for t in their_turns] == [t.token_ids for t in our_turns]
        for turn, own in zip(their_turns, our_turns, strict=True):
            assert turn.prompt_ids == own.prompt_ids
            assert turn.logprobs == pytest.approx(own.logprobs, abs=LOGPROB_TOL)
    # And against a plain teacher-forced forward of the whole reply.
    turn = served[0][1][0]
    forward = _forward_logprobs(model, list(turn.prompt_ids), list(turn.token_ids))
    assert list(turn.logprobs) == pytest.approx(forward, abs=LOGPROB_TOL)


def test_sampled_logprobs_are_the_sampling_distributions(vllm, student) -> None:
    """At temperature 0.7 the recorded log-probs are log_softmax(logits / 0.7), as RL's."""
    model, tokenizer = student
    remote = RemoteBatcher(_config(vllm), tokenizer, 24, temperature=0.7)
    reply = remote.submit(_retail_prompt(tokenizer, seed=1))
    remote.close()
    assert reply.token_ids and len(reply.logprobs) == len(reply.token_ids)
    forward = _forward_logprobs(model, list(reply.prompt_ids), list(reply.token_ids), 0.7)
    assert list(reply.logprobs) == pytest.approx(forward, abs=LOGPROB_TOL)


def test_a_teacher_on_vllm_scores_as_the_local_one(vllm, student) -> None:
    """RemoteScorer's prompt_logprobs equal the local teacher's log-probs."""
    from trajgym.agents.models import default_student_path
    from trajgym.train.distill import TeacherScoring, make_teacher
    from trajgym.train.masks import Sampled

    _, tokenizer = student
    prompt = tokenizer(_retail_prompt(tokenizer, seed=2), add_special_tokens=False).input_ids
    reply = tokenizer("I can help with that. What is your email?<|im_end|>").input_ids
    ids = list(prompt) + list(reply)
    mask = [0] * len(prompt) + [1] * len(reply)
    sequences = [Sampled(ids, mask, [0.0] * len(ids)), Sampled(ids[:40], [1] * 40, [0.0] * 40)]
    local = make_teacher(TeacherScoring(model=str(default_student_path())), tokenizer, "cpu")
    remote = make_teacher(TeacherScoring(server=_config(vllm)), tokenizer, "cpu")
    expected = local.token_logprobs(sequences, 1.0)
    scored = remote.token_logprobs(sequences, 1.0)
    for got, want in zip(scored, expected, strict=True):
        assert got == pytest.approx(want, abs=LOGPROB_TOL)
    assert any(lp != 0.0 for lp in scored[0])


def _random_adapter(model: Any, folder: Path, seed: int) -> Any:
    """A LoRA adapter of the student with random, nonzero B (a trained one's shape), saved."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    peft = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
    peft.save_pretrained(folder)
    return peft.eval()


def test_a_synced_adapter_serves_as_the_local_peft_model(vllm, tmp_path: Path) -> None:
    """sync_adapter: the served adapter's tokens and log-probs are the local peft model's."""
    from trajgym.agents.kv_sessions import SessionGenerator
    from trajgym.agents.models import load_student

    model, tokenizer = load_student()  # a copy of its own: peft wraps it in place
    prompt = _retail_prompt(tokenizer, seed=3)
    batcher = RemoteBatcher(_config(vllm), tokenizer, 16, temperature=0.0)
    base = batcher.submit(prompt)
    first = _random_adapter(model, tmp_path / "policy-1", seed=1)
    batcher.sync_adapter(tmp_path / "policy-1", "policy-1")
    assert vllm.models() == [NAME, "policy-1"]
    served = batcher.submit(prompt)
    [local] = SessionGenerator(first, tokenizer, 1).generate([("s", prompt)], 16)
    assert served.token_ids == local.token_ids
    forward = _forward_logprobs(first, list(served.prompt_ids), list(served.token_ids))
    assert list(served.logprobs) == pytest.approx(forward, abs=LOGPROB_TOL)
    with first.disable_adapter():  # the adapter moves the model: these are not the base's
        without = _forward_logprobs(first, list(served.prompt_ids), list(served.token_ids))
    assert max(abs(a - b) for a, b in zip(without, forward, strict=True)) > 0.05
    assert base.token_ids != served.token_ids or base.logprobs != served.logprobs

    # The next step's adapter replaces it; a resumed run re-syncs a name it already loaded.
    second = _random_adapter(first.unload(), tmp_path / "policy-2", seed=2)
    batcher.sync_adapter(tmp_path / "policy-2", "policy-2")
    assert vllm.models() == [NAME, "policy-2"]
    third = _random_adapter(second.unload(), tmp_path / "policy-2b", seed=3)
    batcher.sync_adapter(tmp_path / "policy-2b", "policy-2")  # in place, new weights
    assert vllm.models() == [NAME, "policy-2"]
    again = batcher.submit(prompt)
    forward = _forward_logprobs(third, list(again.prompt_ids), list(again.token_ids))
    assert list(again.logprobs) == pytest.approx(forward, abs=LOGPROB_TOL)
    batcher.close()


def test_rl_rollouts_on_vllm_train_on_its_tokens_and_sync_the_adapter(vllm, tmp_path) -> None:
    """Two GRPO iterations whose rollouts run on vLLM: step 2 samples from policy-1."""
    from trajgym.agents.models import load_student
    from trajgym.train.grpo import RewardWeights
    from trajgym.train.rl import RLConfig, train

    config = RLConfig(
        output_dir=tmp_path / "rl",
        server=_config(vllm),
        iterations=2,
        tasks_per_step=1,
        group_size=2,
        max_new_tokens=8,
        max_turns=2,
        lr=1e-2,
        rewards=RewardWeights(brevity=1.0),
    )
    summary = train(config)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert vllm.models() == [NAME, "policy-2"]  # policy-1 was unloaded when policy-2 came
    trained = config.trained()
    model, tokenizer = load_student(trained.student, adapter=trained.adapter)
    batcher = RemoteBatcher(_config(vllm, "policy-2"), tokenizer, 8, temperature=0.0)
    reply = batcher.submit(_retail_prompt(tokenizer, seed=4))
    batcher.close()
    forward = _forward_logprobs(model, list(reply.prompt_ids), list(reply.token_ids))
    assert list(reply.logprobs) == pytest.approx(forward, abs=LOGPROB_TOL)


def test_a_litellm_teacher_harvests_through_vllms_chat_api(vllm, tmp_path: Path) -> None:
    """`trajgym generate` with an OpenAI-compatible provider: vLLM's chat API, native tools.

    The base student (no trained one here) rarely calls a tool, so the hermes parser's part
    of the contract is also checked directly: a reply constrained to one ``<tool_call>`` line
    comes back through litellm as a parsed tool call.
    """
    import litellm

    out = tmp_path / "harvest.jsonl"
    argv = [sys.executable, "-m", "trajgym", "generate", "--agent-model", f"openai/{NAME}"]
    argv += ["--api-base", vllm.base_url, "--tool-mode", "native", "--env"]
    argv += ["trajgym/RetailLite-v0", "--split", "test", "--num-tasks", "2", "--max-turns", "3"]
    argv += ["--set", "agent.llm.max_tokens=48", "--set", "agent.llm.timeout_s=300"]
    argv += ["--set", "agent.llm.max_attempts=2", "-o", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    episodes = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(episodes) == 2
    for t in episodes:
        assert t["status"] == "ok", t["error"]
        assert t["provenance"]["model"] == f"openai/{NAME}"
        for m in t["messages"]:
            # Whatever the model wrote as a tool call was parsed, not left in the text.
            assert "<tool_call>" not in (m.get("content") or "")

    tool = {
        "type": "function",
        "function": {
            "name": "find_user_id_by_email",
            "description": "Find a customer's user id by their email.",
            "parameters": {
                "type": "object",
                "properties": {"email": {"type": "string"}},
                "required": ["email"],
            },
        },
    }
    call = (
        r'<tool_call>\n\{"name": "find_user_id_by_email", "arguments": '
        r'\{"email": "[a-z]{1,12}@example\.com"\}\}\n</tool_call>'
    )
    response = litellm.completion(
        model=f"openai/{NAME}",
        api_base=vllm.base_url,
        api_key="no-key",
        messages=[{"role": "user", "content": "My email is ann@example.com: find my account."}],
        tools=[tool],
        max_tokens=128,  # constrained decoding spends ~66 tokens on this line
        temperature=0.0,
        extra_body={"structured_outputs": {"regex": call}},
    )
    [parsed] = response.choices[0].message.tool_calls
    assert parsed.function.name == "find_user_id_by_email"
    assert json.loads(parsed.function.arguments)["email"].endswith("@example.com")
    assert not response.choices[0].message.content
