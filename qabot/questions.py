"""The one question check (bots, CLI, answer worker, engine) and the prompt-format markers; no torch.

A question must not be able to write the prompt's format (`Question: ...\\nAnswer:`) nor a model's
special tokens. `check_question` collapses new lines, turns `Question:`/`Answer:` into plain words
and breaks every `<|`, so `<|endoftext|>`, `<|im_start|>` and the rest of `DEFAULT_SPECIAL_TOKENS`
(all of that form) cannot survive it. Tokens of other forms that only some tokenizers have (`<s>`,
`</s>`) are left as text here: the engine tokenizes questions with `split_special_tokens=True`,
which covers whatever the loaded tokenizer defines. Training data is refused instead of rewritten
(`qabot.dataset.validate_items`).
"""

from __future__ import annotations

import re

from qabot.errors import QuestionError

#: Special-token strings of common tokenizers (GPT-2, ChatML/SmolLM2/Qwen, Llama 3), used to check
#: training data when the model's own tokenizer is not at hand.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)

#: A `Question:` or `Answer:` marker anywhere (case-insensitive, spaces allowed before the colon).
MARKER = re.compile(r"\b(question|answer)[ \t]*:", re.IGNORECASE)
#: A line that starts, after optional spaces, with a marker: what training data may not contain.
#: A marker with every colon and space after it: what cleaning takes out ("Answer:: x" must not leave "Answer : x").
_MARKER_RUN = re.compile(r"\b(question|answer)[ \t]*:[\s:]*", re.IGNORECASE)
MARKER_LINE = re.compile(r"^[ \t]*(question|answer)[ \t]*:", re.IGNORECASE | re.MULTILINE)

UNREADABLE_MESSAGE = "your question has characters that could not be read; please type it again"
EMPTY_MESSAGE = "the question is empty: ask something, e.g. 'Who guards the Luminary Stone?'"


def too_long_message(length: int, max_chars: int) -> str:
    """The one wording for a question over the limit, shown by bots, CLI and workers alike."""
    return f"Your question is {length} characters long; please keep it under {max_chars}."


def clean_question(question: str) -> str:
    """Neutralise markers and `<|` tokens, collapse every run of whitespace to one space, strip.

    Idempotent: cleaning a cleaned question changes nothing, so each hop may check again.
    """
    text = re.sub(r"\s+", " ", question)  # first, so a marker split over lines ("Answer\n:") is one when neutralised
    text = _MARKER_RUN.sub(r"\1 ", text)
    return text.replace("<|", "< |").strip()


def check_question(question: str, max_chars: int) -> str:
    """Return the cleaned question, or raise QuestionError with a message for the asker."""
    if not isinstance(question, str):
        raise QuestionError(EMPTY_MESSAGE)
    text = clean_question(question)
    if not text:
        raise QuestionError(EMPTY_MESSAGE)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (bytes a terminal could not decode): no tokenizer reads it
            raise QuestionError(UNREADABLE_MESSAGE) from None
    if len(text) > max_chars:
        raise QuestionError(too_long_message(len(text), max_chars))
    return text
