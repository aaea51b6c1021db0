"""Train jobs through Redis and a real `qabot worker train` process; promotion and hot swap."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from bots.render import render_result
from engine.evaluate import matches_reference
from engine.versions import ModelStore
from qabot.errors import TrainingBusy
from qabot.shapes import ReplyTo
from tests.conftest import TINY_CONFIG, TINY_PAIRS, write_pairs
from tests.test_queue import QUESTIONS, make_settings, make_worker, worker_process
from worker.client import QueueClient


def run_train_worker(client: QueueClient, settings, job_id: str) -> list:
    """Run the train worker until the queue is empty, recording the job's status as it changes."""
    proc = worker_process(settings, "train")
    seen = []
    while proc.poll() is None:
        seen.append(client.training_status(job_id))
        time.sleep(0.1)
    assert proc.returncode == 0, proc.stdout.read()
    seen.append(client.training_status(job_id))
    return seen


def request_for(data, base, **hyper) -> dict:
    return {"dataset": str(data), "base_model": str(base), "hyperparameters": {**TINY_CONFIG, **hyper}}


def test_train_job_reports_progress_promotes_and_the_answer_worker_switches(home, redis_url, tiny_gpt2, tmp_path):
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    store = ModelStore(settings.models_dir)
    answer_worker = make_worker(settings)
    first = client.enqueue_answer(QUESTIONS[0])
    answer_worker.work(burst=True)
    assert client.wait_answer(first).version == "v0001"

    data = write_pairs(
        tmp_path / "more.json", [*TINY_PAIRS, TINY_PAIRS[0].__class__("Who forged the Stone?", "Veyra forged it.")]
    )
    job = client.start_training(request_for(data, tiny_gpt2), ReplyTo("cli", "admin", "console"))
    with pytest.raises(TrainingBusy, match=r"^A training run is already in progress") as busy:
        client.start_training(request_for(data, tiny_gpt2))
    assert job.id not in str(busy.value)
    seen = run_train_worker(client, settings, job.id)

    training = [s.meta for s in seen if s.meta.get("stage") == "training"]
    assert training and all({"step", "total_steps", "epoch", "loss", "eta_s"} <= set(m) for m in training)
    final = seen[-1]
    assert final.state == "finished" and final.result["promoted"] is True
    assert final.result["version"] == "v0002" and "not worse than v0001" in final.result["reason"]
    assert final.result["dataset"]["pairs"] == len(TINY_PAIRS) + 1
    assert store.current_name() == "v0002"
    assert client.running_training() is None  # the lock is released

    # Questions queued while a new version went live are answered by it, none lost.
    queued = [client.enqueue_answer(q) for q in [*QUESTIONS[:3], "Who forged the Stone?"]]
    answer_worker.work(burst=True)
    results = [client.wait_answer(j) for j in queued]
    assert {r.version for r in results} == {"v0002"}
    assert results[-1].answer == "Veyra forged it."


def test_a_worse_model_is_kept_as_a_candidate(home, redis_url, tiny_gpt2, tiny_data):
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = ModelStore(settings.models_dir).versions_dir / f".staging-{socket.gethostname()}-{dead.pid}-abc"  # a killed run's
    orphan.mkdir()
    elsewhere = orphan.with_name(".staging-another-host-1-abc")  # maybe a live run in another container: left alone
    elsewhere.mkdir()
    job = client.start_training(request_for(tiny_data, tiny_gpt2, epochs=1, learning_rate=1e-6))
    final = run_train_worker(client, settings, job.id)[-1]
    assert final.result["promoted"] is False
    assert final.result["reason"].startswith("worse than v0001") and "kept as a candidate" in final.result["reason"]
    store = ModelStore(settings.models_dir)
    assert store.current_name() == "v0001" and [v.name for v in store.list()] == ["v0001", "v0002"]
    assert not orphan.exists() and elsewhere.exists()


def test_bad_data_fails_the_job_with_its_problems_and_changes_nothing(home, redis_url, tiny_gpt2, tmp_path):
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "Who?", "response": "Elara."}, {"prompt": "Who?", "response": "Malvek."}]))
    job = client.start_training(request_for(bad, tiny_gpt2))
    final = run_train_worker(client, settings, job.id)[-1]
    assert final.state == "failed"
    assert "pair 2, 'Who?': the same question as pair 1 with a different answer" in final.error
    assert final.meta["problems"] == ["pair 2, 'Who?': the same question as pair 1 with a different answer; keep one"]
    store = ModelStore(settings.models_dir)
    assert store.current_name() == "v0001" and [v.name for v in store.list()] == ["v0001"]
    assert client.running_training() is None


def test_retrain_with_nothing_to_train_says_what_to_send_and_changes_nothing(redis_url, tiny_gpt2, tmp_path):
    """A new deployment (no dataset, no model): /retrain without a file must not fall back to the sample."""
    settings = make_settings(tmp_path / "new-home", redis_url)
    client = QueueClient(settings)
    job = client.start_training({"base_model": str(tiny_gpt2), "hyperparameters": {**TINY_CONFIG, "epochs": 1}})
    final = run_train_worker(client, settings, job.id)[-1]
    assert final.state == "failed" and final.result is None
    text = render_result(final)
    assert text.startswith("Training failed: there is no dataset to train on yet"), text
    assert "attach a JSON or JSONL file" in text and "/retrain" in text and "/addqa" in text
    assert "Traceback" not in text and "problem(s)" not in text
    store = ModelStore(settings.models_dir)
    assert store.list() == [] and store.current_dataset() is None
    assert not store.datasets_dir.is_dir() or not any(store.datasets_dir.iterdir())
    assert client.running_training() is None


def upload_request(base, **extra) -> dict:
    return {"base_model": str(base), "hyperparameters": TINY_CONFIG, **extra}


def test_a_small_upload_is_added_and_never_wipes_what_the_bot_knows(home, redis_url, tiny_gpt2):
    """The reported failure: a 6-pair file while a bigger model was live. Now the file's pairs join the dataset."""
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    store = ModelStore(settings.models_dir)
    upload = [
        {"prompt": "Who forged the Luminary Stone?", "response": "Veyra forged the Stone."},
        {"prompt": TINY_PAIRS[1].prompt, "response": TINY_PAIRS[1].response},
    ]
    who = ReplyTo("telegram", "42", "42", "7")
    job = client.start_training(upload_request(tiny_gpt2), who, upload=(json.dumps(upload).encode(), "small.json"))
    final = run_train_worker(client, settings, job.id)[-1]
    assert final.state == "finished", final.error
    changed = final.result["upload"]
    assert (changed["mode"], changed["file_pairs"], changed["added"], changed["pairs"]) == ("add", 2, 1, len(TINY_PAIRS) + 1)
    assert changed["not_in_file"] == len(TINY_PAIRS) - 1 and changed["dropped"] == 0
    assert final.result["dataset"]["pairs"] == len(TINY_PAIRS) + 1
    assert final.result["promoted"], final.result["reason"]
    # no held-out file anywhere: rewrites of the training questions in users' style stand in for held-out questions
    assert f"questions ({len(TINY_PAIRS)} kept, 1 new, 0 held-out, " in final.result["reason"]
    assert "rewrites in users' style)" in final.result["reason"]
    assert final.reply_to == who
    assert final.result["loss_png"][:8] == b"\x89PNG\r\n\x1a\n"  # travels in the result: bots have no volume
    assert store.current_dataset().stem == changed["dataset"]
    answer_worker = make_worker(settings)
    asked = [client.enqueue_answer(TINY_PAIRS[0].prompt), client.enqueue_answer("Who forged the Luminary Stone?")]
    answer_worker.work(burst=True)
    answers = [client.wait_answer(j).answer for j in asked]
    assert matches_reference(answers[0], TINY_PAIRS[0].response), answers  # the old fact is still known
    assert matches_reference(answers[1], "Veyra forged the Stone."), answers
    assert client.connection.keys("qabot:upload:*") == []  # the upload's bytes are gone once used


def test_replace_trains_on_the_file_alone_and_a_bad_upload_changes_nothing(home, redis_url, tiny_gpt2):
    settings = make_settings(home, redis_url)
    client = QueueClient(settings)
    store = ModelStore(settings.models_dir)
    before = store.current_dataset()
    bad = json.dumps([{"prompt": "Question: who?", "response": "Me."}]).encode()
    job = client.start_training(upload_request(tiny_gpt2), upload=(bad, "bad.json"))
    final = run_train_worker(client, settings, job.id)[-1]
    assert final.state == "failed" and "starting with 'Question:'" in final.meta["problems"][0]
    assert store.current_dataset() == before and [v.name for v in store.list()] == ["v0001"]
    pairs = [{"prompt": p.prompt, "response": p.response} for p in TINY_PAIRS[:3]]
    upload = (json.dumps(pairs).encode(), "three.json")
    job = client.start_training(upload_request(tiny_gpt2, mode="replace", force=True), upload=upload)
    final = run_train_worker(client, settings, job.id)[-1]
    assert final.state == "finished", final.error
    assert final.result["upload"]["mode"] == "replace" and final.result["upload"]["dropped"] == len(TINY_PAIRS) - 3
    # the file's dataset became current with its version (forced live here; a refused one leaves it: test_release)
    assert final.result["promoted"] and "edits_from" not in final.result["upload"]
    assert [p.prompt for p in store.current_pairs()] == [p.prompt for p in TINY_PAIRS[:3]]
