"""Hostile uploads: whatever the bytes, the validator answers with problems (DatasetError), never another exception.

`upload` does what `engine.pipeline.validate_upload` does (decode, `parse_text`, `validate_items`) without importing
the engine (transformers), so these tests stay fast and torch-free.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qabot.dataset import MAX_PROBLEMS, STOPPED, QAPair, dataset_hash, pairs_to_json, parse_text, validate_items
from qabot.errors import DatasetError

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def upload(data: bytes, filename: str = "upload.json") -> list[QAPair]:
    """The chat upload path, as engine.pipeline.validate_upload runs it (no token limit: no tokenizer here)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(filename, [f"not UTF-8 text (byte {exc.start})"]) from exc
    return validate_items(parse_text(text, filename), filename)


def problems(data: bytes | str) -> list[str]:
    with pytest.raises(DatasetError) as info:
        upload(data.encode("utf-8") if isinstance(data, str) else data)
    return info.value.problems


def check(data: bytes) -> None:
    """The property: valid pairs that hash and serialize, or at most MAX_PROBLEMS problems an admin can be sent."""
    try:
        pairs = upload(data)
    except DatasetError as exc:
        assert 1 <= len(exc.problems) <= MAX_PROBLEMS
        for line in [*exc.problems, str(exc)]:
            assert isinstance(line, str) and line.strip()
            line.encode("utf-8")  # sendable: no lone surrogates in what the admin is shown
        return
    assert pairs and all(isinstance(p, QAPair) for p in pairs)
    dataset_hash(pairs)
    pairs_to_json(pairs).encode("utf-8")


# The findings of issue 9, point 7, one by one.


def test_deep_nesting_is_a_problem_not_a_recursion_error():
    (problem,) = problems("[" * 200_000)
    assert problem.startswith("not valid JSON: nested too deeply")
    (problem,) = problems('{"prompt": "a", "response": "b"}\n{"prompt": ' + "[" * 200_000 + "\n")
    assert problem.startswith("line 2: not valid JSON (nested too deeply")
    (problem,) = problems('{"a":' * 100_000)
    assert "nested too deeply" in problem


def test_a_number_with_thousands_of_digits_is_a_problem_not_a_value_error():
    digits = sys.get_int_max_str_digits()
    (problem,) = problems('[{"prompt": "a", "response": ' + "9" * 5000 + "}]")
    assert problem.startswith(f"not valid JSON: a number with more than {digits} digits")
    (problem,) = problems('{"prompt": "a", "response": "b"}\n{"prompt": ' + "9" * 5000 + "}\n")
    assert problem.startswith(f"line 2: not valid JSON (a number with more than {digits} digits")
    assert "digits" in problems("9" * 5000)[0]


def test_a_lone_surrogate_names_the_pair_and_field_and_never_reaches_the_hash():
    text = '[{"prompt": "Fine?", "response": "ok"}, {"prompt": "Who \\ud800 guards it?", "response": "Elara \\udfff."}]'
    assert problems(text) == [
        "pair 2, 'Who \\ud800 guards it?': 'prompt' has a lone surrogate '\\ud800' (character 5), "
        "which is not text; remove that \\u escape or complete its pair",
        "pair 2, 'Who \\ud800 guards it?': 'response' has a lone surrogate '\\udfff' (character 7), "
        "which is not text; remove that \\u escape or complete its pair",
    ]
    for problem in problems(text):
        problem.encode("utf-8")


def test_a_surrogate_pair_written_as_two_escapes_is_one_character():
    (pair,) = upload(b'[{"prompt": "Smile \\ud83d\\ude00?", "response": "Yes."}]')
    assert pair.prompt == "Smile \U0001f600?"
    dataset_hash([pair])


def test_millions_of_problems_are_capped():
    data = ("[" + ", ".join(["{}"] * (5 * 1024 * 1024 // 4)) + "]").encode()
    assert len(data) >= 5 * 1024 * 1024 - 8
    found = problems(data)
    assert len(found) == MAX_PROBLEMS
    assert found[:2] == ["pair 1: missing 'prompt'", "pair 1: missing 'response'"]
    assert found[-1] == STOPPED
    assert STOPPED == f"checking stopped after {MAX_PROBLEMS - 1} problems and there are more; fix these and send the file again"


def test_millions_of_bad_json_lines_are_capped():
    found = problems("{oops}\n" * 500_000)
    assert len(found) == MAX_PROBLEMS
    assert (
        found[0]
        == "line 1: not valid JSON (Expecting property name enclosed in double quotes); JSON Lines needs one object per line"
    )
    assert found[-1] == STOPPED


def test_exactly_the_cap_less_one_problems_are_all_listed_without_the_stop_line():
    items = [{"prompt": f"q{i}?"} for i in range(MAX_PROBLEMS - 1)]
    found = problems(json.dumps(items))
    assert len(found) == MAX_PROBLEMS - 1 and STOPPED not in found


def test_checking_many_bad_items_holds_little_memory():
    items = [{}] * 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError):
            validate_items(items)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_json_lines_with_a_raw_line_separator_inside_a_string():
    lines = [
        {"prompt": "Who guards\u2028the Stone?", "response": "Elara\u2029and\x85Orrin."},
        {"prompt": "Where?", "response": "Here."},
    ]
    text = "\r\n".join(json.dumps(item, ensure_ascii=False) for item in lines) + "\r\n"
    assert "\u2028" in text
    pairs = upload(text.encode("utf-8"))
    assert [p.prompt for p in pairs] == ["Who guards\u2028the Stone?", "Where?"]
    assert pairs[0].response == "Elara\u2029and\x85Orrin."


def test_json_lines_name_the_line_an_editor_shows_after_leading_blank_lines():
    (problem,) = problems('\n\n{"prompt": "a", "response": "b"}\n{oops}\n')
    assert problem.startswith("line 4:")


# Property-based: any bytes, any JSON.

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**4000, max_value=10**4400)  # around the int digit limit, both sides
    | st.floats()
    | st.text()
    | st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Zl", "Zp", "Zs"]))
    | st.sampled_from(["<|endoftext|>", "Question: x\nAnswer: y", "x" * 4001])
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)
)
pair_like = st.fixed_dictionaries({}, optional={"prompt": json_values, "response": json_values, "extra": json_values})


def dumps(value, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True)


@contextmanager
def int_digits(limit: int):
    saved = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(limit)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(saved)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # raw surrogates become bytes that are not UTF-8: a problem too


@FAST
@given(st.binary(max_size=400))
def test_any_bytes(data):
    check(data)


@FAST
@given(st.text(alphabet=st.sampled_from('[]{}",:0123456789-.eE \n\r\t\\u\u2028tfnalsrue'), max_size=200))
def test_any_json_ish_text(text):
    check(text.encode("utf-8"))


@FAST
@given(st.lists(pair_like | json_values, max_size=8), st.booleans(), st.booleans())
def test_any_json_array_or_json_lines(items, ensure_ascii, as_lines):
    with int_digits(0):  # let json.dumps write the huge numbers that parsing must then refuse
        if as_lines:
            text = "\n".join(dumps(item, ensure_ascii) for item in items)
        else:
            text = dumps(items, ensure_ascii)
    check(encode(text))


text_fields = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\u2028\u2029\x85\r\x0b\x0c\x1c"),
    max_size=30,
)


@FAST
@given(st.lists(st.fixed_dictionaries({"prompt": text_fields, "response": text_fields}), min_size=2, max_size=6))
def test_json_lines_read_like_the_same_array(items):
    """Any characters in the strings, U+2028 and the rest that str.splitlines() breaks on included, raw.

    (Two items at least: a file of one object is refused as "a single object", JSON Lines or not.)
    """
    as_array = json.dumps(items, ensure_ascii=False)
    as_lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    outcomes = []
    for text in (as_array, as_lines):
        try:
            outcomes.append(upload(text.encode("utf-8")))
        except DatasetError as exc:
            outcomes.append(exc.problems)
    assert outcomes[0] == outcomes[1]


@FAST
@given(st.integers(min_value=1, max_value=100_000), st.sampled_from(["[", '{"a":', '[{"prompt":']), st.booleans())
def test_any_depth_of_nesting(depth, opener, closed):
    text = opener * depth
    if closed:
        text += "1" + "".join("]" if o == "[" else "}" for o in reversed(opener * depth) if o in "[{")
    check(text.encode())
    check(('{"prompt": "a", "response": "b"}\n' + text).encode())


@FAST
@given(st.integers(min_value=1, max_value=20_000), st.sampled_from(["", "-", "0.", "1e", "1."]))
def test_any_length_of_number(digits, prefix):
    check(f'[{{"prompt": "a", "response": {prefix}{"7" * digits}}}]'.encode())
