"""Multi-turn GRPO: the student acts in the environments and learns from verified rewards.

Reads top to bottom: config; rollouts (``group_size`` episodes per task against the simulated
user and tools, batched across episodes on the student, the tokens it read and wrote and
their sampling log-probs recorded turn by turn); rewards (the environment's verification,
plus optional weighted shaping) and group-relative advantages; the clipped policy-gradient
loss on the model's own tokens only (optional KL to the reference model); the loop
(accelerate: each process rolls out its share of the tasks, gradients are averaged);
checkpoints (resumable) and curves. Runs on a CPU as is.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import Field, model_validator

from trajgym.agents.batching import Batcher
from trajgym.agents.remote import RemoteBatcher, ServerConfig
from trajgym.agents.replies import ReplySource
from trajgym.agents.student import StudentAgent, StudentConfig
from trajgym.config import save_config
from trajgym.envs import make, tasks_of
from trajgym.errors import ConfigError
from trajgym.records.schema import Split, Trajectory
from trajgym.rollouts.rollout import rollout
from trajgym.train.common import (
    ModelTraining,
    TrainingRun,
    load_checkpoint,
    new_accelerator,
    plot_curves,
    prepare_model,
    release_freed_memory,
    save_checkpoint,
    save_final,
    step_progress,
)
from trajgym.train.distill import (
    Teacher,
    TeacherScoring,
    distillation_advantages,
    make_teacher,
    reverse_kl_sum,
)
from trajgym.train.grpo import (
    Advantage,
    Episode,
    Reference,
    RewardWeights,
    episode_reward,
    group_advantages,
    policy_loss,
)
from trajgym.train.masks import Sampled, generated_sequences, token_budget_batches
from trajgym.train.tracking import accelerator_arguments, finish_trackers, start_trackers
from trajgym.train.turn_rewards import TurnRewards, per_turn_batch, turn_advantages

if TYPE_CHECKING:
    from trajgym.agents.engine import Engine


class RLSettings(ModelTraining):
    """How to run GRPO: everything of an RL run but its environments and its folder."""

    split: Split = Field("train", description="Split the tasks are drawn from.")
    families: list[str] | None = Field(None, description="Only these task families (None: all).")
    iterations: int = Field(
        20, ge=1, description="GRPO iterations: rollouts, then updates_per_batch optimizer steps."
    )
    tasks_per_step: int = Field(4, ge=1, description="Tasks per step, over all processes.")
    group_size: int = Field(4, ge=2, description="Episodes per task (the GRPO group).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass of the rollouts.")
    max_new_tokens: int = Field(96, ge=1, description="Most tokens in one reply.")
    max_turns: int = Field(12, ge=1, description="Episode steps before truncation.")
    rewards: RewardWeights = Field(default_factory=RewardWeights)
    scale_rewards: bool = Field(True, description="Divide advantages by the group's std.")
    lr: float = Field(2e-5, gt=0, description="Learning rate (constant).")
    clip_eps: float = Field(0.2, gt=0, description="PPO clip range of the probability ratio.")
    updates_per_batch: int = Field(1, ge=1, description="Optimizer passes over each batch.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL to the reference model.")
    micro_batch_tokens: int = Field(
        4096,
        ge=64,
        description="Padded tokens per forward pass (rows x longest): bounds the update's "
        "activations, so its memory does not grow with the number or length of episodes.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    server: ServerConfig | None = Field(
        None, description="Generate rollouts on a vLLM server (LoRA, synced every step)."
    )
    teacher: TeacherScoring | None = Field(
        None,
        description="On-policy distillation: this white-box teacher scores every token the "
        "student wrote, and log p_teacher - log p_student is the token's advantage.",
    )

    @model_validator(mode="after")
    def _server_needs_an_adapter(self) -> RLSettings:
        if self.server is not None and not (self.lora or self.adapter):
            raise ValueError("server: rollouts on a server sync a LoRA adapter; set lora: true")
        return self


class RLConfig(RLSettings, TrainingRun):
    """A GRPO run."""

    envs: list[str] = Field(["trajgym/RetailLite-v0"], description="Environments to act in.")
    output_dir: Path = Field(Path("runs/rl"), description="Checkpoints, adapter, curves, config.")


class RLSummary(TypedDict):
    """What an RL run did (also ``summary.json`` in its folder)."""

    steps: int
    final: str
    history: list[dict[str, Any]]
    loop_s: float
    precision: str  # what ran: "bf16" or "no" (fp32), whatever the config asked


# Rollouts -----------------------------------------------------------------------------------


Job = tuple[int, str, str, int]  # group, env id, task id, episode seed


def run_rollouts(
    model: Any,
    tokenizer: Any,
    jobs: Sequence[Job],
    config: RLConfig,
    source: ReplySource | None = None,
) -> list[Episode]:
    """Play every job at once, the student's turns batched across episodes.

    ``source`` generates the replies: the run's engine (its weights refreshed after each
    update) or a server; without one, a Batcher is made for these jobs alone.
    """
    from trajgym.agents.engine import Engine  # torch: imported where generation runs

    seed = jobs[0][3] if jobs else config.seed  # each step's own sampling streams
    replies = source or Batcher(
        model,
        tokenizer,
        max_batch=min(len(jobs), 16),
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=seed,
    )
    if isinstance(replies, Engine):
        replies.reseed(seed)
        replies.expect(len(jobs), len(jobs))  # a schedule set by the jobs, not thread timing
    student = StudentConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )

    def play(job: Job) -> Episode:
        group, env_id, task_id, seed = job
        env = make(env_id, split=config.split, max_episode_steps=config.max_turns)
        agent = StudentAgent(model, tokenizer, student, batcher=replies)
        try:
            t = rollout(env, agent, seed=seed, task_id=task_id)
        finally:
            agent.end()
            if isinstance(replies, Engine):
                replies.finished()
        env.close()
        return Episode(group, t, tuple(agent.turns))

    try:
        with ThreadPoolExecutor(max(len(jobs), 1)) as pool:
            return list(pool.map(play, jobs))
    finally:
        if source is None:
            replies.close()
        elif isinstance(replies, Engine):
            replies.drop_caches()  # the run's engine keeps its weights, not its KV pages
        release_freed_memory()  # the rollouts' KV caches, before the update allocates


def _run_engine(accelerator: Any, model: Any, tokenizer: Any, config: RLConfig) -> Engine | None:
    """One local engine for the whole run, computing in the training's precision.

    None where the engine cannot run the model: each step then makes its own Batcher.
    """
    from trajgym.agents.engine import Engine, local_engine

    world, rank = accelerator.num_processes, accelerator.process_index
    engine = local_engine(
        accelerator.unwrap_model(model),
        tokenizer,
        slots=len(step_jobs(task_pool(config), config, 0, rank, world)),
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        dtype="bfloat16" if accelerator.mixed_precision == "bf16" else "float32",
    )
    if isinstance(engine, Engine):
        return engine
    engine.close()
    return None


def task_pool(config: RLConfig) -> list[tuple[str, str]]:
    """Every (env id, task id) the run may draw, in a fixed order."""
    pool = []
    for env_id in config.envs:
        for t in tasks_of(env_id, config.split):
            if config.families is None or t.family in config.families:
                pool.append((env_id, t.id))
    if not pool:
        raise ConfigError(f"No tasks of families {config.families} in {config.envs}.")
    return pool


def step_jobs(
    pool: list[tuple[str, str]], config: RLConfig, step: int, rank: int, world: int
) -> list[Job]:
    """This process's share of the step's tasks, each repeated ``group_size`` times.

    A group's episodes share one seed (same persona, same user words): only the student's
    sampling differs between them, so their rewards compare its choices alone.
    """
    rng = random.Random(f"{config.seed}|{step}")
    picked = rng.sample(pool, min(config.tasks_per_step, len(pool)))
    seeds = [rng.randrange(2**31) for _ in picked]
    return [
        (g, env_id, task_id, seeds[g])
        for g, (env_id, task_id) in enumerate(picked)
        if g % world == rank
        for _ in range(config.group_size)
    ]


# Training -----------------------------------------------------------------------------------


def train(
    config: RLConfig,
    extra_reward: Callable[[Trajectory], float] | None = None,
    turn_rewards: TurnRewards | None = None,
) -> RLSummary:
    """Run (or resume) GRPO; returns a summary (also written to output_dir/summary.json).

    ``extra_reward`` adds any score of a trajectory (a judge's, say) to the configured ones.
    ``turn_rewards`` gives each student turn its own reward (GAD's discriminator, say): made
    relative to its group's turns, it is added to the episode's advantage on that turn's tokens.
    """
    import torch

    from trajgym.agents.engine import Engine

    if turn_rewards is not None and config.teacher is not None:
        raise ConfigError("Give per-turn rewards or a white-box teacher (teacher:), not both.")

    torch.manual_seed(config.seed)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    accelerator = new_accelerator(config.bf16, **accelerator_arguments(config.report_to, out))
    model, tokenizer = prepare_model(config, str(accelerator.device))
    reference = Reference(model) if config.kl_coef else None
    teacher = (
        make_teacher(config.teacher, tokenizer, str(accelerator.device), config.shared_prefix)
        if config.teacher
        else None
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = load_checkpoint(out, accelerator, {"step": 0, "history": []})
    if reference is not None and state["step"]:
        reference.policy_changed()  # restored from a checkpoint: trained since
    start_trackers(accelerator, config, "rl", state["step"])
    pool = task_pool(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    server = None
    if config.server is not None:
        server = RemoteBatcher(
            config.server, tokenizer, config.max_new_tokens, config.temperature, config.top_p
        )
        if state["step"]:  # resumed: serve the policy as it was at the checkpoint
            _sync(server, accelerator, model, out, state["step"])
    source: ReplySource | None = server or _run_engine(accelerator, model, tokenizer, config)
    started = time.perf_counter()
    progress = step_progress("grpo", "success", accelerator.is_main_process)
    progress.start()
    bar = progress.add_task("steps", total=config.iterations, completed=state["step"], success="-")
    while state["step"] < config.iterations:
        step = state["step"]
        torch.manual_seed(config.seed * 100_003 + step * world + rank)  # sampling differs by rank
        t0 = time.perf_counter()
        policy = accelerator.unwrap_model(model)
        policy.eval()
        jobs = step_jobs(pool, config, step, rank, world)
        if isinstance(source, Engine):
            source.refresh()  # the policy as the last update left it
        episodes = run_rollouts(policy, tokenizer, jobs, config, source)
        policy.train()
        rollout_s = time.perf_counter() - t0
        rewards, batch, scored = _scored(episodes, config, extra_reward, teacher, turn_rewards)
        stats = _update(model, optimizer, accelerator, batch, config, reference) | scored
        record = _gather_metrics(
            accelerator, episodes, rewards, stats, rollout_s, time.perf_counter() - t0
        )
        state["history"].append(record | {"step": step + 1})
        state["step"] = step + 1
        accelerator.log(record, step=state["step"])
        if server is not None:
            _sync(server, accelerator, model, out, state["step"])
        progress.update(bar, completed=state["step"], success=f"{record['success']:.0%}")
        if accelerator.is_main_process:
            progress.console.print(json.dumps(state["history"][-1]))
        if config.save_every and state["step"] % config.save_every == 0:
            save_checkpoint(out, accelerator, state)
    progress.stop()
    save_checkpoint(out, accelerator, state)
    if source is not None:
        source.close()
    final = config.trained().folder
    history = state["history"]
    if accelerator.is_main_process:
        names = ("reward", "success", "reply_tokens") + (("kl",) if config.kl_coef else ())
        names += ("reverse_kl",) if config.teacher else ()
        curves = {k: [h[k] for h in history] for k in names}  # KLs are measured only when used
        plot_curves(curves, out / "curves.png", "GRPO")
    summary: RLSummary = {
        "steps": state["step"],
        "final": str(final),
        "history": history,
        "loop_s": round(time.perf_counter() - started, 2),
        "precision": str(accelerator.mixed_precision),
    }
    save_final(accelerator, model, tokenizer, out, final, summary)
    finish_trackers(accelerator)
    del model, optimizer
    accelerator.free_memory()
    return summary


def _scored(
    episodes: list[Episode],
    config: RLConfig,
    extra: Callable[[Trajectory], float] | None,
    teacher: Teacher | None = None,
    turns: TurnRewards | None = None,
) -> tuple[list[float], list[tuple[Sampled, Advantage]], dict[str, float]]:
    """Each episode's reward, the sequences to train on with their advantages, the teacher's.

    The teacher's figures: the reverse KL summed over the student's tokens, and how many
    tokens it scored (both 0 without a teacher).

    Episodes with an infrastructure error teach nothing. Without a teacher, those with a zero
    advantage (a group whose rewards are all equal) carry no gradient; with one, every token
    has its own advantage, so every episode trains.
    """
    rewards = [episode_reward(e, config.rewards, config.max_new_tokens) for e in episodes]
    if extra is not None:
        rewards = [r + extra(e.trajectory) for r, e in zip(rewards, episodes, strict=True)]
    usable = [e.trajectory.status == "ok" for e in episodes]
    groups = [e.group for e in episodes]
    advantages = group_advantages(groups, rewards, config.scale_rewards)
    if turns is not None:
        per_turn = turn_advantages(groups, turns(episodes), config.scale_rewards)
        kept = [i for i, ok in enumerate(usable) if ok]  # an errored episode teaches nothing
        per_token = per_turn_batch(
            [episodes[i] for i in kept], [advantages[i] for i in kept], [per_turn[i] for i in kept]
        )
        return rewards, per_token, {"reverse_kl": 0.0, "teacher_tokens": 0.0}
    rows = [
        (s, a)
        for e, a, ok in zip(episodes, advantages, usable, strict=True)
        if ok
        for s in generated_sequences(e.turns)
    ]
    if teacher is None or config.teacher is None:
        batch: list[tuple[Sampled, Advantage]] = [(s, a) for s, a in rows if a != 0.0]
        return rewards, batch, {"reverse_kl": 0.0, "teacher_tokens": 0.0}
    scores = teacher.token_logprobs([s for s, _ in rows], config.temperature)
    weights = config.teacher
    batch = [
        (s, distillation_advantages(s, lp, weights.coef, a, weights.reward_coef))
        for (s, a), lp in zip(rows, scores, strict=True)
    ]
    kl = sum(reverse_kl_sum(s, lp) for (s, _), lp in zip(rows, scores, strict=True))
    return (
        rewards,
        batch,
        {"reverse_kl": kl, "teacher_tokens": sum(sum(s.assistant_mask) for s, _ in rows)},
    )


def _update(
    model: Any,
    optimizer: Any,
    accelerator: Any,
    batch: list[tuple[Sampled, Advantage]],
    config: RLConfig,
    reference: Reference | None,
) -> dict[str, float]:
    """``updates_per_batch`` optimizer steps over the batch, in micro-batches.

    Every process takes the same number of micro-batches (an empty one contributes a zero
    loss), so that the gradient all-reduce of DDP never waits on a process with less data.
    """
    import torch

    tokens = sum(sum(s.assistant_mask) for s, _ in batch)
    sequence_tokens = sum(len(s.input_ids) for s, _ in batch)
    micro = token_budget_batches(batch, config.micro_batch_tokens)
    counts = accelerator.gather(torch.tensor([len(micro)], device=accelerator.device))
    total = {
        "loss": 0.0,
        "kl": 0.0,
        "clipped": 0.0,
        "tokens": float(tokens),
        "sequences": float(len(batch)),
        "sequence_tokens": float(sequence_tokens),
    }
    for _ in range(config.updates_per_batch):
        for i in range(int(counts.max())):
            if i < len(micro):
                loss, stats = policy_loss(model, micro[i], config, reference, max(tokens, 1))
                for k, v in stats.items():
                    total[k] += v
                # back to a sum over tokens, so that each process weighs by its tokens when gathered
                total["loss"] += float(loss.detach()) * max(tokens, 1) / config.updates_per_batch
            else:
                loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            accelerator.backward(loss)
            release_freed_memory()  # this micro-batch's activations (shapes vary per batch)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if reference is not None:
            reference.policy_changed()
    release_freed_memory()
    return total


def _sync(server: RemoteBatcher, accelerator: Any, model: Any, out: Path, step: int) -> None:
    """Save the adapter after ``step`` and have the server sample from it from now on."""
    name = f"policy-{step}"
    path = out / "sync" / name
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path)
        server.sync_adapter(path, name)
        for old in path.parent.iterdir():
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    server.served = name


def _gather_metrics(
    accelerator: Any,
    episodes: list[Episode],
    rewards: list[float],
    stats: dict[str, float],
    rollout_s: float,
    step_s: float,
) -> dict[str, float]:
    """The step's means over every process's episodes and tokens."""
    import torch

    local = torch.tensor(
        [
            len(episodes),
            sum(rewards),
            sum((e.trajectory.reward or 0.0) for e in episodes),
            sum(len(g.token_ids) for e in episodes for g in e.turns),
            sum(len(e.turns) for e in episodes),
            stats["loss"],
            stats["kl"],
            stats["reverse_kl"],
            stats["teacher_tokens"],
            stats["clipped"],
            stats["tokens"],
            stats["sequences"],
            stats["sequence_tokens"],
        ],
        dtype=torch.float64,
        device=accelerator.device,
    )
    totals = accelerator.reduce(local, reduction="sum").tolist()
    n, reward, success, reply_tokens, turns, loss, kl, reverse_kl = totals[:8]
    teacher_tokens, clipped, tokens, sequences, sequence_tokens = totals[8:]
    trained = max(tokens, 1.0)
    return {
        "episodes": int(n),
        "reward": reward / max(n, 1),
        "success": success / max(n, 1),
        "reply_tokens": reply_tokens / max(turns, 1),
        "loss": loss / trained,  # the policy loss per trained token (a pass's mean)
        "kl": kl / trained,
        "reverse_kl": reverse_kl / max(teacher_tokens, 1.0),  # per token the teacher scored
        "teacher_tokens": int(teacher_tokens),
        "clip_fraction": clipped / trained,
        "trained_tokens": int(tokens),
        "sequences": int(sequences),  # fewer than trained turns when turns chain into one
        "sequence_tokens": int(sequence_tokens),
        "rollout_s": round(rollout_s, 2),
        "step_s": round(step_s, 2),
    }
