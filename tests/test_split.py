"""Long answers reach people whole, in parts within the platform's limit, split where a reader expects a break."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from bots.split import split_message

FAQ = Path(__file__).resolve().parent.parent / "data" / "faq.json"


def test_parts_keep_every_word_and_fit_the_limit():
    text = " ".join(p["response"] for p in json.loads(FAQ.read_text(encoding="utf-8")))
    for limit in (200, 2000, 4096):
        parts = split_message(text, limit)
        assert all(0 < len(p) <= limit for p in parts)
        assert " ".join(parts).split() == text.split()


def test_a_paragraph_or_a_sentence_ends_a_part_before_a_word_does():
    paragraph = "First paragraph. " * 8
    text = paragraph.strip() + "\n\n" + "Second one, with more words in it. " * 8
    assert split_message(text, len(paragraph) + 40)[0] == paragraph.strip()
    sentences = "One sentence ends here. " * 10
    assert all(p.endswith(".") for p in split_message(sentences.strip(), 100))


def test_links_code_and_urls_are_never_cut():
    link = "[the install guide](https://docs.pebble-photos.example/install/docker-compose)"
    text = ("See " + link + " and run `pbl import --from takeout ./archive` then https://x.example/a/b/c. ") * 12
    parts = split_message(text, 150)
    for part in parts:
        assert part.count("[") == part.count("](") and part.count("`") % 2 == 0
    assert [w for p in parts for w in p.split() if "://" in w] == [w for w in text.split() if "://" in w]
    assert "".join(parts).count(link) == 12


def test_a_code_block_cut_in_two_is_closed_and_opened_again_in_each_part():
    code = "\n".join(f"pbl admin jobs run thumbnails --missing --batch {n}" for n in range(60))
    text = f"Run this:\n```bash\n{code}\n```\nThen restart the server."
    parts = split_message(text, 2000)
    assert len(parts) >= 2 and all(len(p) <= 2000 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)  # each part shows its code as code
    assert parts[1].startswith("```bash\npbl admin")  # opened again, with its language
    joined = "\n".join(parts).replace("\n```\n```bash\n", "\n")
    assert joined.split() == text.split()  # nothing lost or added but the fences


@pytest.mark.parametrize("limit", [2000, 4096])
def test_inline_code_written_with_three_backticks_is_no_code_block(limit):
    """ "```ls``` lists files" opens no block: a long line of it once made each part start again with that line, for
    ever (the bot froze). Each part is within the limit, nothing is added, nothing is lost."""

    def stuck(*_):
        raise TimeoutError("split_message did not end")

    line = "```ls -la``` lists the files, " + "with their sizes and owners " * (limit // 40)
    text = line + "\n\n" + "Then the next paragraph goes on. " * (limit // 20)
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(10)
    try:
        parts = split_message(text, limit)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert all(len(p) <= limit for p in parts) and len(parts) >= 2
    assert "".join(parts).count("```") == 2 and " ".join(parts).split() == text.split()


def test_a_code_block_whose_fence_line_is_long_is_closed_but_not_opened_again():
    fence = "```" + "x" * 700
    text = fence + "\n" + "run this line\n" * 300 + "```"
    parts = split_message(text, 2000)
    assert all(len(p) <= 2000 for p in parts) and parts[0].endswith("\n```")
    assert not parts[1].startswith(fence)
