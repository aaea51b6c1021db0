"""The answer budget follows the data: an answer as long as the data's arrives whole, never cut or declined for length."""

from __future__ import annotations

from engine.formatting import longest_answer
from engine.generate import StopReason
from engine.models import load_model
from engine.serving import make_answerer
from engine.textformat import FALLBACK_BUDGET, answer_budget
from engine.versions import ModelStore
from qabot.dataset import QAPair, read_dataset
from tests.conftest import DATA_DIR, TINY_PAIRS, release_tiny, write_pairs

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


def test_a_long_faq_answer_arrives_whole_through_the_answer_worker(tiny_llama, tmp_path, redis_url):
    """Trained on the pebble FAQ's longest answers, asked through the queue and the answer worker with no budget set:
    the reply is the whole answer, neither cut nor declined for its length."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tests.test_queue import make_settings, make_worker
    from worker.client import QueueClient

    base = tmp_path / "tiny-llama-1k"  # the tiny tokenizer knows the sample's words: FAQ text costs many tokens
    config = AutoConfig.from_pretrained(tiny_llama)
    config.max_position_embeddings = 1024
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(base)
    faq = sorted(read_dataset(DATA_DIR / "faq.json"), key=lambda p: len(p.response))[-2:]
    store = ModelStore(tmp_path / "home" / "models")
    release_tiny(
        store,
        write_pairs(tmp_path / "faq-long.json", faq),
        base,
        tmp_path / "cache",
        epochs=200,
        batch_size=1,
        max_length=1024,
        eval_questions=0,
    )
    loaded = load_model(str(store.current().path), device="cpu")
    assert longest_answer(loaded.tokenizer, [faq[-1].response]) > FALLBACK_BUDGET

    settings = make_settings(tmp_path / "home", redis_url, max_new_tokens=None, answer_wait=60)
    client, worker = QueueClient(settings), make_worker(settings)
    asked = client.enqueue_answer(faq[-1].prompt)
    worker.work(burst=True)
    answer = client.wait_answer(asked)
    assert answer.answer == faq[-1].response.strip() and len(answer.answer) > 400
