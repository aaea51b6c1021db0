"""The answer budget follows the data: an answer as long as the data's arrives whole, never cut or declined for length."""

from __future__ import annotations

from engine.formatting import longest_answer
from engine.generate import StopReason
from engine.models import load_model
from engine.pipeline import make_answerer
from engine.textformat import FALLBACK_BUDGET, answer_budget
from engine.versions import ModelStore
from qabot.dataset import QAPair
from tests.conftest import TINY_PAIRS, release_tiny, write_pairs

# About 110 tokens for the tiny tokenizer: longer than the 64 tokens every answer used to be cut at.
LONG = (
    "To reach the Sanctum of Veyra, follow these steps:\n"
    "- cross the Silverrun River at Aurelhaven;\n"
    "- walk the old road through the Whispering Woods for three days;\n"
    "- show the sunmark seal to the keepers at the gate.\n"
    "Elara guards the Luminary Stone inside, and Malvek the Hollow leads the Ashen Legion beyond the hills."
)
QUESTION = "How do I reach the Sanctum of Veyra?"


def test_budget_rule():
    assert answer_budget(100, 2048) == 133  # the longest answer, a quarter more, and 8 tokens of slack
    assert answer_budget(100, 200) == 100  # never more than half the context
    assert answer_budget(1, 2048) == 16


def test_an_answer_as_long_as_the_datas_arrives_whole(tiny_gpt2, tmp_path):
    data = write_pairs(tmp_path / "long.json", [QAPair(QUESTION, LONG), *TINY_PAIRS[:3]])
    store = ModelStore(tmp_path / "models")
    outcome = release_tiny(store, data, tiny_gpt2, tmp_path / "cache", epochs=150, batch_size=2)
    info = outcome.version
    loaded = load_model(str(info.path), device="cpu")
    longest = longest_answer(loaded.tokenizer, [LONG])
    assert longest > FALLBACK_BUDGET  # the old fixed budget would have cut it
    assert info.meta["answer_budget"] == answer_budget(longest, 256)

    answerer = make_answerer(loaded, info, max_new_tokens=None, max_question_chars=500)
    (answer,) = answerer.answer([QUESTION])
    assert answer.stop == StopReason.EOS and answer.text == LONG.strip()

    # A setting still overrides the data's budget; an answer that reaches it is a runaway.
    capped = make_answerer(loaded, info, max_new_tokens=32, max_question_chars=500)
    (cut,) = capped.answer([QUESTION])
    assert cut.stop == StopReason.LENGTH and cut.new_tokens == 32
