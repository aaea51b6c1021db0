"""Combining an uploaded or added set of pairs with the current dataset. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from qabot.dataset import QAPair, normalize_question


class UploadMode(StrEnum):
    """What an uploaded file does to the current dataset."""

    ADD = "add"  # the default: the file's pairs join the dataset (a question asked again gets the file's answer)
    REPLACE = "replace"  # the file becomes the dataset; pairs missing from it are dropped


@dataclass(frozen=True)
class Merge:
    """The dataset after a merge, and what happened to the pairs."""

    pairs: list[QAPair]
    added: int
    updated: int
    kept: int  # pairs of the current dataset still in the result
    dropped: int


def merge_pairs(current: list[QAPair], incoming: list[QAPair], mode: UploadMode = UploadMode.ADD) -> Merge:
    """`incoming` added to (or replacing) `current`; questions are matched after normalisation."""
    by_question = {normalize_question(p.prompt): p for p in current}
    incoming_questions = {normalize_question(p.prompt) for p in incoming}
    updated = sum(1 for p in incoming if by_question.get(normalize_question(p.prompt), p).response != p.response)
    added = sum(1 for q in incoming_questions if q not in by_question)
    if mode == UploadMode.REPLACE:  # counted over the pairs, so that two wordings of one question count twice
        dropped = would_drop(current, incoming)
        return Merge(list(incoming), added, updated, len(current) - dropped, dropped)
    kept_order = [p for p in current if normalize_question(p.prompt) not in incoming_questions]
    return Merge([*kept_order, *incoming], added, updated, len(current), 0)


def would_drop(current: list[QAPair], incoming: list[QAPair]) -> int:
    """How many pairs of `current` a replacement by `incoming` would drop."""
    incoming_questions = {normalize_question(p.prompt) for p in incoming}
    return sum(1 for p in current if normalize_question(p.prompt) not in incoming_questions)
