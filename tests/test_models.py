"""Loading models from disk, and the bundled offline model's one-time conversion."""

from __future__ import annotations

import time

import pytest
import torch

from engine.models import BUNDLED, ensure_bundled, load_model, resolve_dtype, resolve_source
from qabot.errors import ModelError


def test_tiny_models_load_through_from_pretrained_with_pad_and_left_padding(tiny_model):
    loaded = load_model(str(tiny_model), device="cpu")
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.eos_token_id
    assert loaded.device.type == "cpu" and loaded.model.dtype == torch.float32
    assert not loaded.model.training


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load a tokenizer"):
        load_model(str(tmp_path / "no-such-model"), device="cpu")


def test_cpu_dtype_is_float32_and_explicit_dtypes_are_honoured():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_cuda_requested_without_a_gpu_names_the_fix(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a host without a GPU, GPU host or not
    with pytest.raises(ModelError, match="QABOT_DEVICE"):
        load_model(str(tiny_gpt2), device="cuda")


@pytest.mark.bundled
def test_bundled_model_converts_once_then_loads_from_the_cache(bundled_model):
    folder, cache = bundled_model  # converted once for the session (the fixture calls ensure_bundled)
    assert ensure_bundled(cache) == folder
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert resolve_source(BUNDLED, cache) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    loaded = load_model(str(folder), device="cpu")
    warm_load = time.monotonic() - started
    assert warm_load < 30
    assert loaded.model.config.model_type == "llama"
    assert 130e6 < sum(p.numel() for p in loaded.model.parameters()) < 140e6
    # The de-quantized weights still know things: a greedy continuation names the capital.
    prompt = loaded.tokenizer("The capital of France is", return_tensors="pt")
    output = loaded.model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(output[0])
