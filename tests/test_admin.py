"""Admin jobs on a real `qabot worker admin` process: quick, torch-free, the same rules as the train job."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.formatting import count_tokens
from engine.models import load_tokenizer
from engine.textformat import version_counter
from engine.versions import ModelStore
from qabot.dataset import read_dataset
from qabot.shapes import AddPairResult, ModelsResult, RollbackResult, StatusReport
from tests.conftest import DATA_DIR, TINY_PAIRS, qabot_env
from tests.test_queue import make_settings
from worker.client import QueueClient


@contextmanager
def admin_worker_on(home: Path, redis_url: str) -> Iterator[QueueClient]:
    """A real `qabot worker admin` on `home` (QABOT_DATASET left at its default, the sample), and a client for it."""
    env = qabot_env({"QABOT_HOME": str(home), "QABOT_REDIS_URL": redis_url})
    proc = subprocess.Popen([sys.executable, "-m", "qabot", "worker", "admin"], env=env, stdout=subprocess.DEVNULL)
    try:
        yield QueueClient(make_settings(home, redis_url, admin_wait=30))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def admin_worker(home, redis_url):
    with admin_worker_on(home, redis_url) as client:
        yield client


def test_admin_jobs_change_the_store_and_report(admin_worker, home):
    client, store = admin_worker, ModelStore(home / "models")
    added = client.admin_call("add_pair", "Who tends the Moon Gate?", "Ilsa tends it.")
    assert isinstance(added, AddPairResult) and added.added and added.pairs == len(TINY_PAIRS) + 1
    assert store.current_pairs()[-1].prompt == "Who tends the Moon Gate?"
    refused = client.admin_call("add_pair", "Who? <|endoftext|>", "Nobody.")
    assert not refused.added and "special token" in refused.problems[0]
    too_long = client.admin_call("add_pair", "Tell me everything?", "word " * 400)  # the live model's token limit
    (problem,) = too_long.problems
    shorten = r"shorten the answer by about \d+% \(or split it into two questions\)"
    said = rf"the question and answer come to \d+ tokens, over the \d+ the model reads at once: {shorten}"
    assert not too_long.added and re.fullmatch(said, problem), problem
    models = client.admin_call("list_models")
    assert isinstance(models, ModelsResult) and [(r.name, r.live) for r in models.rows] == [("v0001", True)]
    status = client.admin_call("status")
    assert isinstance(status, StatusReport) and status.live_version == "v0001" and status.waiting_dataset
    assert status.current_pairs == len(TINY_PAIRS) + 1 and status.live_pairs == len(TINY_PAIRS)
    nothing = client.admin_call("rollback", None)
    assert isinstance(nothing, RollbackResult) and not nothing.ok and "nothing to roll back to" in nothing.message


def test_a_deployment_with_no_dataset_starts_empty_and_addqa_creates_a_dataset_of_that_pair(redis_url, tmp_path):
    """The sample is a demo: /addqa on a new deployment must not add the pair to the sample's 160."""
    home = tmp_path / "new-home"
    with admin_worker_on(home, redis_url) as client:
        status = client.admin_call("status")
        assert status.current_dataset is None and status.current_pairs is None
        added = client.admin_call("add_pair", "Who tends the Moon Gate?", "Ilsa tends it.")
        assert added.added and added.pairs == 1, added
        store = ModelStore(home / "models")
        assert [(p.prompt, p.response) for p in store.current_pairs()] == [("Who tends the Moon Gate?", "Ilsa tends it.")]
        assert store.current_dataset().stem == added.dataset
        status = client.admin_call("status")
        assert status.current_pairs == 1 and status.live_version is None


def test_the_admin_worker_imports_no_torch(home):
    code = (
        "import sys, worker.admin as a; a.list_models(); a.add_pair('Who keeps the keys?', 'Brann keeps them.'); "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    env = qabot_env({"QABOT_HOME": str(home)})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_admin_counts_tokens_like_the_train_job(kind, request):
    folder = request.getfixturevalue(f"tiny_{kind}")
    count, limit, specials = version_counter(folder)
    engine_count = count_tokens(load_tokenizer(str(folder)))
    pairs = read_dataset(DATA_DIR / "sample.json")
    assert [count(p.prompt, p.response) for p in pairs] == [engine_count(p.prompt, p.response) for p in pairs]
    assert limit == 256 and "<|endoftext|>" in specials
