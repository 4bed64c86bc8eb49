"""Shared-prefix training computes what the plain path computes, with less: same gradients.

Every comparison runs the same micro-batch twice, the prefix computed once (``train/prefix.py``)
and every row computed in full, and asks for gradients equal to a relative 1e-5 in fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.distill import LocalTeacher, LogitDistillation, TeacherScoring
from trajgym.train.grpo import Reference, policy_loss
from trajgym.train.masks import IGNORE_INDEX, Sampled
from trajgym.train.prefix import kept_logits, plan
from trajgym.train.rl import RLConfig
from trajgym.train.sft import SFTConfig, assistant_loss, batches, load_examples

TOLERANCE = 1e-5  # max |difference| / max |gradient|, per parameter, fp32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Any, list[tuple[list[int], list[int]]]]:
    """A tiny model on RetailLite's tokens, saved; its tokenizer; SFT's examples of 8 episodes."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("prefix")
    data = root / "expert.jsonl"
    generate(GenerateConfig(envs=["trajgym/RetailLite-v0"], num_tasks=8, output=data), False)
    texts = [chatml(to_text_messages(t.messages, t.tools)) for t in read_trajectories(data)]
    tokenizer = tiny_tokenizer(texts, vocab_size=800)
    tiny_model(tokenizer).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(root / "tiny")
    examples = load_examples(SFTConfig(data=[data], model=str(root / "tiny")), tokenizer)
    return root / "tiny", tokenizer, examples


def _batch(tiny, rows: int = 4) -> dict[str, Any]:
    """SFT's first micro-batch: rows of different lengths, right-padded, one shared system turn."""
    path, tokenizer, examples = tiny
    config = SFTConfig(data=[path], batch_size=rows, bucket_by_length=False)
    batch = next(batches(examples, config, 0, tokenizer.pad_token_id))
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # padding in play
    return batch


def _model(tiny, lora: bool = False, checkpointing: bool = False) -> Any:
    """The tiny model, trainable (a LoRA whose B is not zero, so that A gets gradients too)."""
    model = tiny_model(tiny[1])
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def _gradients(model: Any, loss: Callable[[bool], Any]) -> Iterator[dict[str, Any]]:
    """The loss's gradients with the prefix shared, then with every row computed in full."""
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        loss(shared).backward()
        yield {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_gradients(model: Any, loss: Callable[[bool], Any]) -> None:
    shared, plain = _gradients(model, loss)
    assert shared.keys() == plain.keys() and plain
    worst = max(
        float((shared[n] - plain[n]).abs().max() / plain[n].abs().max().clamp_min(1e-30))
        for n in plain
    )
    assert worst <= TOLERANCE, worst


@pytest.mark.parametrize(
    ("lora", "checkpointing"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_sft_gradients_equal_the_plain_path(tiny, lora: bool, checkpointing: bool) -> None:
    model, batch = _model(tiny, lora, checkpointing), _batch(tiny)
    _assert_same_gradients(model, lambda shared: assistant_loss(model, batch, shared_prefix=shared))


def test_logit_distillation_gradients_equal_the_plain_path(tiny) -> None:
    model, batch = _model(tiny), _batch(tiny)
    teacher = tiny_model(tiny[1], seed=3).eval()
    distill = LogitDistillation(teacher="unused", top_k=5, weight=0.5)
    _assert_same_gradients(
        model, lambda shared: assistant_loss(model, batch, teacher, distill, shared)
    )


def _sampled(tiny, rows: int = 4) -> list[Sampled]:
    """SFT's rows as rollout sequences: the assistant's tokens, made-up sampling log-probs."""
    batch = _batch(tiny, rows)
    generator = torch.Generator().manual_seed(0)
    out = []
    for ids, labels, attention in zip(
        batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
    ):
        n = int(attention.sum())
        mask = (labels[:n] != IGNORE_INDEX).long().tolist()
        old = (-torch.rand(n, generator=generator) * 3).tolist()
        out.append(
            Sampled(
                ids[:n].tolist(), mask, [lp if m else 0.0 for lp, m in zip(old, mask, strict=True)]
            )
        )
    return out


def test_grpo_surrogate_and_reference_equal_the_plain_path(tiny) -> None:
    model = _model(tiny)
    reference = Reference(tiny_model(tiny[1], seed=5))  # another policy: the KL is not 0
    reference.policy_changed()
    sequences = _sampled(tiny)
    batch = [(s, a) for s, a in zip(sequences, [1.0, -0.5, 2.0, -1.0], strict=True)]
    stats = {}

    def loss(shared: bool) -> Any:
        config = RLConfig(kl_coef=0.1, temperature=0.9, shared_prefix=shared)
        value, stats[shared] = policy_loss(model, batch, config, reference, 100)
        return value

    _assert_same_gradients(model, loss)
    assert stats[True]["kl"] > 0
    assert stats[True]["kl"] == pytest.approx(stats[False]["kl"], rel=1e-5)


def test_the_reference_pass_is_skipped_while_the_policy_is_the_reference(tiny) -> None:
    """A fresh LoRA adds zero, a full fine-tune's copy is the policy: the skipped pass's KL is
    what the pass computes (0); after an optimizer step the pass runs again."""
    sequences = _sampled(tiny)
    batch = [(s, a) for s, a in zip(sequences, [1.0, -0.5, 2.0, -1.0], strict=True)]
    config = RLConfig(kl_coef=0.1)
    from peft import LoraConfig, get_peft_model

    fresh_lora = get_peft_model(tiny_model(tiny[1]), LoraConfig(r=4, target_modules=["q_proj"]))
    for model in (tiny_model(tiny[1]), fresh_lora):
        reference = Reference(model)
        assert reference.same_as_policy
        skipped, skipped_stats = policy_loss(model, batch, config, reference, 100)
        computing = copy.copy(reference)
        computing.policy_changed()
        computed, computed_stats = policy_loss(model, batch, config, computing, 100)
        assert float(skipped) == pytest.approx(float(computed), rel=1e-6)
        assert skipped_stats["kl"] == 0.0 and abs(computed_stats["kl"]) < 1e-6
    trained = get_peft_model(tiny_model(tiny[1]), LoraConfig(r=4, target_modules=["q_proj"]))
    for name, p in trained.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    assert not Reference(trained).same_as_policy  # an adapter that already changes the policy


def test_on_policy_teacher_scores_equal_the_plain_path(tiny) -> None:
    path, tokenizer, _ = tiny
    sequences = _sampled(tiny)
    shared, plain = (
        LocalTeacher(TeacherScoring(model=str(path)), tokenizer, "cpu", flag).token_logprobs(
            sequences, temperature=0.8
        )
        for flag in (True, False)
    )
    for s, a, b in zip(sequences, shared, plain, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
        assert sum(1 for m, x in zip(s.assistant_mask, a, strict=True) if m and x != 0.0) > 0


def _counting(model: Any) -> list[int]:
    """Every token id the model's embedding is fed, counted call by call."""
    counts: list[int] = []
    model.get_input_embeddings().register_forward_pre_hook(
        lambda _, args: counts.append(args[0].numel())
    )
    return counts


def test_the_prefix_is_computed_once_and_nothing_after_the_last_loss_token(tiny) -> None:
    model, batch = _model(tiny), _batch(tiny)
    ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    planned = plan(ids, attention, keep)
    lengths = attention.sum(1)
    last_kept = [int(torch.nonzero(row).max()) + 1 for row in keep]
    assert planned.prefix > 50 and list(planned.lengths) == last_kept
    assert all(
        n < int(length) for n, length in zip(last_kept, lengths, strict=True)
    )  # a tail after the loss
    counts = _counting(model)
    with torch.no_grad():
        kept_logits(model, ids, attention, keep)
    rows, width = len(last_kept), max(last_kept)
    assert counts == [planned.prefix, rows * (width - planned.prefix)]
    assert sum(counts) < int(lengths.sum())
    assert planned.computed_tokens == planned.prefix + sum(n - planned.prefix for n in last_kept)


def test_rows_without_a_common_prefix_fall_back_to_one_plain_pass(tiny) -> None:
    model, batch = _model(tiny), _batch(tiny)
    ids, attention, labels = (batch[k].clone() for k in ("input_ids", "attention_mask", "labels"))
    ids[1, 0] = (ids[0, 0] + 1) % 100  # another first token: nothing shared
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    assert plan(ids, attention, keep).prefix == 0
    counts = _counting(model)
    with torch.no_grad():
        fallback = kept_logits(model, ids, attention, keep)
        plain = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits
    assert len(counts) == 2 and counts[0] < counts[1]  # one pass, truncated; then the full one
    torch.testing.assert_close(fallback, plain, rtol=1e-5, atol=1e-5)
    one_row = plan(ids[:1], attention[:1], keep[:1])
    assert one_row.prefix == 0 and one_row.rows == (0,)
    no_loss = keep.clone()
    no_loss[2] = False  # a row with nothing to learn is not computed at all
    assert plan(ids, attention, no_loss).rows == (0, 1, 3)


def test_rows_alike_past_their_first_loss_token_keep_every_logit(tiny) -> None:
    """Two samples of one GRPO group share their first reply: every kept logit is returned."""
    model, batch = _model(tiny), _batch(tiny)
    ids, attention, labels = (batch[k].clone() for k in ("input_ids", "attention_mask", "labels"))
    ids[1], attention[1], labels[1] = ids[0], attention[0], labels[0]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    first = int(keep[0].float().argmax())
    assert plan(ids, attention, keep).prefix <= first
    with torch.no_grad():
        shared = kept_logits(model, ids, attention, keep)
        plain = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits
    assert shared.shape == plain.shape == (int(keep.sum()), plain.shape[-1])
    assert torch.allclose(shared, plain, rtol=1e-4, atol=1e-5)
