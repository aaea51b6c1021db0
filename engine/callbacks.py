"""What a fine-tune reports while it runs (progress, per-epoch accuracy) and the callbacks that report it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from engine.evaluate import accuracy_score, answer_loss, evaluate_sets, examples_loss
from engine.generate import Answerer
from engine.models import context_length
from engine.textformat import FALLBACK_BUDGET
from qabot.dataset import MAX_FIELD_CHARS, QAPair
from qabot.heldout import HeldoutItem

logger = logging.getLogger("engine.training")


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running fine-tune, for progress bars and job meta."""

    stage: str
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


class ProgressCallback(TrainerCallback):
    def __init__(self, report: ProgressFn) -> None:
        self.report = report
        self.started = time.monotonic()
        self.first_step = 0
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self._report(state)

    def _report(self, state) -> None:
        done = state.global_step - self.first_step
        left = state.max_steps - state.global_step
        eta = (time.monotonic() - self.started) / done * left if done else None
        self.report(Progress("training", state.global_step, state.max_steps, state.epoch or 0.0, self.loss, eta))

    def on_step_end(self, args, state, control, **kwargs):
        if self.loss is None:  # later steps are reported with their loss, from on_log
            self._report(state)


class CheckpointCallback(TrainerCallback):
    """Keeps an epoch's checkpoint (TrainingArguments' save_strategy "epoch") only where it can save work: when at
    least `after_s` seconds of training since the last one would otherwise be lost, and never after the last epoch or
    one that early stopping ends (the version is saved then). Goes after every callback that may stop training."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self.since = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.since = time.monotonic()

    def on_epoch_end(self, args, state, control, **kwargs):
        ending = control.should_training_stop or state.global_step >= state.max_steps
        if ending or time.monotonic() - self.since < self.after_s:
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        self.since = time.monotonic()


class AccuracyCallback(TrainerCallback):
    """Asks questions after each epoch, logs accuracy, stops when it no longer improves, keeps the best."""

    def __init__(
        self,
        tokenizer: Any,
        recall: list[QAPair],
        heldout: list[HeldoutItem],
        config: Any,
        report: ProgressFn,
        grounding: Any = None,
        budget: int = FALLBACK_BUDGET,
    ) -> None:
        self.tokenizer, self.recall, self.heldout, self.grounding = tokenizer, recall, heldout, grounding
        self.budget = budget  # the data's answer budget: the answers are measured as they will be given
        self.config, self.report = config, report
        # half-way through, not before the second epoch (the last one is always evaluated)
        self.first_epoch = config.eval_from_epoch or max(2, math.ceil(config.epochs / 2))
        self.best_score = -1.0
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0
        self.seconds = 0.0  # spent evaluating: a fixed cost of a run, whatever the dataset's size

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        last = state.global_step >= state.max_steps
        if (epoch < self.first_epoch and not last) or not (self.recall or self.heldout):
            return
        self.report(Progress("evaluating", state.global_step, state.max_steps, state.epoch or 0.0))
        started = time.monotonic()
        metrics = self.evaluate(model)
        self.seconds += time.monotonic() - started
        metrics["epoch"] = state.epoch or 0.0
        state.log_history.append({**metrics, "step": state.global_step})
        score = accuracy_score(metrics)
        logger.info("epoch %s: %s", epoch, metrics)
        if score > self.best_score:
            self.best_score, self.best_metrics, self.stale = score, metrics, 0
            if not last:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                self.best_state = None
        else:
            self.stale += 1
        patience = self.config.early_stopping_patience
        if score >= 1.0 or (patience and self.stale >= patience):
            control.should_training_stop = True

    def evaluate(self, model: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        answerer = Answerer(
            model, self.tokenizer, max_question_chars=MAX_FIELD_CHARS, grounding=self.grounding, data_budget=self.budget
        )
        try:
            metrics = evaluate_sets(answerer, self.recall, self.heldout)
            with_answers = [QAPair(i.question, i.answer) for i in self.heldout if i.answer]
            if with_answers:
                metrics["heldout_loss"] = round(self.heldout_loss(model, with_answers), 4)
        finally:
            model.train(was_training)
        return metrics

    def heldout_loss(self, model: Any, pairs: list[QAPair]) -> float:
        """The loss on held-out questions' answers as the model learns and gives them: a grounded model's with the notes
        it is given when answering, on the head of the answer it learnt (plain prompts and whole answers made its
        held-out curve a loss of something it was never taught, far above its training loss)."""
        if self.grounding is None:
            return answer_loss(model, self.tokenizer, pairs, max_length=self.config.max_length)
        prompts, _, _ = self.grounding.prompts([p.prompt for p in pairs])
        learnt = [self.grounding.heads.head(p.response) for p in pairs]
        limit = max(self.config.max_length, context_length(model.config))  # as its training examples (engine.training)
        return examples_loss(model, self.tokenizer, list(zip(prompts, learnt, strict=True)), max_length=limit)

    def restore_best(self, model: Any) -> dict[str, float]:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return self.best_metrics
