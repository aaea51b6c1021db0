"""Fixtures: tiny GPT-2 and Llama models built from scratch and saved to disk, small datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from engine.dataset import QAPair

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# A tiny world the tiny models can learn in seconds.
TINY_PAIRS = [
    QAPair("Who guards the Luminary Stone?", "Elara guards the Luminary Stone."),
    QAPair("Where is the Luminary Stone kept?", "It is kept in the Sanctum of Veyra."),
    QAPair("What do the trees of the Whispering Woods do?", "They whisper old secrets."),
    QAPair("Who trained Elara?", "Orrin Vale trained Elara."),
    QAPair("What is the capital of Eldoria?", "Aurelhaven is the capital."),
    QAPair("Which river runs through Aurelhaven?", "The Silverrun River."),
    QAPair("Who leads the Ashen Legion?", "Malvek the Hollow leads it."),
    QAPair("What coin do merchants use?", "They pay in sunmarks."),
]


def _train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def _corpus() -> list[str]:
    pairs = json.loads((DATA_DIR / "sample.json").read_text())
    texts = [f"Question: {p['prompt']}\nAnswer: {p['response']}" for p in pairs]
    return texts + [f"Question: {p.prompt}\nAnswer: {p.response}" for p in TINY_PAIRS]


def _build(kind: str, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    tokenizer = _train_tokenizer(_corpus())
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos)
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=eos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer, saved as a model folder."""
    return _build("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama (the bundled model's family), saved as a model folder."""
    return _build("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request) -> Path:
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


def write_pairs(path: Path, pairs: list[QAPair]) -> Path:
    path.write_text(json.dumps([{"prompt": p.prompt, "response": p.response} for p in pairs]), encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_pairs(tmp_path / "tiny.json", TINY_PAIRS)


@pytest.fixture
def tiny_heldout(tmp_path) -> Path:
    items = [
        {"question": "Who protects the Luminary Stone?", "facts": ["Elara"], "answer": TINY_PAIRS[0].response},
        {"question": "Which city is Eldoria's capital?", "facts": ["Aurelhaven"], "answer": TINY_PAIRS[4].response},
    ]
    path = tmp_path / "tiny-heldout.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


TINY_CONFIG = {"epochs": 40, "learning_rate": 3e-3, "batch_size": 4, "checkpoints": False, "early_stopping_patience": 0}


@pytest.fixture(scope="session")
def trained_tiny(tiny_gpt2, tmp_path_factory):
    """The tiny GPT-2 fine-tuned on TINY_PAIRS and saved as version v0001 of a store."""
    from engine.pipeline import TrainRequest, train_version
    from engine.training import TrainConfig
    from engine.versions import ModelStore

    root = tmp_path_factory.mktemp("store")
    data = write_pairs(root / "tiny.json", TINY_PAIRS)
    store = ModelStore(root / "models")
    request = TrainRequest(data=data, base_model=str(tiny_gpt2), config=TrainConfig(**TINY_CONFIG))
    outcome = train_version(store, request, cache_dir=root / "cache", device="cpu")
    return store, outcome
