"""Question checks that need no model (and no torch), for clients and workers alike."""

from __future__ import annotations

from qabot.errors import QuestionError


def check_question(question: str, max_chars: int) -> str:
    """Return the question stripped, or raise QuestionError with a message for the asker."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty: ask something, e.g. 'Who guards the Luminary Stone?'")
    text = question.strip()
    if len(text) > max_chars:
        raise QuestionError(f"the question is {len(text)} characters long; the limit is {max_chars}")
    return text
