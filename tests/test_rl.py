"""GRPO: masks from generation, group advantages, the clipped loss, steps that change weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_smollm2
from helpers import tensorboard_scalars, tiny_model, tiny_tokenizer

from trajgym.agents.replies import Generated
from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.records.schema import Trajectory
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.grpo import Episode, RewardWeights, episode_reward, group_advantages, policy_loss
from trajgym.train.masks import generated_sequences, tokenize_with_masks
from trajgym.train.rl import (
    RLConfig,
    run_rollouts,
    step_jobs,
    task_pool,
    train,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random model whose tokenizer was trained on RetailLite conversations."""
    root = tmp_path_factory.mktemp("rl")
    data = root / "expert.jsonl"
    generate(GenerateConfig(envs=["trajgym/RetailLite-v0"], num_tasks=8, output=data), False)
    texts = [chatml(to_text_messages(t.messages, t.tools)) for t in read_trajectories(data)]
    tok = tiny_tokenizer(texts, vocab_size=800)
    tiny_model(tok).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return root / "tiny"


def test_group_advantages_are_relative_and_zero_for_uniform_groups() -> None:
    adv = group_advantages([0, 0, 0, 0, 1, 1], [1.0, 0.0, 0.0, 1.0, 0.5, 0.5], scale=True)
    assert adv[:4] == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-3)
    assert adv[4:] == [0.0, 0.0]  # all the same: nothing to learn from
    unscaled = group_advantages([0, 0, 0], [1.0, 0.0, 0.0], scale=False)
    assert unscaled == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_generated_masks_equal_sft_masks_on_a_round_trip(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is order #W1?"},
        {"role": "assistant", "content": "Let me look that up."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "It is delivered."},
    ]

    def ids(text: str) -> tuple[int, ...]:
        return tuple(tok(text, add_special_tokens=False).input_ids)

    turns = []
    for i in (2, 4):
        prompt = tok.apply_chat_template(convo[:i], tokenize=False, add_generation_prompt=True)
        reply = ids(convo[i]["content"] + "<|im_end|>")
        turns.append(Generated("", 0, 0, ids(prompt), reply, tuple(-0.5 for _ in reply)))
    [sequence] = generated_sequences(turns)  # the template is prefix-stable: one sequence
    sft = tokenize_with_masks(tok, convo)
    assert sequence.input_ids == sft.input_ids[: len(sequence.input_ids)]
    assert sequence.assistant_mask == sft.assistant_mask[: len(sequence.input_ids)]
    masked = [t for t, m in zip(sequence.input_ids, sequence.assistant_mask, strict=True) if m]
    assert tok.decode(masked) == "Let me look that up.<|im_end|>It is delivered.<|im_end|>"
    assert [
        lp for lp, m in zip(sequence.old_logprobs, sequence.assistant_mask, strict=True) if m
    ] == [-0.5] * len(masked)
    # A prompt that does not continue the previous turn starts a new sequence.
    odd = Generated("", 0, 0, ids("<|im_start|>user\nelse"), ids("x"), (-1.0,))
    assert len(generated_sequences([turns[0], odd])) == 2


def test_rollouts_record_what_the_model_read_and_wrote(tiny: Path) -> None:
    from trajgym.agents.models import load_student

    model, tok = load_student(str(tiny))
    config = RLConfig(
        model=str(tiny), group_size=2, tasks_per_step=2, max_new_tokens=8, max_turns=3
    )
    jobs = step_jobs(task_pool(config), config, step=0, rank=0, world=1)
    assert len(jobs) == 4 and jobs[0][:2] == jobs[1][:2] and jobs[0][3] == jobs[1][3]
    episodes = run_rollouts(model, tok, jobs, config)
    for e in episodes:
        assistant = [m for m in e.trajectory.messages if m.role == "assistant"]
        assert len(e.turns) == len(assistant) >= 1
        for turn in e.turns:
            assert 1 <= len(turn.token_ids) <= 8 and len(turn.logprobs) == len(turn.token_ids)
            assert all(lp <= 0 for lp in turn.logprobs)
        sequences = generated_sequences(e.turns)
        assert sum(sum(s.assistant_mask) for s in sequences) == sum(
            len(t.token_ids) for t in e.turns
        )
        # The first turn's prompt (system prompt, tools, the user) carries no loss.
        first = sequences[0]
        assert not any(first.assistant_mask[: len(e.turns[0].prompt_ids)])


def test_policy_loss_is_the_clipped_surrogate(tiny: Path) -> None:
    from trajgym.agents.models import load_student
    from trajgym.train.masks import Sampled

    model, _ = load_student(str(tiny))
    config = RLConfig(model=str(tiny), clip_eps=0.2, temperature=1.0)
    ids = list(range(5, 25))
    mask = [0] * 10 + [1] * 10
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        current = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze()
    old = [0.0] + current.tolist()  # aligned with input ids: old[i] scores ids[i]
    on_policy = Sampled(ids, mask, old)
    loss, stats = policy_loss(model, [(on_policy, 1.0)], config, None, token_count=10)
    assert float(loss.detach()) == pytest.approx(
        -1.0, abs=1e-4
    )  # ratio 1: minus the advantage per token
    assert stats["clipped"] == 0
    far = Sampled(ids, mask, [x - 1.0 for x in old])  # ratio e > 1 + eps: clipped
    loss, stats = policy_loss(model, [(far, 1.0)], config, None, token_count=10)
    assert float(loss.detach()) == pytest.approx(-1.2, abs=1e-4) and stats["clipped"] == 10
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # clipped: no grad


def test_episode_reward_weights_success_and_shaping() -> None:
    from trajgym.records.schema import Provenance, Trajectory

    t = Trajectory(
        env_id="e",
        env_version=0,
        task_id="t",
        split="train",
        family="f",
        seed=0,
        persona="p",
        messages=(),
        reward=1.0,
        termination="user_stop",
        provenance=Provenance(kind="student", agent="a"),
    )
    turns = (Generated("", 0, 0, (), (1, 2, 3, 4), (0.0,) * 4),)
    episode = Episode(0, t, turns)
    assert episode_reward(episode, RewardWeights(), 8) == 1.0
    assert episode_reward(episode, RewardWeights(brevity=1.0), 8) == pytest.approx(0.5)


@needs_smollm2
def test_two_grpo_steps_on_the_default_student_mask_advantage_and_change_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from trajgym.agents.models import load_student

    out = tmp_path / "rl"
    config = RLConfig(
        output_dir=out,
        iterations=2,
        tasks_per_step=1,
        group_size=2,
        max_new_tokens=12,
        max_turns=2,
        lr=1e-3,
        kl_coef=0.05,
    )

    # The untrained student never succeeds (and fills every reply): an extra reward on how
    # many characters it wrote makes the group's rewards differ, as a judge's score would.
    def written(t: Trajectory) -> float:
        return sum(len(m.text) for m in t.messages if m.role == "assistant") / 100

    # Masks and advantages on the real student's rollouts.
    model, tok = load_student(config.model)
    episodes = run_rollouts(model, tok, step_jobs(task_pool(config), config, 0, 0, 1), config)
    rewards = [
        episode_reward(e, config.rewards, config.max_new_tokens) + written(e.trajectory)
        for e in episodes
    ]
    advantages = group_advantages([e.group for e in episodes], rewards, scale=True)
    assert any(a != 0 for a in advantages)
    assert sum(advantages) == pytest.approx(0.0, abs=1e-6)  # one group: relative to its mean
    for e in episodes:
        [sequence, *rest] = generated_sequences(e.turns)
        masked = [t for t, m in zip(sequence.input_ids, sequence.assistant_mask, strict=True) if m]
        assert masked[: len(e.turns[0].token_ids)] == list(e.turns[0].token_ids)
        user = next(m.text for m in e.trajectory.messages if m.role == "user")
        unmasked = tok.decode(
            [t for t, m in zip(sequence.input_ids, sequence.assistant_mask, strict=True) if not m]
        )
        assert user in unmasked and user not in tok.decode(masked)  # the user's words: no loss
    del model

    summary = train(config, extra_reward=written)
    history = summary["history"]
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["episodes"] == 2 for h in history)
    assert sum(h["trained_tokens"] for h in history) > 0
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it moved
    assert (out / "curves.png").stat().st_size > 0


def test_a_run_resumes_from_its_checkpoint(tiny: Path, tmp_path: Path) -> None:
    config = RLConfig(
        model=str(tiny),
        output_dir=tmp_path / "resume",
        iterations=2,
        tasks_per_step=1,
        group_size=2,
        max_new_tokens=6,
        max_turns=2,
        lr=1e-2,
        rewards=RewardWeights(brevity=1.0),
    )
    first = train(config)["history"]
    resumed = train(config.model_copy(update={"iterations": 3}))["history"]
    assert [h["step"] for h in resumed] == [1, 2, 3] and resumed[:2] == first


def test_report_to_tensorboard_logs_each_steps_reward_loss_and_kl(
    tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tracked"
    config = RLConfig(
        model=str(tiny),
        output_dir=out,
        iterations=2,
        tasks_per_step=1,
        group_size=2,
        max_new_tokens=6,
        max_turns=2,
        lr=1e-2,
        kl_coef=0.1,
        updates_per_batch=2,  # the second pass, off-policy, has a loss (the first's sums to 0)
        report_to=["tensorboard"],
    )
    counter = iter(range(100))
    history = train(config, extra_reward=lambda t: float(next(counter)))["history"]
    assert all(h["loss"] != 0 for h in history) and history[-1]["kl"] > 0
    curves = tensorboard_scalars(out / "tracking" / "trajgym")
    for name in ("loss", "reward", "success", "kl", "reply_tokens", "clip_fraction"):
        assert curves[name] == [
            (h["step"], pytest.approx(h[name], rel=1e-6, abs=1e-12)) for h in history
        ], name


def test_one_rl_step_under_accelerate_launch_with_two_cpu_processes(
    tiny: Path, tmp_path: Path
) -> None:
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "ddp"
    settings = {
        "model": str(tiny),
        "iterations": 1,
        "tasks_per_step": 2,
        "group_size": 2,
        "max_new_tokens": 6,
        "max_turns": 2,
        "rewards.brevity": 1.0,
    }
    sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "-m",
            "trajgym",
            "train",
            "rl",
            "--output-dir",
            str(out),
            *sets,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1
    assert summary["history"][0]["episodes"] == 4  # two processes, one task (two episodes) each


def test_rollouts_on_a_vllm_style_server_train_on_its_tokens_and_sync_the_adapter(
    tiny: Path, tmp_path: Path
) -> None:
    from trajgym.agents.models import load_student
    from trajgym.agents.remote import RemoteBatcher, ServerConfig
    from trajgym.testing.token_server import TokenServer

    model, tok = load_student(str(tiny))
    with TokenServer(model, tok, name="base") as server:
        remote = ServerConfig(base_url=server.base_url, model="base")
        # What the server samples is what the trainer scores: same tokens, same log-probs.
        reply = RemoteBatcher(remote, tok, max_new_tokens=5).submit("<|im_start|>user\nhi")
        ids = torch.tensor([list(reply.prompt_ids) + list(reply.token_ids)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(reply.prompt_ids) - 1 : -1]
        local = torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply.token_ids)[:, None])
        assert local.squeeze(-1).tolist() == pytest.approx(list(reply.logprobs), abs=1e-4)

        config = RLConfig(
            model=str(tiny),
            output_dir=tmp_path / "remote",
            server=remote,
            iterations=2,
            tasks_per_step=1,
            group_size=2,
            max_new_tokens=6,
            max_turns=2,
            lr=1e-2,
            rewards=RewardWeights(brevity=1.0),
        )
        summary = train(config)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    completions = [r for r in server.requests if r["path"] == "/v1/completions"][1:]
    assert all(isinstance(r["prompt"][0], int) for r in completions)
    assert [r["model"] for r in completions][:2] == ["base", "base"]  # step 1: the base model
    assert completions[-1]["model"] == "policy-1"  # step 2: the adapter synced after step 1
    loads = [r["lora_name"] for r in server.requests if r["path"] == "/v1/load_lora_adapter"]
    assert loads == ["policy-1", "policy-2"] and set(server.adapters) == {"policy-2"}
    with pytest.raises(ValueError, match="lora"):
        RLConfig(server=remote, lora=False)


def test_micro_batches_fit_the_token_budget_and_keep_every_sequence() -> None:
    from trajgym.train.masks import Sampled, token_budget_batches

    lengths = [700, 120, 1500, 90, 5000, 640, 300, 1500]
    batch = [(Sampled([1] * n, [1] * n, [0.0] * n), float(i)) for i, n in enumerate(lengths)]
    micro = token_budget_batches(batch, 2048)
    assert sorted(a for m in micro for _, a in m) == sorted(a for _, a in batch)  # each once
    for m in micro:
        padded = len(m) * max(len(s.input_ids) for s, _ in m)
        assert padded <= 2048 or len(m) == 1  # only a sequence longer than the budget exceeds
    assert [len(m) for m in micro] == [3, 2, 1, 1, 1]  # 90-300 | 640, 700 | 1500 | 1500 | 5000
