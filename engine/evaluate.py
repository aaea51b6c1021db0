"""Answer accuracy: does the bot give the right fact for training questions and paraphrases?"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from engine.formatting import IGNORE_INDEX, AnswerCollator, PadCollator, format_prompt, tail_loss, tokenize_example
from engine.generate import Answer, Answerer, StopReason
from qabot.dataset import QAPair
from qabot.errors import QuestionError
from qabot.heldout import HeldoutItem

MATCH_F1 = 0.6
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _tokens(text: str) -> list[str]:
    text = text.casefold().translate(str.maketrans("", "", string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between two texts (case, punctuation and articles ignored)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def matches_reference(prediction: str, reference: str) -> bool:
    """A training question counts as answered when the answer is close to the reference."""
    return token_f1(prediction, reference) >= MATCH_F1


def contains_facts(prediction: str, facts: Sequence[str]) -> bool:
    """A paraphrase counts as answered when every key fact appears in the answer."""
    text = " ".join(prediction.casefold().split())
    return all(" ".join(f.casefold().split()) in text for f in facts)


@dataclass(frozen=True)
class EvalItem:
    question: str
    expected: str
    answer: str
    correct: bool
    stop: str
    declined: bool = False
    reason: str | None = None  # why it declined
    sources: tuple[str, ...] = ()  # the questions of the pairs it had as notes, nearest first
    withheld_right: bool | None = None  # a check withheld the model's answer: would it have been right?


@dataclass
class EvalReport:
    """Accuracy over a set of questions, with each question's outcome."""

    name: str
    items: list[EvalItem] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(i.correct for i in self.items) / len(self.items) if self.items else 0.0

    @property
    def runaway(self) -> int:
        """Answers that ran to the token limit instead of ending."""
        return sum(i.stop == StopReason.LENGTH for i in self.items)

    @property
    def declined(self) -> float:
        """Share of questions the model declined."""
        return sum(i.declined for i in self.items) / len(self.items) if self.items else 0.0

    def summary(self) -> dict[str, float | int]:
        figures = {
            f"{self.name}_accuracy": round(self.accuracy, 4),
            f"{self.name}_n": len(self.items),
            f"{self.name}_runaway": self.runaway,
        }
        if any(i.declined for i in self.items):
            figures[f"{self.name}_declined"] = round(self.declined, 4)
        return figures

    def to_dict(self) -> dict:
        return {"name": self.name, "accuracy": self.accuracy, "items": [asdict(i) for i in self.items]}


def _batched(seq: Sequence, size: int):
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def answer_each(answerer: Answerer, questions: Sequence[str]) -> list[Answer]:
    """Answers in one batched pass; a question the model cannot take (too long for its context) gets an empty answer."""
    usable, prepared = [], []
    for question in questions:
        try:
            prepared.append(answerer.prepare(question))
            usable.append(True)
        except QuestionError:
            usable.append(False)
    answers = iter(answerer.answer(prepared, prepared=True))
    refused = Answer(question="", text="", new_tokens=0, stop=StopReason.LENGTH)
    return [next(answers) if ok else refused for ok in usable]


def _evaluate(
    answerer: Answerer, name: str, questions: Sequence[str], expected: Sequence[str], judge, batch_size: int
) -> EvalReport:
    """Ask the questions in batches; `judge(index, answer)` says whether the answer to question `index` is right."""
    report = EvalReport(name)
    for start in range(0, len(questions), batch_size):
        for index, answer in enumerate(answer_each(answerer, questions[start : start + batch_size]), start):
            ok = judge(index, answer)
            withheld = judge(index, replace(answer, text=answer.withheld, declined=False)) if answer.withheld else None
            report.items.append(
                EvalItem(
                    questions[index],
                    expected[index],
                    answer.text,
                    ok,
                    answer.stop.value,
                    answer.declined,
                    answer.reason,
                    answer.sources,
                    withheld,
                )
            )
    return report


def evaluate_pairs(answerer: Answerer, pairs: Sequence[QAPair], *, batch_size: int = 32, name: str = "recall") -> EvalReport:
    """Ask the training questions and compare with the reference answers."""
    references = [p.response for p in pairs]
    return _evaluate(
        answerer, name, [p.prompt for p in pairs], references, lambda i, a: matches_reference(a.text, references[i]), batch_size
    )


def evaluate_heldout(
    answerer: Answerer, items: Sequence[HeldoutItem], *, batch_size: int = 32, name: str = "heldout"
) -> EvalReport:
    """Ask paraphrased questions and check that the answers carry the key facts."""
    expected = [" | ".join(i.facts) for i in items]
    judge = lambda i, a: contains_facts(a.text, items[i].facts)  # noqa: E731
    return _evaluate(answerer, name, [i.question for i in items], expected, judge, batch_size)


def evaluate_unanswerable(
    answerer: Answerer, questions: Sequence[str], *, batch_size: int = 32, name: str = "unanswerable"
) -> EvalReport:
    """Ask questions the data cannot answer: right means declined (only a grounded model can)."""
    return _evaluate(answerer, name, list(questions), ["(decline)"] * len(questions), lambda i, a: a.declined, batch_size)


def answer_loss(model, tokenizer, pairs: Sequence[QAPair], *, batch_size: int = 16, max_length: int = 256) -> float:
    """Mean cross-entropy over answer tokens (teacher-forced) of plain `Question: ...` prompts, the validation loss."""
    examples = [(format_prompt(p.prompt), p.response) for p in pairs]
    return examples_loss(model, tokenizer, examples, batch_size=batch_size, max_length=max_length)


def examples_loss(model, tokenizer, examples: Sequence[tuple[str, str]], *, batch_size: int = 16, max_length: int = 256) -> float:
    """Mean cross-entropy over the answer tokens of formatted (prompt, answer) examples, teacher-forced: a grounded
    version's are its notes and the question, and the answer it learnt (engine.grounding). The vocabulary is scored
    only in the answers' columns where the model allows it (engine.formatting.AnswerCollator: a grounded batch's full
    logits ran to about a gigabyte)."""
    collate = AnswerCollator(tokenizer.pad_token_id) if AnswerCollator.fits(model) else PadCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for chunk in _batched(examples, batch_size):
            batch = collate([tokenize_example(prompt, answer, tokenizer, max_length) for prompt, answer in chunk])
            labels = batch.pop("labels")
            outputs = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            total += tail_loss(outputs, labels, num_items_in_batch=1).item()  # the sum over answer tokens (any logits kept)
            count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def accuracy_score(metrics: dict[str, float]) -> float:
    """One number to compare models by: the mean of every `*_accuracy` metric."""
    accuracies = [v for k, v in metrics.items() if k.endswith("_accuracy")]
    return sum(accuracies) / len(accuracies) if accuracies else 0.0


def evaluate_sets(answerer: Answerer, recall: Sequence[QAPair], heldout: Sequence[HeldoutItem]) -> dict[str, float | int]:
    """Recall on training questions and accuracy on held-out paraphrases, as flat metrics."""
    metrics: dict[str, float | int] = {}
    if recall:
        metrics.update(evaluate_pairs(answerer, recall).summary())
    if heldout:
        metrics.update(evaluate_heldout(answerer, heldout).summary())
    return metrics
