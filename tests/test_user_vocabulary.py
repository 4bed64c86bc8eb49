"""The scripted user's vocabulary is each domain's data (user.yaml), checked on load."""

from __future__ import annotations

import uuid
from importlib import resources
from pathlib import Path

import pytest
import yaml

from trajgym.envs import domain_package, tasks_of
from trajgym.envs.users.base import get_persona
from trajgym.envs.users.scripted import ScriptedUser
from trajgym.envs.users.vocabulary import user_words
from trajgym.errors import ConfigError
from trajgym.records.schema import Message

DESKS = ("trajgym/Retail-v1", "trajgym/RetailLite-v0", "trajgym/Airline-v0")


@pytest.mark.parametrize("env_id", DESKS)
def test_the_user_answers_every_slot_the_expert_asks_for_with_its_value(env_id: str) -> None:
    expert = yaml.safe_load(
        resources.files(domain_package(env_id)).joinpath("expert.yaml").read_text()
    )
    asked: set[str] = set()
    for task in tasks_of(env_id, "test")[:300]:
        intent = task.goal.intents[0]  # what the user knows before its next request
        for slot in sorted(set(intent.slots) & set(expert["slot_names"])):
            user = ScriptedUser(task, get_persona("polite"), seed=0)
            question = expert["ask_slots"][0].format(slots=expert["slot_names"][slot])
            reply = user.reply([Message(role="assistant", content=question)]).text
            assert intent.slots[slot] in reply, (slot, question, reply)
            asked.add(slot)
    assert asked, "no task of the split has a slot the expert asks for"


def test_a_question_about_another_desks_fact_is_recognised_and_not_known() -> None:
    task = tasks_of("trajgym/Airline-v0", "test")[0]
    user = ScriptedUser(task, get_persona("polite"), seed=0)
    reply = user.reply([Message(role="assistant", content="What is your order number?")])
    assert reply.text in get_persona("polite").unknown


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | None) -> str:
    """A fresh importable package (a new name each time: imports are cached)."""
    name = f"desk_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    if text is not None:
        (package / "user.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_domain_vocabulary_is_loaded_in_order(tmp_path: Path, monkeypatch) -> None:
    name = _package(
        tmp_path,
        monkeypatch,
        "slots:\n"
        "  patient: {asked: 'patient id', say: 'I am patient {patient}'}\n"
        "  day: {asked: '\\bday\\b', say: 'on {day}'}\n",
    )
    words = user_words(name)
    assert words.asked(["what day suits you, and your patient id?"]) == ["patient", "day"]
    assert words.slots["day"].said({"day": "Monday"}) == "on Monday"
    assert words.slots["day"].said({}) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("slots:\n  day: {asked: '(unclosed', say: 'x'}\n", "not a regular expression"),
        ("slots:\n  day: {asked: 'day', otherwise: night}\n", "unknown slot 'night'"),
        ("slots:\n  day: {asks: 'day'}\n", "asks"),
        ("slots: [\n", "not a valid user vocabulary"),
    ],
)
def test_a_broken_vocabulary_is_a_clear_error_naming_the_file(
    tmp_path: Path, monkeypatch, text: str, problem: str
) -> None:
    name = _package(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError, match=f"{name}/user.yaml") as error:
        user_words(name)
    assert problem in str(error.value)


def test_a_domain_without_a_vocabulary_has_a_user_who_answers_nothing(tmp_path, monkeypatch):
    assert user_words(_package(tmp_path, monkeypatch, None)).slots == {}
