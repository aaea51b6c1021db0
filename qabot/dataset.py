"""Question/answer datasets: load JSON or JSON Lines, validate every pair, hash the content."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qabot.errors import DatasetError
from qabot.questions import DEFAULT_SPECIAL_TOKENS, MARKER_LINE

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_FIELD_CHARS = 4000
QUOTE_CHARS = 60  # a question quoted in a problem is shortened to this many characters
MAX_PROBLEMS = 50  # lines in a DatasetError at most: the first 49 problems, then STOPPED when there are more
STOPPED = f"checking stopped after {MAX_PROBLEMS - 1} problems and there are more; fix these and send the file again"


@dataclass(frozen=True)
class QAPair:
    """One training example: a question and the answer the bot should give."""

    prompt: str
    response: str


def pair_key(pair: QAPair) -> str:
    """A pair's short stable key (a retrieval index row, a provenance record)."""
    return hashlib.sha256(f"{pair.prompt}\x00{pair.response}".encode()).hexdigest()[:16]


def normalize_question(text: str) -> str:
    """Fold case, spaces, compatibility forms (NFKC: full-width "？" is "?") and trailing punctuation of any script
    ("？", "؟", "。") so that trivially different questions compare equal."""
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()
    end = len(text)
    while end and (text[end - 1] == " " or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end].casefold()


class _Problems:
    """Problems in the order found, at most MAX_PROBLEMS - 1 of them; `stopped` once one more turns up.

    A hostile file can hold millions of bad items; the admin gets the first ones and a last line that says
    checking stopped, and the checker stops looking (no millions of strings in memory).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stopped = False

    def add(self, line: str) -> None:
        if len(self.lines) < MAX_PROBLEMS - 1:
            self.lines.append(line)
        else:
            self.stopped = True

    def raise_any(self, source: str) -> None:
        if self.stopped:
            self.lines.append(STOPPED)
        if self.lines:
            raise DatasetError(source, self.lines)


class _JSONProblem(Exception):
    """JSON that cannot be read, with a message for the admin and where it is, when that is known."""

    def __init__(self, message: str, lineno: int | None = None, colno: int | None = None) -> None:
        super().__init__(message)
        self.message, self.lineno, self.colno = message, lineno, colno

    def at(self) -> str:
        return self.message if self.lineno is None else f"{self.message} at line {self.lineno}, column {self.colno}"


def _loads(text: str) -> Any:
    """json.loads, with every way it fails (bad syntax, deep nesting, huge integers) as a _JSONProblem."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _JSONProblem(exc.msg, exc.lineno, exc.colno) from exc
    except RecursionError as exc:
        raise _JSONProblem("nested too deeply") from exc
    except ValueError as exc:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise _JSONProblem(f"a number with more than {sys.get_int_max_str_digits()} digits") from exc


def parse_text(text: str, source: str) -> list[Any]:
    """Parse a JSON array, or JSON Lines (one object per line); raise DatasetError if neither.

    JSON Lines are split on "\\n" only ("\\r\\n" too: the "\\r" is JSON whitespace): U+2028, U+0085 and the
    other characters that str.splitlines() breaks on may stand raw inside a JSON string.
    """
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise DatasetError(source, ["the file is empty: expected a JSON array of {prompt, response} objects"])
    if stripped.startswith("["):
        try:
            return _loads(stripped)
        except _JSONProblem as exc:
            raise DatasetError(source, [f"not valid JSON: {exc.at()}"]) from exc
    if stripped.startswith("{") and "\n" in stripped:
        first = text.count("\n", 0, text.index("{")) + 1  # the line an editor shows, after any blank lines
        items, problems = [], _Problems()
        for lineno, line in enumerate(stripped.split("\n"), start=first):
            if problems.stopped:
                break
            if not line.strip():
                continue
            try:
                items.append(_loads(line))
            except _JSONProblem as exc:
                problems.add(f"line {lineno}: not valid JSON ({exc.message}); JSON Lines needs one object per line")
        problems.raise_any(source)
        return items
    try:
        data = _loads(stripped)
    except _JSONProblem as exc:
        raise DatasetError(source, [f"not valid JSON: {exc.at()}"]) from exc
    kind = type(data).__name__ if not isinstance(data, dict) else "a single object"
    raise DatasetError(source, [f"expected a JSON array of {{prompt, response}} objects, got {kind}"])


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """A question as admins see it in a problem: on one line, in quotes, shortened with an ellipsis."""
    line = re.sub(r"\s+", " ", _printable(text)).strip()
    if len(line) > limit:
        cut = line[: limit - 1]
        if " " in cut[limit // 2 :]:  # end on a whole word when one ends late enough
            cut = cut.rsplit(" ", 1)[0]
        line = cut.rstrip() + "…"
    return f"'{line}'"


def _printable(text: str) -> str:
    """Text that can be encoded and sent: a lone surrogate is written as its escape, '\\ud800'."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _field_problem(key: str, value: Any, max_field_chars: int, special_tokens: tuple[str, ...]) -> str | None:
    """What is wrong with one field of a pair, or None."""
    if not isinstance(value, str):
        return f"'{key}' must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"'{key}' is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # "\\ud800" in JSON: not text, and no hash or file can hold it
        escape = _printable(value[exc.start])
        return (
            f"'{key}' has a lone surrogate '{escape}' (character {exc.start + 1}), which is not text; "
            "remove that \\u escape or complete its pair"
        )
    if len(value) > max_field_chars:
        return f"'{key}' is {len(value)} characters, the limit is {max_field_chars}"
    marker = MARKER_LINE.search(value)
    if marker:
        return f"'{key}' has a line starting with '{marker.group(1)}:', the bot's own prompt format; reword that line"
    found = [token for token in special_tokens if token in value]
    if found:
        first = min(found, key=value.index)
        return f"'{key}' contains '{first}', a special token of the model; remove it"
    return None


def validate_items(
    items: list[Any],
    source: str = "dataset",
    *,
    count_tokens: Callable[[str, str], int] | None = None,
    max_tokens: int | None = None,
    max_field_chars: int = MAX_FIELD_CHARS,
    special_tokens: Iterable[str] | None = None,
) -> list[QAPair]:
    """Check every item and return the pairs, or raise DatasetError listing the problems found.

    At most MAX_PROBLEMS lines: past MAX_PROBLEMS - 1 problems checking stops and the last line is STOPPED.

    Problems name the pair counted from 1 and quote its question when it has one:
    "pair 162, 'Who guards the Luminary Stone?': the same question as pair 3 with a different answer;
    keep one". `count_tokens(prompt, response)` gives the length of a formatted example in tokens;
    with `max_tokens` it rejects items that will not fit the model's context. No prompt or response
    may contain a line starting with `Question:`/`Answer:` or any of `special_tokens` (the model's
    tokenizer's special tokens when the caller has it, else DEFAULT_SPECIAL_TOKENS).
    """
    if not isinstance(items, list):
        raise DatasetError(source, [f"expected a JSON array of {{prompt, response}} objects, got {type(items).__name__}"])
    if not items:
        raise DatasetError(source, ["the dataset has no pairs: add at least one {prompt, response} object"])
    tokens = tuple(t for t in (DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens) if t)
    problems = _Problems()
    pairs: list[QAPair] = []
    seen_exact: dict[tuple[str, str], int] = {}
    seen_question: dict[str, tuple[int, str]] = {}
    for number, item in enumerate(items, start=1):
        if problems.stopped:
            break
        if not isinstance(item, dict):
            problems.add(f"pair {number}: expected an object with 'prompt' and 'response', got {type(item).__name__}")
            continue
        prompt = item.get("prompt")
        where = f"pair {number}, {quote(prompt)}" if isinstance(prompt, str) and prompt.strip() else f"pair {number}"
        fields: dict[str, str] = {}
        for key in ("prompt", "response"):
            problem = f"missing '{key}'" if key not in item else _field_problem(key, item[key], max_field_chars, tokens)
            if problem:
                problems.add(f"{where}: {problem}")
            else:
                fields[key] = item[key].strip()
        if len(fields) != 2:
            continue
        pair = QAPair(fields["prompt"], fields["response"])
        exact = (pair.prompt, pair.response)
        question = normalize_question(pair.prompt)
        if exact in seen_exact:
            problems.add(f"{where}: exact duplicate of pair {seen_exact[exact]}")
            continue
        seen_exact[exact] = number
        if question in seen_question and seen_question[question][1] != pair.response:
            first = seen_question[question][0]
            problems.add(f"{where}: the same question as pair {first} with a different answer; keep one")
            continue
        seen_question.setdefault(question, (number, pair.response))
        if count_tokens is not None and max_tokens is not None:
            length = count_tokens(pair.prompt, pair.response)
            if length > max_tokens:
                problems.add(f"{where}: {length} tokens once formatted, the model's limit is {max_tokens}; shorten it")
                continue
        pairs.append(pair)
    problems.raise_any(source)
    return pairs


def read_dataset(
    path: Path,
    *,
    count_tokens: Callable[[str, str], int] | None = None,
    max_tokens: int | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    special_tokens: Iterable[str] | None = None,
) -> list[QAPair]:
    """Read and validate a dataset file; raise DatasetError (and change nothing) if anything is wrong."""
    source = str(path)
    if not path.is_file():
        raise DatasetError(source, ["file not found"])
    size = path.stat().st_size
    if size > max_file_bytes:
        raise DatasetError(source, [f"the file is {size} bytes, the limit is {max_file_bytes}"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(source, [f"not UTF-8 text (byte {exc.start})"]) from exc
    return validate_items(
        parse_text(text, source), source, count_tokens=count_tokens, max_tokens=max_tokens, special_tokens=special_tokens
    )


def dataset_hash(pairs: list[QAPair]) -> str:
    """A short content hash that names a dataset version."""
    canonical = json.dumps([[p.prompt, p.response] for p in pairs], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def pairs_to_json(pairs: list[QAPair]) -> str:
    """Serialize pairs in the original format, a JSON array of {prompt, response}."""
    return json.dumps([{"prompt": p.prompt, "response": p.response} for p in pairs], ensure_ascii=False, indent=1)
