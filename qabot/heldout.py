"""Held-out files: questions worded otherwise than the training questions, each with the facts a right answer holds.

A JSON array of {question, facts: [...], answer?}: `answer` names the pair that answers it, where a dataset has one
(engine.heldout keeps the items a dataset answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qabot.dataset import parse_text
from qabot.errors import DatasetError


@dataclass(frozen=True)
class HeldoutItem:
    """A paraphrased question with the key facts a right answer must contain."""

    question: str
    facts: tuple[str, ...]
    answer: str | None = None


def read_heldout(path: Path) -> list[HeldoutItem]:
    """Read a held-out file: a JSON array of {question, facts: [...], answer?}."""
    source = str(path)
    if not path.is_file():
        raise DatasetError(source, ["file not found"])
    data = parse_text(path.read_text(encoding="utf-8"), source)
    problems, items = [], []
    for index, item in enumerate(data if isinstance(data, list) else []):
        question = item.get("question") if isinstance(item, dict) else None
        facts = item.get("facts") if isinstance(item, dict) else None
        if not isinstance(question, str) or not question.strip():
            problems.append(f"item {index + 1}: 'question' must be a non-empty string")
        elif not isinstance(facts, list) or not facts or not all(isinstance(f, str) and f.strip() for f in facts):
            problems.append(f"item {index + 1}: 'facts' must be a non-empty list of strings")
        else:
            answer = item.get("answer")
            items.append(
                HeldoutItem(question.strip(), tuple(f.strip() for f in facts), answer if isinstance(answer, str) else None)
            )
    if not isinstance(data, list) or not data:
        problems.append("expected a non-empty JSON array of {question, facts} objects")
    if problems:
        raise DatasetError(source, problems)
    return items
