"""A running batch of answers being decoded: questions join between steps, and each answer leaves as it ends.

`model.generate` keeps every sequence in the batch until the longest one ends, and nothing joins a batch once it
started. Here each answer leaves the batch (and the KV cache) as soon as it ends, so a batch costs about the tokens it
really produces, and a question that arrives meanwhile joins at the next step: its prompt is prefilled on its own and
its cache rows are put beside the running ones, the shorter side padded on the left (masked, so no answer changes).
Joining needs every cache layer to be a plain `DynamicLayer` (keys and values of shape batch x heads x length x dim);
a model with other layers (sliding windows, recurrent state) decodes each batch to its end, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from engine.models import forward_takes

Stop = Callable[[Hashable, list[int]], bool]
Pick = Callable[[torch.Tensor], torch.Tensor]


def supports_pruned_decoding(model: Any) -> bool:
    """Decoder-only models with a standard dynamic KV cache and `logits_to_keep`."""
    config = model.config
    return (
        not getattr(config, "is_encoder_decoder", False)
        and not getattr(model, "_is_stateful", False)
        and forward_takes(model, "logits_to_keep", "position_ids")
    )


def cache_keyword(model: Any) -> str:
    """Newer transformers call the KV cache argument `cache`; earlier 5.x releases `past_key_values`."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    """Rows (answers) decoded together; `join` adds rows between steps, `step` decodes one token for every row.

    A row ends at EOS (kept in its ids), at its budget of new tokens, or when `should_stop(key, ids)` is true; `pick`
    turns last-position logits (rows x vocab) into next token ids. Both return the rows that ended, as (key, ids).
    """

    def __init__(self, model: Any, *, eos_token_id: int, should_stop: Stop, pick: Pick) -> None:
        self.model, self.eos, self.should_stop, self.pick = model, eos_token_id, should_stop, pick
        self.cache_keyword = cache_keyword(model)
        self.keys: list[Hashable] = []
        self.produced: dict[Hashable, list[int]] = {}
        self.budgets: dict[Hashable, int] = {}
        self.cache: DynamicCache | None = None
        self.mask = self.tokens = self.next_pos = None
        self.joinable = True  # every cache layer is a plain DynamicLayer (known after the first prefill)

    def __len__(self) -> int:
        return len(self.keys)

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            **{self.cache_keyword: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def join(
        self,
        keys: list[Hashable],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        budgets: list[int],
        first: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[tuple[Hashable, list[int]]]:
        """Prefill left-padded prompts and pick each one's first token (`first` may change the logits of that token
        only); the rows that did not end at once join the batch. Needs `joinable` when rows are running."""
        if self.keys and not self.joinable:
            raise RuntimeError("this model's cache cannot take rows beside running ones")
        cache = DynamicCache(config=self.model.config)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(input_ids, attention_mask, positions, cache)
        tokens = self.pick(first(logits) if first is not None else logits)
        self.joinable = all(type(layer) is DynamicLayer for layer in cache.layers)
        for key, budget in zip(keys, budgets, strict=True):
            self.produced[key], self.budgets[key] = [], max(1, budget)
        ended, keep = self._record(keys, tokens)
        if not keep:
            return ended
        index = torch.tensor(keep, device=input_ids.device)
        if len(keep) < len(keys):
            cache.batch_select_indices(index)
        rows = ([keys[i] for i in keep], attention_mask[index], tokens[index], positions[index, -1:] + 1)
        self._merge(cache, *rows)
        return ended

    def _merge(self, cache: DynamicCache, keys: list[Hashable], mask: Any, tokens: Any, next_pos: Any) -> None:
        """Put new rows (their own cache and mask) beside the running ones; the shorter side is padded on the left."""
        if not self.keys:
            self.cache, self.keys, self.mask, self.tokens, self.next_pos = cache, keys, mask, tokens, next_pos
            return
        old_len, new_len = self.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for running, joining in zip(self.cache.layers, cache.layers, strict=True):
            running.keys = torch.cat([_pad_left(running.keys, width - old_len, -2), _pad_left(joining.keys, width - new_len, -2)])
            running.values = torch.cat(
                [_pad_left(running.values, width - old_len, -2), _pad_left(joining.values, width - new_len, -2)]
            )
        self.mask = torch.cat([_pad_left(self.mask, width - old_len, 1), _pad_left(mask, width - new_len, 1)])
        self.keys = self.keys + keys
        self.tokens = torch.cat([self.tokens, tokens])
        self.next_pos = torch.cat([self.next_pos, next_pos])

    def _record(self, keys: list[Hashable], tokens: torch.Tensor) -> tuple[list[tuple[Hashable, list[int]]], list[int]]:
        """Append each row's token; (the rows that ended with their ids, the positions of those that go on)."""
        ended, keep = [], []
        for i, (key, token) in enumerate(zip(keys, tokens.tolist(), strict=True)):
            ids = self.produced[key]
            ids.append(token)
            if token == self.eos or len(ids) >= self.budgets[key] or self.should_stop(key, ids):
                ended.append((key, self.produced.pop(key)))
                del self.budgets[key]
            else:
                keep.append(i)
        return ended, keep

    def step(self) -> list[tuple[Hashable, list[int]]]:
        """Decode one token for every row; the rows that ended leave the batch and are returned."""
        if not self.keys:
            return []
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.keys), 1))], dim=1)
        logits = self._forward(self.tokens[:, None], self.mask, self.next_pos, self.cache)
        self.next_pos = self.next_pos + 1
        self.tokens = self.pick(logits)
        ended, keep = self._record(self.keys, self.tokens)
        if len(keep) < len(self.keys):
            self._select(keep)
        return ended

    def _select(self, keep: list[int]) -> None:
        """Keep only these rows; drop leading columns that are padding for every row left (a long prompt that ended)."""
        if not keep:
            self.keys, self.cache, self.mask, self.tokens, self.next_pos = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.tokens.device)
        self.cache.batch_select_indices(index)
        self.keys = [self.keys[i] for i in keep]
        self.mask, self.tokens, self.next_pos = self.mask[index], self.tokens[index], self.next_pos[index]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if self.joinable and start * 4 >= self.mask.shape[1]:  # worth a copy: a quarter or more of the cache is padding
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
            self.mask = self.mask[:, start:]


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    should_stop: Stop,
    pick: Pick,
) -> list[list[int]]:
    """Generate up to `max_new_tokens` per row of a left-padded batch that nothing joins; returns each row's new ids."""
    batch = RunningBatch(model, eos_token_id=eos_token_id, should_stop=should_stop, pick=pick)
    rows = list(range(input_ids.shape[0]))
    produced = dict(batch.join(rows, input_ids, attention_mask, [max_new_tokens] * len(rows)))
    while len(batch):
        produced.update(batch.step())
    return [produced[row] for row in rows]


def generate_whole(
    model: Any, tokenizer: Any, batch: Any, sampling: Any, budget: int, *, stopping: Any, gate: Any = None
) -> list[list[int]]:
    """`model.generate` over a left-padded batch that nothing joins (GPUs, where it is faster, and models the running
    batch does not support); each row's new ids."""
    from transformers import LogitsProcessorList

    options: dict[str, Any] = {"do_sample": sampling.do_sample}
    if sampling.do_sample:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    output = model.generate(
        **batch,
        max_new_tokens=budget,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=stopping,
        logits_processor=LogitsProcessorList([gate] if gate is not None else []),
        **options,
    )
    return output[:, batch["input_ids"].shape[1] :].tolist()
