"""Answer-only labels and the padding collator, checked against literal tensors."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from engine.formatting import PadCollator, format_prompt, tokenize_pair
from qabot.dataset import QAPair

VOCAB = ["<pad>", "<eos>", "Question", ":", "Answer", "Who", "guards", "it", "?", "Elara", ".", "does"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def test_prompt_format_is_the_original_one():
    assert format_prompt("  Who guards it? ") == "Question: Who guards it?\nAnswer:"


def test_prompt_tokens_are_masked_and_eos_ends_the_answer():
    features = tokenize_pair(QAPair("Who guards it?", "Elara does."), word_tokenizer(), max_length=64)
    # Question : Who guards it ? Answer : | Elara does . <eos>
    assert features["input_ids"] == [2, 3, 5, 6, 7, 8, 4, 3, 9, 11, 10, 1]
    assert features["labels"] == [-100, -100, -100, -100, -100, -100, -100, -100, 9, 11, 10, 1]
    assert features["attention_mask"] == [1] * 12


def test_truncation_cuts_the_prompt_start_and_keeps_the_whole_answer_aligned():
    features = tokenize_pair(QAPair("Who guards it?", "Elara does."), word_tokenizer(), max_length=10)
    assert features["input_ids"] == [5, 6, 7, 8, 4, 3, 9, 11, 10, 1]
    assert features["labels"] == [-100] * 6 + [9, 11, 10, 1]


def test_collator_pads_to_the_longest_in_the_batch_only():
    tok = word_tokenizer()
    long = tokenize_pair(QAPair("Who guards it?", "Elara does."), tok, 64)
    short = tokenize_pair(QAPair("Who?", "Elara."), tok, 64)
    batch = PadCollator(pad_token_id=0)([long, short])
    assert batch["input_ids"].shape == (2, 12)
    assert torch.equal(batch["input_ids"][1], torch.tensor([2, 3, 5, 8, 4, 3, 9, 10, 1, 0, 0, 0]))
    assert torch.equal(batch["labels"][1], torch.tensor([-100] * 6 + [9, 10, 1] + [-100] * 3))
    assert torch.equal(batch["attention_mask"][1], torch.tensor([1] * 9 + [0] * 3))
    assert torch.equal(batch["labels"][0], torch.tensor(long["labels"]))
