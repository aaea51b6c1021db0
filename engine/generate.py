"""Answer a batch of questions in one batched decoding pass."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList, StopStringCriteria, TopPLogitsWarper

from engine.decoding import decode, supports_pruned_decoding
from engine.formatting import STOP_TEXT, format_prompt, longest_answer
from engine.grounding import decline_token
from engine.models import context_length
from engine.steering import DeclineGate, NoteSnap
from engine.textformat import FALLBACK_BUDGET, answer_budget
from qabot.errors import QuestionError
from qabot.questions import check_question

STOP_TAIL_TOKENS = 12

logger = logging.getLogger(__name__)


class StopReason(StrEnum):
    """Why an answer ended."""

    EOS = "eos"
    STOP_TEXT = "stop_text"
    LENGTH = "length"
    NOTE = "note"  # it began copying one note: the answer is that note, whole (SNAP_TOKENS)


@dataclass(frozen=True)
class Answer:
    """The bot's answer to one question."""

    question: str
    text: str
    new_tokens: int
    stop: StopReason
    declined: bool = False  # a grounded model said its notes do not answer the question
    sources: tuple[str, ...] = ()  # the questions of the pairs it was given as notes, nearest first
    score: float | None = None  # cosine similarity of the nearest pair
    reason: str | None = None  # why it declined: the model said so, or the data was judged not to hold the answer
    withheld: str = ""  # what the model said when a check turned its answer into a decline (for evaluation)


@dataclass(frozen=True)
class Sampling:
    """Decoding options; greedy unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None


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
        self.prune = prune and on_cpu and supports_pruned_decoding(model)
        self.generate_calls = 0
        self._stopping: StoppingCriteriaList | None = None
        self._decline_token: tuple[str, int] | None = None  # the decline text and its first token, looked up once
        self.context = context_length(model.config)

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
        """Prompts as token ids; special-token strings in a question are plain text, never control tokens."""
        self.tokenizer.padding_side = "left"
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True, split_special_tokens=True)

    def _fits(self, prompt: str) -> bool:
        """A prompt leaves the answer its budget in the model's context."""
        return (
            len(self.tokenizer(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]) <= self.question_tokens
        )

    def prepare(self, question: str) -> str:
        """The question as the model will see it, or QuestionError (empty, too long in characters or in tokens)."""
        text = check_question(question, self.max_question_chars)
        length = len(self.tokenizer(format_prompt(text), add_special_tokens=True, split_special_tokens=True)["input_ids"])
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
        question is already what `prepare` returned for it (the answer worker checks each one once, as it takes it)."""
        if not questions:
            return []
        cleaned = list(questions) if prepared else [self._prepare_one(questions, i) for i in range(len(questions))]
        sampling = sampling or Sampling()
        if self.grounding is None:
            return self._generate(cleaned, [format_prompt(q) for q in cleaned], sampling)
        prompts, hits = self.grounding.prompts(cleaned, fits=self._fits)
        reasons = [self.grounding.reason_to_decline(q, found) for q, found in zip(cleaned, hits, strict=True)]
        asked = [i for i, reason in enumerate(reasons) if reason is None]  # the others are declined without the model
        gate = DeclineGate(self._decline_first_token(), self.grounding.decline_confidence)
        snap = NoteSnap(self.tokenizer, [[h.pair.response for h in hits[i]] for i in asked])
        answered = self._generate([cleaned[i] for i in asked], [prompts[i] for i in asked], sampling, gate, snap)
        generated = dict(zip(asked, answered, strict=True))
        decline = " ".join(self.grounding.decline.split())
        answers = []
        for index, (question, found, reason) in enumerate(zip(cleaned, hits, reasons, strict=True)):
            answer = generated.get(index) or Answer(question, decline, 0, StopReason.EOS)
            if reason is None and self._is_decline(answer.text):
                reason = "the model found no answer in its notes"
            elif reason is None and answer.stop == StopReason.LENGTH:  # kept as a runaway in `stop`, never shown
                reason, answer = "the answer ran to the token limit", replace(answer, text=decline, withheld=answer.text)
            elif (
                reason is None
                and (reason := self.grounding.reason_to_reject(question, answer.text, [h.pair.response for h in found]))
                is not None
            ):
                answer = replace(answer, text=decline, withheld=answer.text)
            answers.append(
                replace(
                    answer,
                    declined=reason is not None,
                    reason=reason,
                    sources=tuple(h.pair.prompt for h in found),
                    score=round(found[0].score, 4) if found else None,
                )
            )
        return answers

    def _generate(
        self,
        questions: list[str],
        prompts: list[str],
        sampling: Sampling,
        gate: DeclineGate | None = None,
        snap: NoteSnap | None = None,
    ) -> list[Answer]:
        """One batched decoding pass over the prompts; with `snap`, an answer that began copying a note is that note."""
        if not prompts:
            return []
        batch = self._encode(prompts).to(self.device)
        budget = max(1, min(self.max_new_tokens, self.context - batch["input_ids"].shape[1]))
        if gate is not None:
            gate.prompt_length = batch["input_ids"].shape[1]
        with torch.inference_mode():
            if self.prune:
                pick, steps = self._picker(sampling), [0]

                def gated(logits: torch.Tensor) -> torch.Tensor:
                    steps[0] += 1
                    return pick(gate.gate(logits) if gate is not None and steps[0] == 1 else logits)

                new_tokens = decode(
                    self.model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    max_new_tokens=budget,
                    eos_token_id=self.tokenizer.eos_token_id,
                    should_stop=lambda row, ids: self._ends_with_stop_text(ids) or bool(snap and snap.match(row, ids)),
                    pick=gated,
                )
            else:
                new_tokens = self._hf_generate(batch, sampling, budget, gate)
        self.generate_calls += 1
        answers = [self._finish(q, ids) for q, ids in zip(questions, new_tokens, strict=True)]
        if snap is not None:
            for row, ids in enumerate(new_tokens):
                eos = self.tokenizer.eos_token_id
                if (note := snap.first_match(row, ids[: ids.index(eos)] if eos in ids else ids)) is not None:
                    answers[row] = replace(answers[row], text=note, stop=StopReason.NOTE)
                elif (
                    answers[row].stop != StopReason.LENGTH
                    and not self._is_decline(answers[row].text)
                    and (note := snap.closest(row, answers[row].text)) is not None
                ):
                    answers[row] = replace(answers[row], text=note, stop=StopReason.NOTE)
        return answers

    def _is_decline(self, text: str) -> bool:
        decline = self.grounding.decline if self.grounding is not None else ""
        return " ".join(text.split()).casefold() == " ".join(decline.split()).casefold()

    def _ends_with_stop_text(self, ids: list[int]) -> bool:
        return STOP_TEXT in self.tokenizer.decode(ids[-STOP_TAIL_TOKENS:], skip_special_tokens=True)

    def _picker(self, sampling: Sampling):
        """Greedy, or temperature and top-p sampling (seeded when asked)."""
        if not sampling.do_sample:
            return lambda logits: logits.argmax(dim=-1)
        generator = torch.Generator(device=self.device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        top_p = TopPLogitsWarper(sampling.top_p)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(top_p(None, logits / max(sampling.temperature, 1e-5)), dim=-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)

        return pick

    def _hf_generate(self, batch: Any, sampling: Sampling, budget: int, gate: DeclineGate | None = None) -> list[list[int]]:
        """`model.generate`, for models the pruned loop does not support."""
        options: dict[str, Any] = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        output = self.model.generate(
            **batch,
            max_new_tokens=budget,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=self._stop_criteria(),
            logits_processor=LogitsProcessorList([gate] if gate is not None else []),
            **options,
        )
        return output[:, batch["input_ids"].shape[1] :].tolist()

    def _finish(self, question: str, ids: list[int]) -> Answer:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        while ids and pad != eos and ids[-1] == pad:
            ids = ids[:-1]
        stop = StopReason.LENGTH
        if eos in ids:
            ids = ids[: ids.index(eos)]
            stop = StopReason.EOS
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if STOP_TEXT in text:
            text = text[: text.index(STOP_TEXT)]
            stop = StopReason.STOP_TEXT
        return Answer(question=question, text=text.strip(), new_tokens=len(ids), stop=stop)
