"""The `qabot` command end to end, on tiny models saved to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qabot.cli import app
from tests.conftest import TINY_CONFIG, TINY_PAIRS, qabot_env

runner = CliRunner()
TRAIN_ARGS = ["--epochs", str(2 * TINY_CONFIG["epochs"]), "--lr", str(TINY_CONFIG["learning_rate"]), "--batch-size", "4"]


@pytest.fixture
def env(tmp_path, tiny_gpt2, tiny_data, tiny_heldout) -> dict[str, str]:
    return {
        "QABOT_HOME": str(tmp_path / "home"),
        "QABOT_BASE_MODEL": str(tiny_gpt2),
        "QABOT_DATASET": str(tiny_data),
        "QABOT_EVAL_DATA": str(tiny_heldout),
        "QABOT_DEVICE": "cpu",
        "QABOT_MAX_NEW_TOKENS": "24",
    }


def qabot(env: dict[str, str], *args: str, input: str | None = None):
    result = runner.invoke(app, list(args), env=env, input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_train_ask_eval_and_models(env):
    result = qabot(env, "train", *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    assert "v0001 now live" in result.output and "loss.png" in result.output

    answer = qabot(env, "ask", TINY_PAIRS[0].prompt)
    assert answer.exit_code == 0 and answer.output.strip() == TINY_PAIRS[0].response

    evaluation = qabot(env, "eval", "-v")
    assert evaluation.exit_code == 0
    assert "v0001 training:" in evaluation.output and "v0001 heldout:" in evaluation.output
    assert "notes by mpnet" in evaluation.output  # the default embedder (engine.embedders)
    assert TINY_PAIRS[1].response in evaluation.output
    training_line = next(line for line in evaluation.output.splitlines() if line.startswith("v0001 training:"))
    right = int(training_line.split("(")[1].split("/")[0])
    assert right >= len(TINY_PAIRS) - 1

    kept = qabot(env, "train", *TRAIN_ARGS, "--no-promote")
    assert kept.exit_code == 0 and "v0002 saved, not promoted" in kept.output and "not promoted on request" in kept.output
    listing = qabot(env, "models", "list").output
    assert "v0001" in listing and "v0002" in listing
    assert qabot(env, "models", "promote", "v0002").output.strip() == "v0002 is now live."
    assert qabot(env, "models", "rollback").output.strip() == ROLLED_BACK
    # the same gate as the train job. An untrained grounded model answers learnt questions as well as a trained one
    # (the nearest note, where it does not decline), so the worse candidate here is an untrained plain one.
    worse = qabot(env, "train", *TRAIN_ARGS, "--epochs", "1", "--lr", "1e-6", "--plain")
    assert "v0003 saved, not promoted" in worse.output and "worse than v0001" in worse.output
    forced = qabot(env, "train", *TRAIN_ARGS, "--epochs", "1", "--lr", "1e-6", "--force")
    assert "v0004 now live" in forced.output and "forced" in forced.output
    assert qabot(env, "models", "rollback").output.strip() == ROLLED_BACK


def test_the_embedder_setting_chooses_a_new_versions_embedder_and_the_version_keeps_it(env):
    trained = qabot({**env, "QABOT_EMBEDDER": "minilm"}, "train", *TRAIN_ARGS)
    assert trained.exit_code == 0, trained.output
    evaluation = qabot(env, "eval", "-v").output  # the setting back at its default: the version answers as it was trained
    assert "notes by minilm" in evaluation and "v0001 training:" in evaluation
    assert qabot(env, "ask", TINY_PAIRS[0].prompt).output.strip() == TINY_PAIRS[0].response


ROLLED_BACK = f"Rolled back: v0001 is now live, with its own dataset ({len(TINY_PAIRS)} pairs)."


def test_train_without_data_trains_the_stores_current_dataset_not_the_sample(env):
    """`qabot train` on a deployment whose admins built a dataset (/addqa, uploads) trains that dataset."""
    from engine.versions import ModelStore

    store = ModelStore(Path(env["QABOT_HOME"]) / "models")
    digest, _ = store.store_dataset(TINY_PAIRS[:3])
    store.set_current_dataset(digest)
    result = qabot(env, "train", *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    assert f"the current dataset {digest} (3 pairs)" in result.output
    assert "v0001 now live: 3 pairs" in result.output
    assert store.current().meta["dataset"]["hash"] == digest


def test_chat_trains_first_then_answers_and_says_goodbye(env):
    result = qabot(env, "chat", input=f"{TINY_PAIRS[0].prompt}\n   \nexit\n")
    assert result.exit_code == 0, result.output
    assert "No fine-tuned model yet: training one" in result.output
    assert "v0001 now live" in result.output
    assert result.output.count("bot>") == 1
    assert result.output.rstrip().endswith("Thanks for chatting. Goodbye!")


def test_chat_first_trains_the_dataset_admins_built_not_the_sample(env):
    """/addqa before any model: `qabot chat`'s first run trains that dataset, keeps it current and in the store (it
    once trained the sample, made it current and pruned the admins' pairs)."""
    from engine.versions import ModelStore

    store = ModelStore(Path(env["QABOT_HOME"]) / "models")
    digest, _ = store.store_dataset(TINY_PAIRS[:3])
    store.set_current_dataset(digest)
    result = qabot(env, "chat", input="exit\n")
    assert result.exit_code == 0, result.output
    assert f"training one on {digest}.json first" in result.output and "v0001 now live: 3 pairs" in result.output
    assert store.current_digest() == digest and store.current_pairs() == TINY_PAIRS[:3]


def test_chat_with_an_existing_model_starts_without_training(env, trained_tiny):
    store, _ = trained_tiny
    env = {**env, "QABOT_HOME": str(store.root.parent)}
    os.makedirs(store.root.parent, exist_ok=True)
    result = qabot(env, "chat", input=f"{TINY_PAIRS[3].prompt}\nexit\n")
    assert "training one" not in result.output
    assert f"bot> {TINY_PAIRS[3].response}" in result.output


def test_chat_and_eval_show_the_datas_brackets_as_written(env, tiny_gpt2, tmp_path):
    """Answers are printed as text, not as the console's markup: a Markdown link's "[label]" vanished from `qabot chat`
    and `qabot eval -v`, and an answer or question holding "[/b]" stopped either with a MarkupError."""
    from engine.versions import ModelStore
    from qabot.dataset import QAPair
    from tests.conftest import release_tiny, write_pairs

    linked = QAPair("How do I read the setup guide?", "See [the guide](https://x.io/g), [b]bold[/b] or [/b].")
    store = ModelStore(Path(env["QABOT_HOME"]) / "models")
    data = write_pairs(tmp_path / "linked.json", [*TINY_PAIRS, linked])
    assert release_tiny(store, data, tiny_gpt2, tmp_path / "cache", grounded=True, epochs=1).promoted

    chat = qabot(env, "chat", input=f"{linked.prompt}\nexit\n")
    assert chat.exit_code == 0, chat.output
    assert f"bot> {linked.response}" in chat.output

    asked = tmp_path / "asked.json"
    item = {"question": "the [setup] guide [/b] pls?", "answer": linked.response, "facts": ["See [the guide]"]}
    asked.write_text(json.dumps([item]), encoding="utf-8")
    report = qabot(env, "eval", "-v", "--data", str(asked), "--unanswerable", str(asked))
    assert report.exit_code == 0, report.output
    assert "the [setup] guide [/b] pls?" in report.output and f"expected: {linked.response}" in report.output


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qabot", *args], env=qabot_env(env), capture_output=True, text=True, timeout=300)


def test_errors_are_one_line_without_a_traceback(env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "ok?", "response": "fine"}, {"prompt": "ok?", "response": "other"}]))
    result = run_cli(env, "train", "--data", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "pair 2, 'ok?': the same question as pair 1 with a different answer" in result.stderr
    assert not (tmp_path / "home" / "models" / "current").exists()

    bad.write_text(json.dumps([{"prompt": "[/b] ok?", "response": "fine"}, {"prompt": "[/b] ok?", "response": "other"}]))
    quoted = run_cli(env, "train", "--data", str(bad))  # the data's own text in a message is not the console's markup
    assert quoted.returncode == 1 and "pair 2, '[/b] ok?': the same question" in quoted.stderr, quoted.stderr

    asked = run_cli(env, "ask", "Who guards the Luminary Stone?")
    assert asked.returncode == 1 and "no model has been trained yet" in asked.stderr and "Traceback" not in asked.stderr

    empty = run_cli(env, "ask", "   ")
    assert empty.returncode == 1 and "the question is empty" in empty.stderr

    rollback = run_cli(env, "models", "promote", "v0009")
    assert rollback.returncode == 1 and "no model version 'v0009'" in rollback.stderr

    debug = run_cli(env, "--debug", "models", "promote", "v0009")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_bad_settings_are_reported(env):
    result = run_cli({**env, "QABOT_DEVICE": "gpu"}, "models", "list")
    assert result.returncode != 0 and "QABOT_DEVICE" not in result.stdout
    assert "invalid setting QABOT_DEVICE='gpu'" in result.stderr and "Traceback" not in result.stderr


def test_bad_settings_never_print_a_secret(env):
    """A check across settings (both metrics ports the same) is reported without the values of the tokens and the
    Redis password, which are not masked yet when the settings fail to load; a plain setting's bad value is shown."""
    secrets = {
        "QABOT_TELEGRAM_TOKEN": "123456:SECRET-telegram-token",
        "QABOT_DISCORD_TOKEN": "SECRET-discord-token",
        "QABOT_REDIS_URL": "redis://:SECRET-password@127.0.0.1:6379/0",
    }
    clash = {**env, **secrets, "QABOT_ANSWER_METRICS_PORT": "9108", "QABOT_TRAIN_METRICS_PORT": "9108"}
    result = run_cli(clash, "models", "list")
    assert result.returncode == 2 and "both 9108" in result.stderr, result.stderr
    assert "SECRET" not in result.stderr + result.stdout
    shown = run_cli({**env, **secrets, "QABOT_ANSWER_BATCH_SIZE": "0"}, "models", "list")
    assert shown.returncode == 2 and "QABOT_ANSWER_BATCH_SIZE='0'" in shown.stderr, shown.stderr
    assert "SECRET" not in shown.stderr + shown.stdout


def test_data_find_export_forget_and_undo_on_the_host(env, tmp_path):
    """`qabot data` does what /find, /export, /forget and /undo do, with no Redis or worker."""
    import json

    from engine.versions import ModelStore

    store = ModelStore(Path(env["QABOT_HOME"]) / "models")
    digest, _ = store.store_dataset(TINY_PAIRS[:3])
    store.set_current_dataset(digest)
    found = qabot(env, "data", "find", "where", "is", "the", "stone", "-n", "2").stdout.splitlines()
    assert found[0] == 'The 2 pairs nearest to "where is the stone", of 3:'
    assert found[1].startswith(f'#2 "{TINY_PAIRS[1].prompt}" → {TINY_PAIRS[1].response} (similarity 0.')
    assert found[-1].startswith("qabot data forget NUMBER removes a pair")
    gone = qabot(env, "data", "forget", TINY_PAIRS[1].prompt.upper())
    assert gone.exit_code == 0 and gone.output.startswith(f"Forgot '{TINY_PAIRS[1].prompt}'")
    assert store.current_pairs() == [TINY_PAIRS[0], TINY_PAIRS[2]]
    by_number = qabot(env, "data", "forget", "#2")
    assert by_number.exit_code == 0 and by_number.output.startswith(f"Forgot '{TINY_PAIRS[2].prompt}'")
    assert qabot(env, "data", "undo").output.startswith(f"Undid the forget of '{TINY_PAIRS[2].prompt}'")
    unknown = qabot(env, "data", "forget", "Who is nobody?")
    assert unknown.exit_code == 1 and unknown.output.startswith("No pair has the question 'Who is nobody?'")
    out = tmp_path / "export.json"
    assert qabot(env, "data", "export", "--out", str(out)).exit_code == 0
    rows = json.loads(out.read_text())
    assert [(r["prompt"], r["response"]) for r in rows] == [(p.prompt, p.response) for p in store.current_pairs()]
    undone = qabot(env, "data", "undo")
    assert undone.exit_code == 0 and undone.output.startswith(f"Undid the forget of '{TINY_PAIRS[1].prompt}'")
    assert sorted(store.current_pairs(), key=TINY_PAIRS.index) == TINY_PAIRS[:3]
    assert qabot(env, "data", "undo").exit_code == 1  # nothing left to undo: the dataset was never edited before
