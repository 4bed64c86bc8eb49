"""On-policy distillation: the teacher's per-token scores, the advantage, a run that uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.errors import ConfigError
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.distill import (
    LocalTeacher,
    TeacherScoring,
    distillation_advantages,
    reverse_kl_sum,
)
from trajgym.train.grpo import policy_loss
from trajgym.train.masks import Sampled
from trajgym.train.rl import RLConfig, train


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny student and a tiny teacher sharing one RetailLite tokenizer.

    The teacher is the student with a sharpened output layer: it prefers what the student
    already likes, only more confidently, so the student samples the teacher's favourite
    tokens often enough for a few steps of distillation to show.
    """
    root = tmp_path_factory.mktemp("distill")
    data = root / "expert.jsonl"
    generate(GenerateConfig(envs=["trajgym/RetailLite-v0"], num_tasks=6, output=data), False)
    texts = [chatml(to_text_messages(t.messages, t.tools)) for t in read_trajectories(data)]
    tok = tiny_tokenizer(texts, vocab_size=700)
    tiny_model(tok, seed=0).save_pretrained(root / "student")
    teacher = tiny_model(tok, seed=0)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8.0)
    teacher.save_pretrained(root / "teacher")
    for name in ("student", "teacher"):
        tok.save_pretrained(root / name)
    (root / "text.txt").write_text(texts[0])
    (root / "data.jsonl").write_text(data.read_text())
    return root / "student", root / "teacher"


def _token_logprobs(model: torch.nn.Module, ids: list[int]) -> list[float]:
    """By hand: lp[i] = log p(ids[i] | ids[:i]), lp[0] = 0."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    chosen = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])
    return [0.0, *chosen.squeeze(-1).tolist()]


def test_the_advantage_is_the_hand_computed_reverse_kl_per_token(pair) -> None:
    from trajgym.agents.models import load_student

    student_path, teacher_path = pair
    student, tok = load_student(str(student_path))
    teacher_model, _ = load_student(str(teacher_path))
    short, long = list(range(5, 17)), list(range(30, 55))
    sequences = []
    for ids in (short, long):
        mask = [0] * 6 + [1] * (len(ids) - 6)
        old = [lp if m else 0.0 for lp, m in zip(_token_logprobs(student, ids), mask, strict=True)]
        sequences.append(Sampled(ids, mask, old))
    teacher = LocalTeacher(TeacherScoring(model=str(teacher_path)), tok, "cpu")
    scored = teacher.token_logprobs(sequences, temperature=1.0)  # one padded batch of two
    for s, lp in zip(sequences, scored, strict=True):
        by_hand = _token_logprobs(teacher_model, s.input_ids)
        expected = [
            t - o if m else 0.0
            for t, o, m in zip(by_hand, s.old_logprobs, s.assistant_mask, strict=True)
        ]
        advantages = distillation_advantages(s, lp, coef=1.0)
        assert advantages == pytest.approx(expected, abs=1e-5)
        assert advantages[:6] == [0.0] * 6 and any(a != 0 for a in advantages)
        assert reverse_kl_sum(s, lp) == pytest.approx(-sum(expected), abs=1e-4)
    # The reward's advantage adds on the student's tokens only, by its weight.
    mixed = distillation_advantages(sequences[0], scored[0], 0.5, 2.0, 0.25)
    plain = distillation_advantages(sequences[0], scored[0], 0.5)
    assert [m - p for m, p in zip(mixed, plain, strict=True)] == pytest.approx(
        [0.5 * m for m in sequences[0].assistant_mask]
    )


def test_a_teacher_with_another_tokenizer_is_refused(pair, tmp_path: Path) -> None:
    from trajgym.agents.models import load_student

    student_path, _ = pair
    _, tok = load_student(str(student_path))
    other = tiny_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    tiny_model(other).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not share the student's tokenizer"):
        LocalTeacher(TeacherScoring(model=str(tmp_path / "other")), tok, "cpu")


def test_per_token_advantages_weight_each_token_of_the_surrogate(pair) -> None:
    from trajgym.agents.models import load_student

    student_path, _ = pair
    model, _ = load_student(str(student_path))
    ids, mask = list(range(5, 15)), [0] * 4 + [1] * 6
    old = [lp if m else 0.0 for lp, m in zip(_token_logprobs(model, ids), mask, strict=True)]
    advantages = [0.0] * 4 + [1.0, -2.0, 0.5, 3.0, 0.0, -1.0]
    config = RLConfig(model=str(student_path), temperature=1.0)
    loss, _ = policy_loss(model, [(Sampled(ids, mask, old), advantages)], config, None, 6)
    assert float(loss.detach()) == pytest.approx(-sum(advantages) / 6, abs=1e-4)  # ratio 1


def _run(student: Path, teacher: Path, out: Path) -> list[dict]:
    config = RLConfig(
        model=str(student),
        output_dir=out,
        iterations=3,
        tasks_per_step=2,
        group_size=2,
        max_new_tokens=8,
        max_turns=2,
        lora=False,
        lr=1e-2,
        teacher=TeacherScoring(model=str(teacher)),
    )
    return train(config)["history"]


def test_distilling_from_itself_measures_no_reverse_kl(pair, tmp_path: Path) -> None:
    student, _ = pair
    first = _run(student, student, tmp_path / "self")[0]  # before any update: teacher = policy
    assert first["teacher_tokens"] > 0 and first["teacher_tokens"] == first["trained_tokens"]
    assert first["reverse_kl"] == pytest.approx(0.0, abs=1e-4)


def test_on_policy_distillation_trains_on_every_episode_with_the_teachers_scores(
    pair, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    student, teacher = pair
    history = _run(student, teacher, tmp_path / "opd")
    # Every episode's tokens train (no group is skipped for equal rewards) and were scored.
    assert all(h["teacher_tokens"] == h["trained_tokens"] > 0 for h in history)
    assert all(h["reverse_kl"] > 0.05 for h in history)  # the sharpened teacher disagrees
    before = load_file(student / "model.safetensors")
    after = load_file(tmp_path / "opd" / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "opd" / "curves.png").stat().st_size > 0


def test_steps_on_the_loss_raise_what_the_teacher_prefers_and_lower_the_rest(pair) -> None:
    """The direction, on fixed samples: after a few steps on the distillation surrogate, the
    student's log-prob rises on tokens the teacher likes more than it does, and falls on the
    others (sampled single-token estimates are too noisy for a tiny model's full KL to show
    in a few steps; the direction is what the loss sets)."""
    from trajgym.agents.models import load_student

    student_path, teacher_path = pair
    model, tok = load_student(str(student_path))
    teacher = LocalTeacher(TeacherScoring(model=str(teacher_path)), tok, "cpu")
    torch.manual_seed(0)
    prompt = list(range(5, 45))
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt] * 6),
            do_sample=True,
            top_k=0,
            max_new_tokens=20,
            pad_token_id=tok.pad_token_id,
        )
    sequences = []
    for row in out.tolist():
        mask = [0] * len(prompt) + [1] * 20
        old = [lp if m else 0.0 for lp, m in zip(_token_logprobs(model, row), mask, strict=True)]
        sequences.append(Sampled(row, mask, old))
    scores = teacher.token_logprobs(sequences, temperature=1.0)
    batch = [
        (s, distillation_advantages(s, lp, 1.0)) for s, lp in zip(sequences, scores, strict=True)
    ]
    config = RLConfig(model=str(student_path), temperature=1.0, clip_eps=10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    model.train()
    for _ in range(5):
        loss, _ = policy_loss(model, batch, config, None, 120)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    up, down = [], []
    for s, advantages in batch:
        new = _token_logprobs(model, s.input_ids)
        for m, a, o, n in zip(s.assistant_mask, advantages, s.old_logprobs, new, strict=True):
            if m:
                (up if a > 0 else down).append(n - o)
    assert up and down
    assert sum(up) / len(up) > 0 > sum(down) / len(down)


# Logit distillation ---------------------------------------------------------------------------


def test_a_frozen_teacher_with_an_adapter_is_merged_and_scores_as_the_adapter_does(
    pair, tmp_path: Path
) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trajgym.train.distill import load_frozen_teacher

    student, _ = pair
    tokenizer = AutoTokenizer.from_pretrained(student)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(student), lora)
    with torch.no_grad():  # a trained adapter: it changes the model
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    adapted.save_pretrained(tmp_path / "adapter")
    text = (Path(student).parent / "text.txt").read_text()
    ids = torch.tensor([tokenizer(text).input_ids[:40]])
    base = AutoModelForCausalLM.from_pretrained(student)
    reference = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    teacher = load_frozen_teacher(str(student), tmp_path / "adapter", "float32", tokenizer, "cpu")
    assert not any("lora" in name for name, _ in teacher.named_modules())
    with torch.no_grad():
        merged, unmerged = teacher(input_ids=ids).logits, reference(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(student)(input_ids=ids).logits
    assert not torch.allclose(unmerged, plain, atol=1e-3)  # the adapter does change the scores
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_top_k_kl_is_zero_for_equal_models_and_the_full_kl_at_full_k() -> None:
    from trajgym.train.distill import top_k_kl

    torch.manual_seed(0)
    student, teacher = torch.randn(7, 50), torch.randn(7, 50) * 3
    assert float(top_k_kl(teacher, teacher, 5)) == pytest.approx(0.0, abs=1e-6)
    log_t, log_s = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    full = float((log_t.exp() * (log_t - log_s)).sum(-1).mean())
    assert float(top_k_kl(student, teacher, 50)) == pytest.approx(full, rel=1e-4)
    partial = [float(top_k_kl(student, teacher, k)) for k in (1, 5, 20)]
    assert 0 < partial[0] <= partial[1] <= partial[2] <= full + 1e-6  # a lower bound, tightening


def _sft(pair, out: Path, teacher: Path, weight: float = 0.5, steps: int = 4):
    from trajgym.train.distill import LogitDistillation
    from trajgym.train.sft import SFTConfig

    student, _ = pair
    return SFTConfig(
        data=[student.parent / "data.jsonl"],
        model=str(student),
        output_dir=out,
        lora=False,
        lr=3e-3,
        batch_size=4,
        max_optimizer_steps=steps,
        max_length=16384,
        warmup_ratio=0.0,
        schedule="constant",
        distill=LogitDistillation(teacher=str(teacher), top_k=8, weight=weight),
    )


def test_with_the_student_as_its_own_teacher_only_the_cross_entropy_remains(pair) -> None:
    from trajgym.agents.models import load_student
    from trajgym.train.distill import LogitDistillation
    from trajgym.train.sft import assistant_loss, load_examples

    student, _ = pair
    model, tok = load_student(str(student))
    config = _sft(pair, Path("unused"), student)
    ids, labels = load_examples(config, tok)[0]
    batch = {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }
    plain = float(assistant_loss(model, batch))
    distill = LogitDistillation(teacher=str(student), top_k=8, weight=0.3)
    mixed = float(assistant_loss(model, batch, model, distill))
    assert mixed == pytest.approx(0.7 * plain, rel=1e-5)


def test_logit_distillation_pulls_the_student_toward_the_teacher(pair, tmp_path: Path) -> None:
    """At weight 1 the loss is the KL alone: training lowers it, on the teacher's own data."""
    from trajgym.train.sft import train as sft

    student, teacher = pair
    losses = sft(_sft(pair, tmp_path / "kd", teacher, weight=1.0, steps=8))["losses"]
    assert losses[0] > 0.05 and sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2


def test_logit_distillation_refuses_a_teacher_with_another_tokenizer(pair, tmp_path: Path) -> None:
    from trajgym.train.sft import train as sft

    other = tiny_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    tiny_model(other).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not share the student's tokenizer"):
        sft(_sft(pair, tmp_path / "kd", tmp_path / "other"))


def test_a_teacher_on_a_vllm_style_server_scores_as_the_local_one(pair) -> None:
    from trajgym.agents.models import load_student
    from trajgym.agents.remote import ServerConfig
    from trajgym.testing.token_server import TokenServer
    from trajgym.train.distill import make_teacher

    student_path, teacher_path = pair
    _, tok = load_student(str(student_path))
    teacher_model, teacher_tok = load_student(str(teacher_path))
    ids = list(range(5, 30))
    mask = [0] * 10 + [1] * 15
    sequences = [Sampled(ids, mask, [0.0] * len(ids)), Sampled(ids[:12], mask[:12], [0.0] * 12)]
    local = make_teacher(TeacherScoring(model=str(teacher_path)), tok, "cpu")
    expected = local.token_logprobs(sequences, 1.0)
    with TokenServer(teacher_model, teacher_tok, name="teacher") as server:
        config = TeacherScoring(server=ServerConfig(base_url=server.base_url, model="teacher"))
        remote = make_teacher(config, tok, "cpu")
        scored = remote.token_logprobs(sequences, 1.0)
        with pytest.raises(ConfigError, match="temperature 1"):
            remote.token_logprobs(sequences, 0.7)
        assert any(r.get("prompt_logprobs") == 0 for r in server.requests)
    for got, want in zip(scored, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    other = tiny_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    with TokenServer(tiny_model(other), other, name="other") as server:
        config = TeacherScoring(server=ServerConfig(base_url=server.base_url, model="other"))
        with pytest.raises(ConfigError, match="does not share the student's tokenizer"):
            make_teacher(config, tok, "cpu")
    with pytest.raises(ValueError, match="exactly one"):
        TeacherScoring()
