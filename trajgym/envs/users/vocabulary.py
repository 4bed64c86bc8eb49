"""What a domain's scripted user can be asked and how it says each fact: data, not code.

Each domain package may ship a ``user.yaml`` listing its slots in order: the pattern that
recognises a question about the slot (matched against the lower-cased question), the phrase
that says it (``{field}``s from the user's facts; none for a question the user recognises but
can never answer, such as another desk's), and optionally another slot to offer when this
one's facts are unknown ("I don't remember my email, but my name is ..."). A domain without
the file has a user that answers no questions, only states its requests.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trajgym.errors import ConfigError

USER_WORDS_FILE = "user.yaml"


class SlotWords(BaseModel):
    """How one fact is asked about and said."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    asked: str = Field(description="regex recognising a question about this slot")
    say: str | None = Field(
        None, description="the phrase that says it ('my email is {email}'); none: never known"
    )
    otherwise: str | None = Field(None, description="a slot offered when this one is unknown")
    otherwise_prefix: str = ""

    @field_validator("asked")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e})") from e
        return pattern

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        """The compiled ``asked``."""
        return re.compile(self.asked)

    def said(self, facts: dict[str, str]) -> str | None:
        """The phrase filled from ``facts``, or None if the user lacks one of its facts."""
        if self.say is None:
            return None
        fields = [name for _, name, _, _ in string.Formatter().parse(self.say) if name]
        return self.say.format(**facts) if all(f in facts for f in fields) else None


class UserWords(BaseModel):
    """A domain's slots, in the order the user says them when asked several at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slots: dict[str, SlotWords] = {}

    def asked(self, questions: Sequence[str]) -> list[str]:
        """The slots any of the (lower-cased) questions asks about, in this vocabulary's order."""
        return [
            name
            for name, words in self.slots.items()
            if any(words.pattern.search(q) for q in questions)
        ]


@functools.cache
def user_words(package: str) -> UserWords:
    """The scripted user's words for a domain package (empty if it ships none)."""
    path = resources.files(package).joinpath(USER_WORDS_FILE)
    if not path.is_file():
        return UserWords()
    where = f"{package}/{USER_WORDS_FILE}"
    try:
        words = UserWords.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"{where} is not a valid user vocabulary: {e}") from e
    for name, slot in words.slots.items():
        if slot.otherwise is not None and slot.otherwise not in words.slots:
            raise ConfigError(f"{where}: slot '{name}' offers unknown slot '{slot.otherwise}'")
    return words
