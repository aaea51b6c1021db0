"""The `Question: ...\\nAnswer: ...` text format and token counting with the `tokenizers` library. No torch here.

The admin worker (no torch) checks new pairs against the live model's context with these, by the
same rule the train job uses with the transformers tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

STOP_TEXT = "\nQuestion:"
DEFAULT_MAX_LENGTH = 256  # longest formatted training example in tokens (TrainConfig.max_length)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
# The answer budget follows the data: its longest answer in tokens (EOS included), times a margin for a reworded or
# merged answer, plus a little slack for a short dataset; within half the model's context. An answer that reaches the
# budget is a runaway (shown as a decline), so the budget must never be what cuts an answer as long as the data's.
BUDGET_MARGIN = 1.25
BUDGET_SLACK = 8
MIN_BUDGET = 16
FALLBACK_BUDGET = 64  # for a version trained before budgets were stored, when no dataset is at hand to measure


QUESTION_START = "Question: "


def format_prompt(question: str) -> str:
    """The text the model sees before it answers."""
    return f"{QUESTION_START}{question.strip()}\nAnswer:"


def format_answer(answer: str) -> str:
    """The text the model learns to produce after the prompt (EOS is added as a token)."""
    return f" {answer.strip()}"


def answer_budget(longest_answer: int, context: int) -> int:
    """New tokens an answer may take, for data whose longest answer is `longest_answer` tokens long (EOS included)."""
    return max(MIN_BUDGET, min(context // 2, math.ceil(longest_answer * BUDGET_MARGIN) + BUDGET_SLACK))


def context_from_config(config: dict) -> int:
    """The longest sequence a model takes, from its config.json values."""
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def version_counter(folder: Path) -> tuple[Callable[[str, str], int], int, list[str]] | None:
    """For a saved model folder: (count_tokens(prompt, response), token limit, special tokens), or None.

    None when the folder has no fast tokenizer file (then only the text rules apply).
    """
    from tokenizers import Tokenizer

    tokenizer_file, config_file = folder / "tokenizer.json", folder / "config.json"
    if not tokenizer_file.is_file() or not config_file.is_file():
        return None
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    limit = min(DEFAULT_MAX_LENGTH, context_from_config(json.loads(config_file.read_text(encoding="utf-8"))))
    specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]

    def count(prompt: str, response: str) -> int:
        prompt_ids = tokenizer.encode(format_prompt(prompt), add_special_tokens=True).ids
        answer_ids = tokenizer.encode(format_answer(response), add_special_tokens=False).ids
        return len(prompt_ids) + len(answer_ids) + 1  # + EOS

    return count, limit, specials
