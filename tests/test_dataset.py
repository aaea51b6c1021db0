"""Dataset validation: every bad case is reported with the item and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qabot.dataset import dataset_hash, read_dataset, read_heldout, validate_items
from qabot.errors import DatasetError
from tests.conftest import DATA_DIR


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(DatasetError) as info:
        read_dataset(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value.problems


def write(tmp_path: Path, text: str, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_dataset_is_valid_and_large_enough():
    pairs = read_dataset(DATA_DIR / "sample.json")
    assert len(pairs) >= 150
    heldout = read_heldout(DATA_DIR / "heldout.json")
    responses = {p.response for p in pairs}
    assert len(heldout) >= 40
    for item in heldout:
        assert item.answer in responses
        assert all(f.casefold() in item.answer.casefold() for f in item.facts)


def test_json_array_and_json_lines_give_the_same_pairs(tmp_path):
    items = [{"prompt": "Who guards the Stone?", "response": "Elara."}, {"prompt": "Where?", "response": "In the Sanctum."}]
    array = read_dataset(write(tmp_path, json.dumps(items)))
    lines = read_dataset(write(tmp_path, "\n".join(json.dumps(i) for i in items) + "\n", "data.jsonl"))
    assert array == lines
    assert [p.prompt for p in array] == ["Who guards the Stone?", "Where?"]


def test_not_json(tmp_path):
    (problem,) = problems_of(write(tmp_path, '[{"prompt": "a", "response": "b",]'))
    assert "not valid JSON" in problem and "line 1" in problem


def test_not_an_array(tmp_path):
    (problem,) = problems_of(write(tmp_path, '{"prompt": "a", "response": "b"}'))
    assert "expected a JSON array" in problem


def test_bad_json_lines_names_the_line(tmp_path):
    (problem,) = problems_of(write(tmp_path, '{"prompt": "a", "response": "b"}\n{oops}\n', "d.jsonl"))
    assert problem.startswith("line 2:")


def test_every_bad_item_is_reported_with_its_index(tmp_path):
    items = [
        {"prompt": "Fine question?", "response": "Fine answer."},
        {"response": "No question."},
        {"prompt": "No answer?"},
        {"prompt": 42, "response": "Number."},
        {"prompt": "   ", "response": "Blank question."},
        {"prompt": "Blank answer?", "response": "\n\t"},
        "just a string",
        {"prompt": "Fine question?", "response": "Fine answer."},
        {"prompt": "fine question", "response": "Another answer."},
        {"prompt": "Long?", "response": "x" * 5000},
    ]
    problems = problems_of(write(tmp_path, json.dumps(items)))
    assert problems == [
        "item 1: missing 'prompt'",
        "item 2: missing 'response'",
        "item 3: 'prompt' must be a string, got int",
        "item 4: 'prompt' is empty",
        "item 5: 'response' is empty",
        "item 6: expected an object with 'prompt' and 'response', got str",
        "item 7: exact duplicate of item 0",
        "item 8: the same question as item 0 with a different answer; keep one",
        "item 9: 'response' is 5000 characters, the limit is 4000",
    ]


def test_empty_file_and_empty_array(tmp_path):
    assert "empty" in problems_of(write(tmp_path, ""))[0]
    assert "no pairs" in problems_of(write(tmp_path, "[]"))[0]


def test_missing_and_oversize_files(tmp_path):
    assert problems_of(tmp_path / "nope.json") == ["file not found"]
    path = write(tmp_path, json.dumps([{"prompt": "q", "response": "a"}]))
    assert "limit is 10" in problems_of(path, max_file_bytes=10)[0]


def test_text_that_does_not_fit_the_context(tmp_path):
    path = write(tmp_path, json.dumps([{"prompt": "short?", "response": "ok"}, {"prompt": "long?", "response": "word " * 50}]))
    (problem,) = problems_of(path, count_tokens=lambda q, a: len((q + " " + a).split()), max_tokens=20)
    assert problem == "item 1: 51 tokens once formatted, the model's limit is 20; shorten it"


def test_hash_names_content_not_file(tmp_path):
    pairs = validate_items([{"prompt": "a?", "response": "b"}])
    same = validate_items([{"prompt": " a? ", "response": "b\n", "extra": 1}])
    other = validate_items([{"prompt": "a?", "response": "c"}])
    assert dataset_hash(pairs) == dataset_hash(same) != dataset_hash(other)
