"""Fine-tuning with the Trainer: answer-only loss, dynamic padding, accuracy-driven early stopping."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from engine.callbacks import AccuracyCallback, CheckpointCallback, Progress, ProgressCallback, ProgressFn
from engine.embedders import DEFAULT_EMBEDDER, RECIPES
from engine.formatting import (
    IGNORE_INDEX,
    AnswerCollator,
    PadCollator,
    answer_lengths,
    longest_answer,
    tail_loss,
    tokenize_example,
    tokenize_pair,
)
from engine.models import blocks, context_length, train_top_layers
from engine.textformat import FALLBACK_BUDGET, NOTE_CHARS, NOTE_WORDS, HeadRule, answer_budget
from qabot.dataset import QAPair
from qabot.heldout import HeldoutItem

logger = logging.getLogger(__name__)


PLAIN_EPOCHS = 8
# Copying the right note and declining are learnt sooner than the facts themselves, and by the top blocks: measured
# on the sample with the bundled model, 2 epochs of the top 40% of the blocks answered as well as 4 epochs of all.
GROUNDED_EPOCHS = 2
GROUNDED_TRAINED_SHARE = 0.4
# ... in 58 optimizer steps of 8 examples whose answers average 13.5 tokens: about 6,000 answer tokens learnt. A smaller
# dataset gets more epochs by default so that it too learns about that many (2 epochs of 40 lore pairs would be 14
# steps, too few to learn to read notes and decline). Counted in answer tokens, not steps: a FAQ whose answers run to
# 95 tokens learns that much in 2 epochs, where a minimum of 56 steps made it 5 epochs of 256-token examples.
GROUNDED_MIN_ANSWER_TOKENS = 6000
# WHOLE_ANSWERS: that minimum counts each pair's answer whole. Note heads (engine.textformat.NOTE_WORDS) cut the pebble
# FAQ's learnt answers to a quarter, so the minimum gave it 3 epochs instead of 2, yet in two runs (2026-12-03) its
# best evaluated epoch was the second: the third cost 25% of the fine-tune and gave nothing. Data of short answers
# (heads are whole answers there) gets the epochs it got before. Counted per pair (its one positive as its whole
# answer, the declines as learnt: whole_answer_tokens), the epochs do not depend on the heads' length: the larger of
# the heads with the declines and the whole answers alone gave the sample 3 epochs with heads of 8 words, and the
# third gave nothing (2026-12-04: 158/160 and 57/60 against 159/160 and 57/60 after 2).
# Each evaluated epoch asks at most `eval_questions` training and held-out questions each, fewer for long answers:
# generating them is what an evaluation costs (measured: the pebble FAQ's 48 + 100 questions with a 193-token budget took
# longer than an epoch of training), so the count shrinks as the answer budget grows past EVAL_BUDGET_TOKENS.
EVAL_BUDGET_TOKENS = 64
# An epoch checkpoint (model and optimizer: about 1.6 GB for the bundled model) took 2 to 3 s to write on a 2-core
# host, and the pebble FAQ's fine-tune wrote two: without them it took 83.3 and 84.2 s instead of 88.3 s. A run that
# short loses less by starting again. One is kept only when it saves at least this much training from being redone,
# and never after the last epoch (engine.callbacks.CheckpointCallback).
CHECKPOINT_AFTER_S = 120.0
EVAL_MIN_QUESTIONS = 12


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters; the defaults make a small dataset stick."""

    epochs: float | None = field(
        default=None,
        metadata={
            "help": "Passes over the data (early stopping may end sooner); default 8 plain, 2 grounded (more for small data)."
        },
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (1e-3 or more with LoRA)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimizer step on one device."})
    gradient_accumulation: int = field(default=1, metadata={"help": "Batches summed before each step."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps spent warming up the learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    scheduler: str = field(default="linear", metadata={"help": "Learning-rate schedule after warm-up."})
    max_length: int = field(default=256, metadata={"help": "Longest formatted example in tokens."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch examples of similar length together."})
    seed: int = field(default=42, metadata={"help": "Seed for shuffling and initialisation."})
    eval_questions: int = field(default=48, metadata={"help": "Training questions asked after each evaluated epoch."})
    eval_from_epoch: int = field(
        default=0, metadata={"help": "First epoch evaluated; 0: half-way through, from the second (and the last)."}
    )
    early_stopping_patience: int = field(
        default=2, metadata={"help": "Evaluated epochs without progress before stopping; 0 never stops early."}
    )
    trained_share: float | None = field(
        default=None,
        metadata={"help": "Share of the transformer blocks trained, from the top (faster); default 0.4 grounded, 1 plain."},
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights (merged on save)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    checkpoints: bool = field(default=True, metadata={"help": "Save epoch checkpoints so that a run can resume."})
    checkpoint_after_s: float = field(
        default=CHECKPOINT_AFTER_S,
        metadata={"help": "Seconds of training an epoch checkpoint must save from being redone; 0: every epoch."},
    )
    min_answer_tokens: int = field(
        default=0,
        metadata={"help": "Answer tokens learnt at least: epochs grow for a small dataset (set with default epochs)."},
    )
    grounded: bool = field(
        default=True, metadata={"help": "Answer from retrieved notes and learn to decline (RAFT); False: the plain format."}
    )
    notes: int = field(default=3, metadata={"help": "Notes (retrieved answers) before each grounded question."})
    negative_share: float = field(
        default=0.4, metadata={"help": "Share of pairs that also get notes without their answer, to learn declining."}
    )
    note_words: int = field(
        default=NOTE_WORDS, metadata={"help": "Words of each note a grounded prompt shows, and of each answer learnt; 0: whole."}
    )
    note_chars: int = field(
        default=NOTE_CHARS, metadata={"help": "Characters those words may take (whole words, at least one); 0: no cap."}
    )
    embedder: str = field(
        default=DEFAULT_EMBEDDER,
        metadata={"help": "Sentence embedder that finds a grounded version's notes: mpnet, or minilm (5x less compute)."},
    )

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = GROUNDED_EPOCHS if self.grounded else PLAIN_EPOCHS
            self.min_answer_tokens = GROUNDED_MIN_ANSWER_TOKENS if self.grounded else 0
        if self.trained_share is None:
            self.trained_share = GROUNDED_TRAINED_SHARE if self.grounded else 1.0
        if self.epochs <= 0:
            raise ValueError("epochs must be positive")
        if self.learning_rate <= 0 or self.learning_rate > 1:
            raise ValueError("learning_rate must be in (0, 1]; try 3e-4")
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            raise ValueError("batch_size and gradient_accumulation must be at least 1")
        if self.max_length < 16:
            raise ValueError("max_length must be at least 16 tokens")
        if not 0 < self.trained_share <= 1:
            raise ValueError("trained_share must be in (0, 1]; 1 trains every weight")
        if self.embedder not in RECIPES:
            raise ValueError(f"embedder must be one of {', '.join(RECIPES)}")

    @property
    def heads(self) -> HeadRule:
        """The note heads a grounded version learns (note_words and note_chars: separate settings of the CLI)."""
        return HeadRule(self.note_words, self.note_chars)


@dataclass
class TrainResult:
    """What a fine-tune produced: metrics of the kept model and the full log."""

    metrics: dict[str, float]
    log_history: list[dict[str, Any]]
    seconds: float
    epochs_run: float
    budget: int = FALLBACK_BUDGET  # new tokens an answer may take, from the data's longest answer
    tokens_per_epoch: int = 0  # tokens of the formatted examples (prompts and answers): what a step's time follows
    eval_seconds: float = 0.0  # of `seconds`, spent asking questions after epochs


def eval_count(config: TrainConfig, budget: int) -> int:
    """Questions of each kind an evaluated epoch asks: `eval_questions`, fewer when answers are long."""
    scaled = math.ceil(config.eval_questions * min(1.0, EVAL_BUDGET_TOKENS / max(budget, 1)))
    return min(config.eval_questions, max(EVAL_MIN_QUESTIONS, scaled))


def whole_answer_tokens(learnt: int, tokenizer: Any, pairs: list[QAPair], heads: HeadRule) -> int:
    """Answer tokens an epoch of grounded examples counts toward the minimum: what it learns, with each pair's one
    positive counted as its whole answer rather than the head it learns (see WHOLE_ANSWERS), so that the epochs do not
    depend on the heads' length."""
    if not heads.words:
        return learnt
    learnt_heads = answer_lengths(tokenizer, (heads.head(p.response) for p in pairs))
    return learnt + sum(answer_lengths(tokenizer, (p.response for p in pairs))) - sum(learnt_heads)


def recall_sample(pairs: list[QAPair], config: TrainConfig, count: int | None = None) -> list[QAPair]:
    """The training questions asked back to measure recall (the same ones for every model of a run)."""
    count = config.eval_questions if count is None else count
    return random.Random(config.seed).sample(pairs, min(count, len(pairs)))


def _training_args(config: TrainConfig, output_dir: Path, steps: int, device: torch.device) -> TrainingArguments:
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.scheduler,
        warmup_steps=int(steps * config.warmup_ratio),
        weight_decay=config.weight_decay,
        logging_steps=1,
        save_strategy="epoch" if config.checkpoints else "no",
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        remove_unused_columns=False,
        use_cpu=device.type == "cpu",
        bf16=bf16,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
    )


def fine_tune(
    model: Any,
    tokenizer: Any,
    pairs: list[QAPair],
    *,
    config: TrainConfig,
    run_dir: Path,
    heldout: list[HeldoutItem] | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    examples: list[tuple[str, str]] | None = None,
    grounding: Any = None,
) -> tuple[Any, TrainResult]:
    """Fine-tune `model` in place on `pairs` (or on formatted `examples`, grounded) and return the model to save."""
    report = progress or (lambda p: None)
    set_seed(config.seed)
    started = time.monotonic()
    device = next(model.parameters()).device
    report(Progress("preparing"))
    if examples is not None:
        # Whole, as at answering time (where notes fill the context less the answer budget): cut to `max_length`, the
        # farthest notes of the pebble FAQ lost their start in training but not when answering, and the model then
        # copied the wrong note for 21 of 60 held-out questions whose right note was nearest for 51.
        limit = max(config.max_length, context_length(model.config))
        features = [tokenize_example(prompt, answer, tokenizer, limit) for prompt, answer in examples]
    else:
        features = [tokenize_pair(p, tokenizer, config.max_length) for p in pairs]
    per_epoch = math.ceil(len(features) / (config.batch_size * config.gradient_accumulation))
    learnt = sum(label != IGNORE_INDEX for f in features for label in f["labels"])  # answer tokens per epoch
    if examples is not None:
        learnt = whole_answer_tokens(learnt, tokenizer, pairs, config.heads)
    if config.min_answer_tokens and learnt * config.epochs < config.min_answer_tokens:
        config = replace(config, epochs=float(math.ceil(config.min_answer_tokens / max(learnt, 1))))
        logger.info("%d answer tokens an epoch: %s epochs, to learn %d at least", learnt, config.epochs, config.min_answer_tokens)
    tail = AnswerCollator.fits(model)  # the vocabulary scored only where answers are learnt (see AnswerCollator)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
        )
        model = get_peft_model(model, lora)
    elif config.trained_share < 1:
        count = max(1, math.ceil(len(blocks(model)) * config.trained_share))
        logger.info("training the top %d blocks: %d weights", count, train_top_layers(model, count))
    model.train()
    budget = answer_budget(longest_answer(tokenizer, (p.response for p in pairs)), context_length(model.config))
    asked = eval_count(config, budget)
    heldout = random.Random(config.seed).sample(heldout, asked) if heldout and len(heldout) > asked else heldout or []
    accuracy = AccuracyCallback(tokenizer, recall_sample(pairs, config, asked), heldout, config, report, grounding, budget)
    steps = per_epoch * math.ceil(config.epochs)
    trainer = Trainer(
        model=model,
        args=_training_args(config, run_dir / "checkpoints", steps, device),
        train_dataset=features,
        data_collator=AnswerCollator(tokenizer.pad_token_id) if tail else PadCollator(tokenizer.pad_token_id),
        compute_loss_func=tail_loss if tail else None,
        callbacks=[ProgressCallback(report), accuracy, CheckpointCallback(config.checkpoint_after_s)],
    )
    trainer.remove_callback(PrinterCallback)
    checkpoint = resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if checkpoint else None)
    metrics = dict(accuracy.restore_best(model))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    if losses:
        metrics["train_loss_first"] = round(losses[0], 4)
        metrics["train_loss_last"] = round(sum(losses[-5:]) / len(losses[-5:]), 4)
    if config.lora:
        model = model.merge_and_unload()
    model.eval()
    seconds, epochs_run = time.monotonic() - started, trainer.state.epoch or 0.0
    tokens = sum(len(f["input_ids"]) for f in features)
    result = TrainResult(metrics, trainer.state.log_history, seconds, epochs_run, budget, tokens, accuracy.seconds)
    report(Progress("trained", trainer.state.global_step, trainer.state.max_steps, result.epochs_run, metrics=metrics))
    return model, result
