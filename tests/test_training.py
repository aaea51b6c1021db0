"""Fine-tuning: loss falls, the model learns its answers, versions are written, bad data changes nothing."""

from __future__ import annotations

import json

import pytest

from engine.pipeline import TrainRequest, load_base, train_version, validate_file
from engine.serving import load_version
from engine.training import TrainConfig
from engine.versions import ModelStore
from qabot.errors import DatasetError
from tests.conftest import TINY_CONFIG, TINY_PAIRS, write_pairs


def test_finetune_loss_falls_and_answers_are_learnt(trained_tiny):
    store, outcome = trained_tiny
    result = outcome.trained.result
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[-1] < losses[0] / 5
    assert result.metrics["recall_accuracy"] >= 0.85
    info = store.current()
    assert info.name == "v0001" and outcome.promoted and outcome.reason.startswith("first model")
    assert outcome.metrics["recall_accuracy"] >= 0.85  # a first model is released on its own evaluation
    meta = info.meta
    assert meta["dataset"]["pairs"] == len(TINY_PAIRS) and len(meta["dataset"]["hash"]) == 16
    assert meta["hyperparameters"]["learning_rate"] == TINY_CONFIG["learning_rate"]
    assert meta["metrics"]["recall_accuracy"] == result.metrics["recall_accuracy"]
    assert (info.path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads(open(meta["dataset"]["path"]).read())
    assert stored[0] == {"prompt": TINY_PAIRS[0].prompt, "response": TINY_PAIRS[0].response}


@pytest.mark.parametrize("arch", ["llama"])
def test_llama_family_finetunes_with_lora_and_heldout(arch, tiny_llama, tmp_path, tiny_data, tiny_heldout):
    store = ModelStore(tmp_path / "models")
    seen = []
    config = TrainConfig(
        epochs=6,
        learning_rate=5e-3,
        batch_size=4,
        lora=True,
        lora_r=8,
        checkpoints=False,
        early_stopping_patience=0,
        grounded=False,
    )
    base = load_base(str(tiny_llama), tmp_path / "cache", config.max_length)
    request = TrainRequest(str(tiny_llama), config, tiny_heldout)
    outcome = train_version(store, validate_file(tiny_data, base), base, request, device="cpu", progress=seen.append)
    stages = [p.stage for p in seen]
    assert stages[0] == "loading base model" and stages[-1] == "saved"
    assert "evaluating" in stages and "training" in stages
    steps = [p for p in seen if p.stage == "training"]
    assert steps[-1].step == steps[-1].total_steps == 12 and steps[-1].eta_s == pytest.approx(0, abs=1e-6)
    assert {"heldout_accuracy", "recall_accuracy", "heldout_loss"} <= set(outcome.result.metrics)
    held_losses = [e["heldout_loss"] for e in outcome.result.log_history if "heldout_loss" in e]
    assert len(held_losses) >= 2 and all(0 < v < 20 for v in held_losses)
    losses = [e["loss"] for e in outcome.result.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    # LoRA adapters are merged: the saved version is a plain model folder.
    loaded, info = load_version(store, outcome.version.name, device="cpu")
    assert info.name == "v0001" and store.current_name() is None and not (info.path / "adapter_config.json").exists()
    assert loaded.model.config.model_type == "llama"


def test_bad_dataset_starts_no_training_and_keeps_the_live_model(trained_tiny, tmp_path):
    store, _ = trained_tiny
    before = (store.current_name(), [v.name for v in store.list()])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "ok?", "response": "fine"}, {"prompt": "", "response": "x"}]))
    base = load_base(str(store.current().path), tmp_path, 256)
    with pytest.raises(DatasetError, match="pair 2: 'prompt' is empty"):
        validate_file(bad, base)
    assert (store.current_name(), [v.name for v in store.list()]) == before


def test_items_longer_than_max_length_are_rejected_by_token_count(tiny_gpt2, tmp_path):
    data = write_pairs(tmp_path / "d.json", [*TINY_PAIRS[:2], TINY_PAIRS[2].__class__("Long one?", "word " * 300)])
    base = load_base(str(tiny_gpt2), tmp_path, 64)
    with pytest.raises(DatasetError, match=r"pair 3, 'Long one\?': \d+ tokens once formatted, the model's limit is 64"):
        validate_file(data, base)


class Interrupt(Exception):
    """The run is stopped (a kill, a crash) in its third epoch."""


def stop_in_epoch_3(p) -> None:
    if p.stage == "training" and p.epoch > 2.0:
        raise Interrupt


def test_resume_continues_from_the_last_checkpoint(tiny_gpt2, tmp_path, tiny_data):
    store = ModelStore(tmp_path / "models")

    config = TrainConfig(
        epochs=4, learning_rate=3e-3, batch_size=4, early_stopping_patience=0, grounded=False, checkpoint_after_s=0
    )
    base = load_base(str(tiny_gpt2), tmp_path, config.max_length)
    pairs = validate_file(tiny_data, base)
    request = TrainRequest(str(tiny_gpt2), config)
    with pytest.raises(Interrupt):
        train_version(store, pairs, base, request, device="cpu", progress=stop_in_epoch_3)
    assert store.list() == [] and store.current_name() is None
    (run,) = store.runs_dir.iterdir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-4"]
    seen = []
    resumed = TrainRequest(str(tiny_gpt2), config, resume=True)
    outcome = train_version(store, pairs, base, resumed, device="cpu", progress=seen.append)
    first_step = min(p.step for p in seen if p.stage == "training")
    assert first_step == 5
    assert outcome.version.name == "v0001" and not run.exists()


def test_a_short_run_keeps_no_checkpoint_and_resumes_from_the_start(tiny_gpt2, tmp_path, tiny_data):
    """With the default interval, an epoch of a few seconds is not worth a checkpoint: an interrupted run has none, and
    --resume trains from the first step."""
    store = ModelStore(tmp_path / "models")

    config = TrainConfig(epochs=4, learning_rate=3e-3, batch_size=4, early_stopping_patience=0, grounded=False)
    assert config.checkpoints and config.checkpoint_after_s > 10
    base = load_base(str(tiny_gpt2), tmp_path, config.max_length)
    pairs = validate_file(tiny_data, base)
    with pytest.raises(Interrupt):
        train_version(store, pairs, base, TrainRequest(str(tiny_gpt2), config), device="cpu", progress=stop_in_epoch_3)
    (run,) = store.runs_dir.iterdir()
    assert not list((run / "checkpoints").glob("checkpoint-*"))
    seen = []
    resumed = TrainRequest(str(tiny_gpt2), config, resume=True)
    outcome = train_version(store, pairs, base, resumed, device="cpu", progress=seen.append)
    assert min(p.step for p in seen if p.stage == "training") == 1
    assert outcome.version.name == "v0001"


def test_bad_hyperparameters_name_the_problem():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=5)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_a_share_of_the_blocks_trains_only_the_top_ones(tiny_gpt2, tmp_path, tiny_data):
    import torch

    from engine.models import blocks, load_model

    config = TrainConfig(epochs=2, learning_rate=3e-3, batch_size=4, checkpoints=False, grounded=False, trained_share=0.5)
    base = load_base(str(tiny_gpt2), tmp_path, config.max_length)
    store = ModelStore(tmp_path / "models")
    outcome = train_version(store, validate_file(tiny_data, base), base, TrainRequest(str(tiny_gpt2), config), device="cpu")
    before, after = load_model(str(tiny_gpt2), device="cpu").model, load_version(store, outcome.version.name)[0].model
    stack_before, stack_after = blocks(before), blocks(after)
    assert len(stack_after) == 2
    same = [
        all(torch.equal(a, b) for a, b in zip(x.parameters(), y.parameters(), strict=True))
        for x, y in zip(stack_before, stack_after, strict=True)
    ]
    assert same == [True, False]  # the lower block kept the base weights, the top one learnt
    assert torch.equal(before.get_input_embeddings().weight, after.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="trained_share"):
        TrainConfig(trained_share=0)


def test_long_answers_shown_by_their_heads_train_no_more_epochs_than_their_whole_answers_need(tiny_gpt2, tmp_path):
    """Grounded defaults give a small dataset more epochs until it has learnt enough answer tokens; each pair's answer
    counts whole, though the model learns only its head: long answers cut to heads are no reason to train longer."""
    from engine.models import load_model
    from engine.textformat import HEADS, format_grounded
    from engine.training import GROUNDED_EPOCHS, GROUNDED_MIN_ANSWER_TOKENS, fine_tune
    from qabot.dataset import QAPair

    loaded = load_model(str(tiny_gpt2), device="cpu")
    tokenizer = loaded.tokenizer
    long = " ".join(["the tower was built of stone and glass by the river"] * 12)  # well past NOTE_WORDS
    tokens = len(tokenizer(long, add_special_tokens=False)["input_ids"])
    pairs = [QAPair(f"What is tower {i}?", f"Tower {i}: {long}") for i in range(GROUNDED_MIN_ANSWER_TOKENS // tokens + 1)]
    examples = [(format_grounded(p.prompt, [p.response], HEADS), HEADS.head(p.response)) for p in pairs]
    config = TrainConfig(batch_size=64, checkpoints=False, eval_questions=0)
    _, result = fine_tune(loaded.model, tokenizer, pairs, config=config, run_dir=tmp_path, examples=examples)
    assert result.epochs_run == GROUNDED_EPOCHS  # the heads alone would have asked for several times more
    heads = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for _, a in examples)
    assert heads * GROUNDED_EPOCHS < GROUNDED_MIN_ANSWER_TOKENS


def test_the_epochs_of_a_grounded_fine_tune_do_not_depend_on_how_long_the_heads_it_learns_are(tiny_gpt2, tmp_path):
    """Each pair counts its whole answer, and the declines count as learnt: answers just past the head's length, with
    the declines that make up the minimum, train the default epochs (counting the larger of the heads with declines and
    the whole answers alone gave them one more epoch, which the sample then spent for nothing)."""
    from engine.grounding import DECLINE
    from engine.models import load_model
    from engine.textformat import HeadRule, format_grounded
    from engine.training import GROUNDED_EPOCHS, GROUNDED_MIN_ANSWER_TOKENS, fine_tune
    from qabot.dataset import QAPair

    loaded = load_model(str(tiny_gpt2), device="cpu")
    tokenizer = loaded.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # and the end of text

    words = 4
    rule = HeadRule(words)
    answer = "the tower was built of stone and glass by the river in the old town"
    per_epoch = GROUNDED_MIN_ANSWER_TOKENS // GROUNDED_EPOCHS
    pairs, whole = [], 0
    while whole + count(f"Tower {len(pairs)}: {answer}") < per_epoch:
        pairs.append(QAPair(f"What is tower {len(pairs)}?", f"Tower {len(pairs)}: {answer}"))
        whole += count(pairs[-1].response)
    examples = [(format_grounded(p.prompt, [p.response], rule), rule.head(p.response)) for p in pairs]
    declines = [(format_grounded(f"What is hill {i}?", [pairs[0].response], rule), DECLINE) for i in range(40)]
    examples += declines[: (per_epoch - whole) // count(DECLINE) + 1]
    learnt = sum(count(a) for _, a in examples)
    assert whole < per_epoch <= whole + learnt - sum(count(rule.head(p.response)) for p in pairs)
    assert learnt < per_epoch  # the heads with the declines: on their own, also short of the minimum
    config = TrainConfig(batch_size=64, checkpoints=False, eval_questions=0, note_words=words)
    _, result = fine_tune(loaded.model, tokenizer, pairs, config=config, run_dir=tmp_path, examples=examples)
    assert result.epochs_run == GROUNDED_EPOCHS


def test_training_scores_the_vocabulary_only_where_answers_are_learnt_with_the_models_own_loss(tiny_model):
    """A batch of unequal prompts and answers: the training batch keeps logits for its last columns only (where every
    answer lies once padded on the left), and gives the same loss and gradients as the model's own loss on the
    right-padded batch, on absolute (GPT-2) and rotary (Llama) positions."""
    import torch

    from engine.formatting import AnswerCollator, PadCollator, tail_loss, tokenize_example
    from engine.models import load_model

    loaded = load_model(str(tiny_model), device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()  # no dropout: both losses see the same network (gradients flow all the same)
    examples = [
        ("Note: Elara guards the Luminary Stone in the Sanctum.\nQuestion: Who guards the stone?\nAnswer:", "Elara."),
        ("Question: Where is it?\nAnswer:", "In the Sanctum of Veyra, below the old tower of the first keepers."),
        ("Note: Seren is the larger moon.\nQuestion: moon?\nAnswer:", "I don't know."),
    ]
    features = [tokenize_example(prompt, answer, tokenizer, 256) for prompt, answer in examples]

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    right = PadCollator(tokenizer.pad_token_id)(features)
    own, own_grads = loss_and_grads(lambda: model(**right).loss)
    batch = AnswerCollator(tokenizer.pad_token_id)(features)
    labels = batch.pop("labels")
    longest = right["input_ids"].shape[1]
    learnt = max(sum(x != -100 for x in f["labels"]) for f in features)
    assert batch["logits_to_keep"] == learnt + 1 < longest  # the prompts' columns are not scored
    outputs = model(**batch)
    assert outputs.logits.shape[:2] == (3, learnt + 1)
    tail, tail_grads = loss_and_grads(lambda: tail_loss(model(**batch), labels))
    assert torch.allclose(tail, own, rtol=1e-4)
    for a, b in zip(own_grads, tail_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_a_model_whose_forward_lacks_logits_to_keep_still_fine_tunes_on_its_own_loss(tiny_gpt2, tmp_path):
    """Any causal LM: one with its own forward (no `logits_to_keep` or `position_ids`) trains on right-padded batches
    and the model's own loss, and learns."""
    from transformers import GPT2LMHeadModel

    from engine.formatting import AnswerCollator
    from engine.models import load_model
    from engine.training import fine_tune

    class OwnForward(GPT2LMHeadModel):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            if self.training and {"logits_to_keep", "position_ids"} & kwargs.keys():
                raise TypeError("forward() got an unexpected keyword argument")  # as a model of its own code would
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    loaded = load_model(str(tiny_gpt2), device="cpu", dtype="float32")
    model = OwnForward.from_pretrained(str(tiny_gpt2))
    assert AnswerCollator.fits(loaded.model) and not AnswerCollator.fits(model)
    config = TrainConfig(**{**TINY_CONFIG, "epochs": 8})
    _, result = fine_tune(model, loaded.tokenizer, TINY_PAIRS, config=config, run_dir=tmp_path / "run")
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[-1] < 0.75 * losses[0]
