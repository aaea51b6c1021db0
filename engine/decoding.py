"""A batched decoding loop that drops finished answers from the batch as it goes.

`model.generate` keeps every sequence in the batch until the longest one ends, so a batch of short
answers pays for its longest one on every row. Here each answer leaves the batch (and the KV cache)
as soon as it ends, so a batch costs about the tokens it really produces.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache


def supports_pruned_decoding(model: Any) -> bool:
    """Decoder-only models with a standard dynamic KV cache and `logits_to_keep`."""
    params = inspect.signature(model.forward).parameters
    config = model.config
    return (
        not getattr(config, "is_encoder_decoder", False)
        and not getattr(model, "_is_stateful", False)
        and "logits_to_keep" in params
        and "position_ids" in params
    )


def _cache_keyword(model: Any) -> str:
    """Newer transformers call the KV cache argument `cache`; earlier 5.x releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    should_stop: Callable[[int, list[int]], bool],
    pick: Callable[[torch.Tensor], torch.Tensor],
) -> list[list[int]]:
    """Generate up to `max_new_tokens` per row of a left-padded batch; returns each row's new ids.

    A row ends at EOS (kept in its ids) or when `should_stop(row, ids)` is true; `pick` turns the
    last-position logits (rows x vocab) into next token ids.
    """
    rows = input_ids.shape[0]
    produced: list[list[int]] = [[] for _ in range(rows)]
    active = torch.arange(rows, device=input_ids.device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    cache_arg = {_cache_keyword(model): cache}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        **cache_arg,
        use_cache=True,
        logits_to_keep=1,
    )
    next_pos = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        tokens = pick(out.logits[:, -1, :].float())
        keep = []
        for i, (row, token) in enumerate(zip(active.tolist(), tokens.tolist(), strict=True)):
            produced[row].append(token)
            if token != eos_token_id and not should_stop(row, produced[row]):
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            active, tokens, attention_mask, next_pos = active[index], tokens[index], attention_mask[index], next_pos[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_pos,
            **cache_arg,
            use_cache=True,
            logits_to_keep=1,
        )
        next_pos = next_pos + 1
    return produced
