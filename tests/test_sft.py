"""SFT on a tiny model built offline: loss falls, LoRA weights change, the adapter reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import tensorboard_scalars, tiny_model, tiny_tokenizer

from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.sft import SFTConfig, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:

    root = tmp_path_factory.mktemp("sft")
    data = root / "expert.jsonl"
    generate(GenerateConfig(num_tasks=12, output=data), show_progress=False)
    texts = [chatml(to_text_messages(t.messages, t.tools)) for t in read_trajectories(data)]
    tok = tiny_tokenizer(texts, vocab_size=800)
    model = tiny_model(tok)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return data, root / "tiny"


def config(setup, out: Path, **kw) -> SFTConfig:
    data, model = setup
    base = dict(
        data=[data],
        model=str(model),
        output_dir=out,
        lr=1e-2,
        batch_size=4,
        max_optimizer_steps=12,
        max_length=16384,
        warmup_ratio=0.0,
        schedule="constant",
    )
    return SFTConfig(**{**base, **kw})


def test_full_sft_loss_falls(setup, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    summary = train(config(setup, tmp_path / "full", lora=False, lr=3e-3))
    losses = summary["losses"]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")
    base = AutoModelForCausalLM.from_pretrained(setup[1])
    assert any(
        not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(), strict=True)
    )


def test_lora_sft_trains_the_adapter_and_it_reloads_with_peft(setup, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary = train(config(setup, tmp_path / "run"))
    losses = summary["losses"]
    assert summary["tokens_per_s"] > 0 and summary["tokens"] > 0
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "config.yaml").exists()
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").exists()
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(setup[1]), adapter
    ).eval()
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it was trained
    ids = torch.tensor([[1, 5, 9, 30, 42]])
    plain = AutoModelForCausalLM.from_pretrained(setup[1]).eval()
    again = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(setup[1]), adapter
    ).eval()
    with torch.no_grad():
        assert not torch.allclose(reloaded(ids).logits, plain(ids).logits)
        assert torch.equal(reloaded(ids).logits, again(ids).logits)


def test_only_assistant_tokens_carry_loss(setup, tmp_path: Path) -> None:
    from trajgym.agents.models import load_student
    from trajgym.train.sft import load_examples

    cfg = config(setup, tmp_path / "x")
    _, tok = load_student(cfg.model)
    examples = load_examples(cfg, tok)
    ids, labels = examples[0]
    trained = tok.decode([t for t, y in zip(ids, labels, strict=True) if y != -100])
    assert "<tool_call>" in trained and "<|im_end|>" in trained
    assert "<tool_response>" not in trained and "# Tools" not in trained


def test_resume_continues_where_it_stopped(setup, tmp_path: Path) -> None:
    straight = train(config(setup, tmp_path / "straight", max_optimizer_steps=6, save_every=3))
    partial = train(config(setup, tmp_path / "resumed", max_optimizer_steps=3, save_every=3))
    resumed = train(config(setup, tmp_path / "resumed", max_optimizer_steps=6, save_every=3))
    assert partial["steps"] == 3 and resumed["steps"] == 6
    assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-4)


def test_runs_under_accelerate_launch_with_two_cpu_processes(setup, tmp_path: Path) -> None:
    import subprocess
    import sys

    data, model = setup
    accelerate = Path(sys.executable).parent / "accelerate"
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
            "sft",
            "--data",
            str(data),
            "--output-dir",
            str(tmp_path / "ddp"),
            "--set",
            f"model={model}",
            "--set",
            "max_optimizer_steps=2",
            "--set",
            "max_length=16384",
            "--set",
            "batch_size=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ddp" / "adapter" / "adapter_config.json").exists()
    assert "trained 2 steps" in proc.stdout


def test_assistant_loss_equals_the_full_logits_loss() -> None:
    """Projecting only the labelled positions gives the model's own loss, and its gradients."""
    from trajgym.train.sft import assistant_loss

    tokenizer = tiny_tokenizer(["hello world, how are you today"])
    model = tiny_model(tokenizer)
    ids = torch.randint(5, len(tokenizer), (3, 20))
    labels = torch.full_like(ids, -100)
    labels[0, 5:12], labels[1, 14:], labels[2, 2:4] = ids[0, 5:12], ids[1, 14:], ids[2, 2:4]
    attention = torch.ones_like(ids)
    attention[2, 10:] = 0
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attention}
    reference = model(**batch).loss
    reference.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ours = assistant_loss(model, batch)
    ours.backward()
    assert torch.allclose(ours, reference, atol=1e-6)
    for p, g in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)


@pytest.mark.timeout(600)
def test_killed_at_random_points_then_resumed_gives_the_same_loss_curve(
    setup, tmp_path: Path
) -> None:
    """SIGKILL mid-run (during a step or a checkpoint write), three times, then resume."""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    steps = 10
    straight = train(config(setup, tmp_path / "straight", max_optimizer_steps=steps, save_every=1))
    out = tmp_path / "killed"
    data, model = setup
    overrides = {
        "model": str(model),
        "lr": 0.01,
        "batch_size": 4,
        "max_optimizer_steps": steps,
        "save_every": 1,
        "max_length": 16384,
        "warmup_ratio": 0.0,
        "schedule": "constant",
    }
    command = [
        sys.executable,
        "-m",
        "trajgym",
        "train",
        "sft",
        "--data",
        str(data),
        "--output-dir",
        str(out),
    ]
    command += [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    state = out / "checkpoint" / "trainer_state.json"

    def saved_step() -> int:
        try:
            return int(json.loads(state.read_text())["step"])
        except (OSError, ValueError, KeyError):  # not there yet, or being swapped in
            return 0

    rng = random.Random(11)
    kills = 0
    for target in sorted(rng.sample(range(1, steps - 1), 3)):
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "120"},
        )
        while proc.poll() is None and saved_step() < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # anywhere in the next step, or its checkpoint write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3, "every kill should land while training runs"
    subprocess.run(command, check=True, capture_output=True)
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["steps"] == steps
    assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-4)


def test_the_same_config_twice_gives_the_same_losses(setup, tmp_path: Path) -> None:
    """Seeded init, shuffling and dropout: a rerun is the same run, loss for loss."""
    first = train(config(setup, tmp_path / "a", lora=True, max_optimizer_steps=6))
    second = train(config(setup, tmp_path / "b", lora=True, max_optimizer_steps=6))
    other = train(config(setup, tmp_path / "c", lora=True, max_optimizer_steps=6, seed=1))
    assert first["losses"] == second["losses"]
    assert other["losses"] != first["losses"]  # the seed does reach the run


def test_the_same_data_in_another_order_gives_the_same_losses(setup, tmp_path: Path) -> None:
    """A harvest writes episodes as they finish: its file order must not change the student."""
    data, _ = setup
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    reversed_data = tmp_path / "reversed.jsonl"
    reversed_data.write_text("".join(reversed(lines)), encoding="utf-8")
    settings = dict(lora=True, max_optimizer_steps=4, bucket_by_length=False)
    first = train(config(setup, tmp_path / "a", **settings))
    second = train(config(setup, tmp_path / "b", data=[reversed_data], **settings))
    assert first["losses"] == second["losses"]


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_trains_the_same_model(setup, tmp_path: Path, lora: bool) -> None:
    """Recomputing activations saves memory, not learning: the losses are those without it."""
    plain = train(config(setup, tmp_path / "a", lora=lora, max_optimizer_steps=4))
    checkpointed = train(
        config(setup, tmp_path / "b", lora=lora, max_optimizer_steps=4, gradient_checkpointing=True)
    )
    assert checkpointed["losses"] == pytest.approx(plain["losses"], rel=1e-4)
    assert checkpointed["losses"][-1] < checkpointed["losses"][0]  # gradients do flow through it


@pytest.mark.parametrize("native", [True, False])
def test_bf16_falls_back_to_fp32_where_it_is_only_emulated(monkeypatch, native: bool) -> None:
    import warnings

    from trajgym.train import common

    monkeypatch.setattr(common, "bf16_runs_natively", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accelerator = common.new_accelerator(bf16=True)
    assert accelerator.mixed_precision == ("bf16" if native else "no")
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert bool(said) is not native and all("trains in fp32" in s for s in said)
    assert common.new_accelerator(bf16=False).mixed_precision == "no"


def test_report_to_tensorboard_logs_the_loss_of_every_step_and_a_resume_goes_on(
    setup, tmp_path: Path
) -> None:
    out = tmp_path / "tracked"
    small = dict(batch_size=2, max_length=2048, report_to=["tensorboard"])
    first = train(config(setup, out, max_optimizer_steps=3, **small))
    summary = train(config(setup, out, max_optimizer_steps=5, **small))
    assert summary["losses"][:3] == first["losses"]
    curves = tensorboard_scalars(out / "tracking" / "trajgym")
    assert [step for step, _ in curves["loss"]] == [1, 2, 3, 4, 5]  # one point a step
    assert [v for _, v in curves["loss"]] == pytest.approx(summary["losses"], rel=1e-6)
    assert [step for step, _ in curves["lr"]] == [1, 2, 3, 4, 5]
    hparams = yaml.safe_load(next((out / "tracking" / "trajgym").glob("*/hparams.yml")).read_text())
    assert (
        hparams["stage"] == "sft"
        and hparams["lr"] == 1e-2
        and hparams["report_to"] == '["tensorboard"]'
    )
