"""GPU check (run on a CUDA host): bf16 answering at batch 1/16/64 and fine-tuning speed against the seed recipe.

Uses the gpt2-medium architecture built from its config values (random weights: speed depends on the
shapes, not the weights) with a byte-level tokenizer trained on the sample data, saved and loaded back
through the same code path as a real model. Answers run a fixed number of new tokens (random weights
never say EOS). Prints each figure with its baseline from the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Trainer, default_data_collator

from engine.generate import Answerer
from engine.models import load_model
from engine.training import TrainConfig, _training_args, fine_tune
from qabot.dataset import read_dataset

DATA = Path(__file__).resolve().parent.parent / "data" / "sample.json"


def build(folder: Path, small: bool) -> None:
    """Save a gpt2-medium-shaped model (or a tiny one for a CPU dry run) with a tokenizer trained on the sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    pairs = json.loads(DATA.read_text())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([f"Question: {p['prompt']}\nAnswer: {p['response']}" for p in pairs], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    shape = dict(n_embd=64, n_layer=2, n_head=4) if small else dict(n_embd=1024, n_layer=24, n_head=16)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, eos_token_id=0, bos_token_id=0, **shape)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def original_features(pairs, tokenizer, max_length: int = 128):
    """The seed's tokenization (as in bench.finetune_speed, which needs the settings' dependencies)."""
    enc = tokenizer(
        [f"Question: {p.prompt}\nAnswer: {p.response}" for p in pairs],
        padding="max_length",
        truncation=True,
        max_length=max_length,
    )
    return [
        {"input_ids": i, "attention_mask": m, "labels": list(i)}
        for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def answering(folder: Path, questions: list[str], new_tokens: int) -> None:
    loaded = load_model(str(folder), device="auto", dtype="auto")
    print(f"answering: {loaded.device}, {loaded.model.dtype}, {new_tokens} new tokens per answer")
    answerer = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=new_tokens)
    baseline = Answerer(loaded.model, loaded.tokenizer, max_new_tokens=new_tokens, prune=False)  # model.generate
    for name, each in (("qabot decoding loop", answerer), ("model.generate", baseline)):
        each.answer(questions[:4])  # warm-up (kernels, allocator)
        rates = {}
        for batch in (1, 16, 64):
            asked = questions[: max(batch, 16)] if batch == 1 else questions[:batch]
            sync()
            started = time.perf_counter()
            for start in range(0, len(asked), batch):
                each.answer(asked[start : start + batch])
            sync()
            rates[batch] = len(asked) / (time.perf_counter() - started)
            print(f"  {name}, batch {batch:>2}: {rates[batch]:8.1f} answers/s ({rates[batch] * new_tokens:9.0f} tokens/s)")
        print(f"  {name}: batch 16 vs 1: {rates[16] / rates[1]:.1f}x; batch 64 vs 1: {rates[64] / rates[1]:.1f}x")
    together = answerer.answer(questions[:16])
    alone = [answerer.answer([q])[0] for q in questions[:16]]
    same = sum(a.text == b.text for a, b in zip(together, alone, strict=True))
    print(f"  batch == alone: {same}/16 identical answers in {loaded.model.dtype}")
    print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if torch.cuda.is_available() else "")


def training(folder: Path, epochs: int) -> None:
    pairs = read_dataset(DATA)
    config = TrainConfig(epochs=epochs, checkpoints=False, early_stopping_patience=0, eval_questions=0, grounded=False)
    with TemporaryDirectory() as tmp:
        loaded = load_model(str(folder), device="auto", dtype="float32")
        loaded.tokenizer.padding_side = "right"
        features = original_features(pairs, loaded.tokenizer)
        args = _training_args(config, Path(tmp) / "orig", len(features), loaded.device)
        args.train_sampling_strategy = "random"
        trainer = Trainer(model=loaded.model, args=args, train_dataset=features, data_collator=default_data_collator)
        trainer.remove_callback(transformers.PrinterCallback)
        loaded.model.train()
        sync()
        started = time.perf_counter()
        trainer.train()
        sync()
        original = (time.perf_counter() - started) / epochs
        print(f"fine-tuning ({loaded.device}, bf16 autocast: {args.bf16}), {len(pairs)} pairs, {epochs} epochs:")
        del trainer, loaded
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        loaded = load_model(str(folder), device="auto", dtype="float32")
        sync()
        started = time.perf_counter()
        fine_tune(loaded.model, loaded.tokenizer, pairs, config=config, run_dir=Path(tmp) / "ours")
        sync()
        ours = (time.perf_counter() - started) / epochs
    print(f"  seed recipe {original:.2f} s/epoch; qabot recipe {ours:.2f} s/epoch: {original / ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="A tiny model, for a dry run on a CPU.")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"
    )
    questions = [p.prompt for p in read_dataset(DATA)] * 2
    with TemporaryDirectory() as tmp:
        build(Path(tmp), args.small)
        answering(Path(tmp), questions, args.new_tokens)
        training(Path(tmp), args.epochs)


if __name__ == "__main__":
    main()
