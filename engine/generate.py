"""Answer questions: check them, ground them in their notes, decode them in a running batch, and settle each answer
(`Answer`, `Sampling` and `StopReason`, and how an answer is settled, live in `engine.answers`; the first three are
re-exported here)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import BatchEncoding, StoppingCriteriaList, StopStringCriteria

from engine.answers import Answer, Asked, Sampling, StopReason, finish, is_decline, picker, settle
from engine.decoding import RunningBatch, generate_whole, supports_pruned_decoding
from engine.formatting import STOP_TEXT, PromptTokens, format_prompt, longest_answer
from engine.grounding import decline_token
from engine.models import context_length
from engine.steering import DeclineGate, NoteSnap, answer_ids, model_declines
from engine.textformat import FALLBACK_BUDGET, answer_budget
from qabot.errors import QuestionError
from qabot.questions import check_question

STOP_TAIL_TOKENS = 12

logger = logging.getLogger(__name__)

__all__ = ["Answer", "Answerer", "Sampling", "StopReason"]


@dataclass(frozen=True)
class _Steering:
    gate: DeclineGate | None
    snap: NoteSnap | None


class Answerer:
    """Generates answers with a loaded model; one `generate` call per batch of questions."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int | None = None,
        max_question_chars: int = 500,
        prune: bool = True,
        grounding: Any = None,
        data_budget: int = FALLBACK_BUDGET,
    ) -> None:
        self.model = model
        self.grounding = grounding  # engine.grounding.Grounding: answer from retrieved notes
        self.tokenizer = tokenizer
        self.fixed_budget = max_new_tokens  # a setting's override; None: the budget follows the data
        self.data_budget = data_budget  # the version's, measured on the dataset it learnt
        self._notes_budget: tuple[Any, int] | None = None  # (index, budget of its answers), measured once per index
        self.max_question_chars = max_question_chars
        # Measured on an H100 in bf16 (gpt2-medium shapes, 64 new tokens): model.generate answered 3.4x (batch 16) to
        # 4.3x (batch 64) faster than the pruned loop, whose per-step work in Python dominates on a GPU; on a CPU the
        # pruned loop wins (bench/generation.py). So the pruned loop runs on the CPU only.
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.choosable = supports_pruned_decoding(model)  # engine.steering.model_declines runs on it (CPU and GPU)
        self.prune = prune and on_cpu and self.choosable
        self._notes_ids: dict[str, list[int]] = {}
        self.generate_calls = 0
        self._stopping: StoppingCriteriaList | None = None
        self._decline_token: tuple[str, int] | None = None  # the decline text and its first token, looked up once
        self.context = context_length(model.config)
        self.tokens = PromptTokens(tokenizer)  # prompts' ids, from the length checks to their batch

    @property
    def max_new_tokens(self) -> int:
        """Longest answer in tokens: the setting if given, else the data's (the version's, or the notes' dataset's if
        that now holds a longer answer: a pair added by /addqa is answered whole before any retraining)."""
        if self.fixed_budget is not None:
            return self.fixed_budget
        index = self.grounding.index if self.grounding is not None else None
        if index is None:
            return self.data_budget
        if self._notes_budget is None or self._notes_budget[0] is not index:
            longest = longest_answer(self.tokenizer, (p.response for p in index.pairs))
            self._notes_budget = (index, answer_budget(longest, self.context) if longest else 0)
        return max(self.data_budget, self._notes_budget[1])

    @property
    def question_tokens(self) -> int:
        """The answer keeps its budget; a question may use the rest of the context (at least half of it)."""
        return self.context - min(self.max_new_tokens, self.context // 2)

    def _encode(self, texts: list[str]) -> Any:
        """Prompts as a left-padded batch of token ids (each question tokenised once: engine.formatting.PromptTokens)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return BatchEncoding(self.tokens.batch(texts, pad))

    def _fits(self, prompt: str) -> bool:
        """A prompt leaves the answer its budget in the model's context."""
        return len(self.tokens.ids(prompt)) <= self.question_tokens

    def prepare(self, question: str) -> str:
        """The question as the model will see it, or QuestionError (empty, too long in characters or in tokens)."""
        text = check_question(question, self.max_question_chars)
        length = self.tokens.question(text)
        if length > self.question_tokens:
            raise QuestionError(
                f"Your question is too long for this model ({length} tokens, the limit is {self.question_tokens}); "
                "please shorten it."
            )
        return text

    def _prepare_one(self, questions: list[str], index: int) -> str:
        """`prepare` for one of a batch's questions; its error names which one when there are several."""
        try:
            return self.prepare(questions[index])
        except QuestionError as exc:
            raise QuestionError(f"question {index + 1}: {exc}" if len(questions) > 1 else str(exc)) from exc

    def _decline_first_token(self) -> int:
        text = self.grounding.decline
        if self._decline_token is None or self._decline_token[0] != text:
            self._decline_token = (text, decline_token(self.tokenizer, text))
        return self._decline_token[1]

    def _stop_criteria(self) -> StoppingCriteriaList:
        """Stop at a new `Question:` line; built once, as building it scans the whole vocabulary."""
        if self._stopping is None:
            self._stopping = StoppingCriteriaList([StopStringCriteria(self.tokenizer, [STOP_TEXT])])
        return self._stopping

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answer(self, questions: list[str], sampling: Sampling | None = None, *, prepared: bool = False) -> list[Answer]:
        """Answer every question; raises QuestionError before any model call if one is unusable. `prepared`: each
        question is already what `prepare` returned for it."""
        answers = dict(self.stream(questions, sampling, prepared=prepared))
        return [answers[index] for index in range(len(questions))]

    def stream(
        self,
        questions: list[str],
        sampling: Sampling | None = None,
        *,
        prepared: bool = False,
        more: Callable[[int], list[str]] | None = None,
    ) -> Iterator[tuple[int, Answer]]:
        """(index, answer) for each question as its answer ends, the quick ones first. `more(rows)`, called between
        decoding steps with the number of rows decoding, returns prepared questions that join the running batch at the
        next step (indices go on after the questions given); the stream ends when no row is left and `more` has none.
        Raises QuestionError before any model call if a question given is unusable (`prepared`: each already is)."""
        cleaned = list(questions) if prepared else [self._prepare_one(questions, i) for i in range(len(questions))]
        sampling = sampling or Sampling()
        if not self.prune:  # model.generate: one batch, nothing joins it
            plan = self._plan(cleaned)
            chosen = [(i, item) for i, item in enumerate(plan) if item.reason is None and self._chooses(item, sampling)]
            if chosen:
                yield from self._choose(chosen, self._decline_gate())
            picked = {i for i, _ in chosen}
            rest = [i for i in range(len(plan)) if i not in picked]
            yield from zip(rest, self._generate([plan[i] for i in rest], sampling), strict=True)
            return
        steer = _Steering(self._decline_gate(), self._snap([]))
        batch = RunningBatch(
            self.model,
            eos_token_id=self.tokenizer.eos_token_id,
            should_stop=lambda key, ids: self._ends_with_stop_text(ids) or bool(steer.snap and steer.snap.match(key, ids)),
            pick=picker(sampling, self.device),
        )
        asked: dict[int, Asked] = {}
        waiting, count = self._plan(cleaned), len(cleaned)
        with torch.inference_mode():
            while True:
                chosen = []
                for index, item in enumerate(waiting, start=count - len(waiting)):
                    if item.reason is not None:  # declined without the model
                        yield index, settle(self.grounding, item, Answer(item.question, "", 0, StopReason.EOS))
                    elif self._chooses(item, sampling):
                        chosen.append((index, item))
                    else:
                        asked[index] = item
                if chosen:
                    yield from self._choose(chosen, steer.gate)
                joining = [index for index in range(count - len(waiting), count) if index in asked]
                if joining:
                    for index, ids in self._join(batch, joining, asked, steer):
                        item = asked.pop(index)
                        yield index, settle(self.grounding, item, self._ended(item, ids, steer, index))
                waiting = []
                if more is not None and (len(batch) == 0 or batch.joinable):
                    waiting = self._plan(more(len(batch)))
                    count += len(waiting)
                if not waiting and not len(batch):
                    return
                for index, ids in batch.step():
                    item = asked.pop(index)
                    yield index, settle(self.grounding, item, self._ended(item, ids, steer, index))

    def _chooses(self, item: Asked, sampling: Sampling) -> bool:
        """A greedy answer of a grounded model whose notes are all answers it learnt is chosen among them."""
        learnt = self.grounding.learnt if self.grounding is not None else None
        return (
            learnt is not None
            and self.choosable
            and not sampling.do_sample
            and all(" ".join(note.split()) in learnt for note in item.notes())
        )

    def _choose(self, items: list[tuple[int, Asked]], gate: DeclineGate) -> Iterator[tuple[int, Answer]]:
        """A grounded model's answers where every note is one it learnt: the decline where the model declines past the
        gate (engine.steering.model_declines), else the nearest note, whole; one prefill, no decoding."""
        decline = " ".join(self.grounding.decline.split())
        encoded = self._encode([item.prompt for _, item in items]).to(self.device)
        self.generate_calls += 1
        declines = model_declines(self.model, encoded["input_ids"], encoded["attention_mask"], gate)
        for (index, item), declined in zip(items, declines, strict=True):
            if declined or not item.hits:
                answer = Answer(item.question, decline, 0, StopReason.EOS)
            else:
                answer = Answer(item.question, item.notes()[0].strip(), 1, StopReason.NOTE)
            yield index, settle(self.grounding, item, answer)

    def _answer_ids(self, note: str) -> list[int]:
        """A note's token ids as an answer (kept: the same notes come back question after question)."""
        if (found := self._notes_ids.get(note)) is None:
            if len(self._notes_ids) >= 16384:
                self._notes_ids.clear()
            found = self._notes_ids[note] = answer_ids(self.tokenizer, note)
        return found

    def _snap(self, notes: list[list[str]]) -> NoteSnap | None:
        """Which note each row's answer copies, by the heads the version learnt; None for a plain version."""
        g = self.grounding
        return None if g is None else NoteSnap(self.tokenizer, notes, self._answer_ids, g.heads)

    def _plan(self, cleaned: list[str]) -> list[Asked]:
        """Each question's prompt, its notes and whether the data decides it without the model."""
        if not cleaned:
            return []
        if self.grounding is None:
            return [Asked(q, format_prompt(q)) for q in cleaned]
        encoded = self.grounding.embedder.encode(cleaned)  # once: for the notes and for the off-topic rule
        prompts, hits, shown = self.grounding.prompts(cleaned, fits=self._fits, encoded=encoded)
        near = self.grounding.offtopic_closeness(cleaned, encoded)
        return [  # the data's reasons read every hit; the answer's notes and sources are the ones its prompt shows
            Asked(q, prompt, notes, self.grounding.reason_to_decline(q, found, offtopic))
            for q, prompt, found, notes, offtopic in zip(cleaned, prompts, hits, shown, near, strict=True)
        ]

    def _decline_gate(self) -> DeclineGate | None:
        if self.grounding is None:
            return None
        return DeclineGate(self._decline_first_token(), self.grounding.decline_confidence)

    def _join(self, batch: RunningBatch, indices: list[int], asked: dict[int, Asked], steer: _Steering) -> Any:
        """Prefill these questions' prompts into the running batch; the rows that ended at their first token."""
        encoded = self._encode([asked[i].prompt for i in indices]).to(self.device)
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        budgets = [max(1, min(self.max_new_tokens, self.context - length)) for length in lengths]
        if steer.snap is not None:
            for index in indices:
                steer.snap.rows[index] = steer.snap.note_ids(asked[index].notes())
        self.generate_calls += 1
        first = steer.gate.gate if steer.gate is not None else None
        return batch.join(indices, encoded["input_ids"], encoded["attention_mask"], budgets, first)

    def _ended(self, item: Asked, ids: list[int], steer: _Steering, row: int) -> Answer:
        """A decoded answer; one that began copying a note, or is most of one, is that note."""
        answer = finish(self.tokenizer, item.question, ids)
        snap = steer.snap
        if snap is None:
            return answer
        eos = self.tokenizer.eos_token_id
        if (note := snap.first_match(row, ids[: ids.index(eos)] if eos in ids else ids)) is not None:
            answer = replace(answer, text=note, stop=StopReason.NOTE)
        elif (
            answer.stop != StopReason.LENGTH
            and not is_decline(answer.text, self.grounding)
            and (note := snap.closest(row, answer.text)) is not None
        ):
            answer = replace(answer, text=note, stop=StopReason.NOTE)
        snap.rows.pop(row, None)
        return answer

    def _generate(self, items: list[Asked], sampling: Sampling) -> list[Answer]:
        """`model.generate` over the questions the model must answer, in one batch (models the running batch does not
        support, and GPUs); the others are settled without it."""
        to_model = [i for i, item in enumerate(items) if item.reason is None]
        answers = {i: Answer(item.question, "", 0, StopReason.EOS) for i, item in enumerate(items) if item.reason is not None}
        if to_model:
            notes = [items[i].notes() for i in to_model]
            steer = _Steering(self._decline_gate(), self._snap(notes))
            batch = self._encode([items[i].prompt for i in to_model]).to(self.device)
            budget = max(1, min(self.max_new_tokens, self.context - batch["input_ids"].shape[1]))
            if steer.gate is not None:
                steer.gate.prompt_length = batch["input_ids"].shape[1]
            with torch.inference_mode():
                new_tokens = generate_whole(
                    self.model, self.tokenizer, batch, sampling, budget, stopping=self._stop_criteria(), gate=steer.gate
                )
            self.generate_calls += 1
            for row, (i, ids) in enumerate(zip(to_model, new_tokens, strict=True)):
                answers[i] = self._ended(items[i], ids, steer, row)
        return [settle(self.grounding, item, answers[i]) for i, item in enumerate(items)]

    def _ends_with_stop_text(self, ids: list[int]) -> bool:
        return STOP_TEXT in self.tokenizer.decode(ids[-STOP_TAIL_TOKENS:], skip_special_tokens=True)
