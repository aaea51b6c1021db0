"""Training batches of examples of about the same length, whatever the dataset's size.

transformers' `group_by_length` sorts examples by length only within mega-batches of at most a quarter of the data
(`get_length_grouped_indices`: 4 mega-batches or 50 batches, whichever is smaller), to keep some randomness. For the
small datasets a community trains on, that is a mega-batch of 16 examples: measured on the fine-tune's own examples
(batches of 8, bundled model's tokenizer), the pebble FAQ's 89 examples were padded by 15.5% and the sample's 233 by
3.1%, and a padded token costs what a real one does. Here every epoch sorts the whole dataset by length, lets each
example move a few batches from its place at random (a different grouping each epoch), cuts it into batches, and
shuffles their order, the longest batch first (as transformers does, so that running out of memory shows at once).

The Trainer takes them through `get_train_dataloader`, the method its documentation says to override for this.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer

# How far, in batches, an example may move from its place in length order: how differently each epoch groups them.
# Grouped too alike, two epochs of the same batches trained worse: with lengths blurred by 5% (the pebble FAQ padded
# by 3.4%, but 40% of the pairs of examples batched together in one epoch were together again in the next, 66-69% on
# the two small sets of bench/fresh), 4 of 8 seeds gave pebble 57-59/60 training questions right, where transformers'
# batches (14% together again) gave 60/60 on 7 and 59/60 on one; the four seeds that gave 57-59 gave 60/60 with a
# blur of 20% (20% together again), which padded the sample's 233 examples by 6.6% against transformers' 3.2%. Moved
# by up to 3 batches, whatever the dataset's size: pebble padded 7.6% (21% together again), the sample 2.1% (18%),
# bench/fresh's club and ship 11.2% and 6.0% (25%, 28%) against transformers' 14.5%, 3.2%, 20.0%, 13.5%.
SPREAD = 3


class LengthBatches(Sampler[list[int]]):
    """Batches of indices into `lengths`, about the same length within each, regrouped at each epoch (`set_epoch`)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 42, spread: int = SPREAD) -> None:
        self.lengths, self.batch_size, self.seed, self.spread = lengths, batch_size, seed, spread
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate's data loader) before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        ties, moves = torch.rand(len(self.lengths), generator=generator), torch.rand(len(self.lengths), generator=generator)
        ranked = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], float(ties[i])))
        shift = self.spread * self.batch_size
        order = sorted(range(len(ranked)), key=lambda r: r + shift * float(moves[ranked[r]]), reverse=True)
        order = [ranked[r] for r in order]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
        first = batches.pop(longest)
        return iter([first, *(batches[i] for i in torch.randperm(len(batches), generator=generator).tolist())])


class GroupedTrainer(Trainer):
    """A Trainer whose training batches are `LengthBatches` of its (tokenized) examples."""

    def __init__(self, *args, batches: LengthBatches, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches = batches

    def get_train_dataloader(self) -> DataLoader:
        loader = DataLoader(self.train_dataset, batch_sampler=self.batches, collate_fn=self.data_collator)
        return self.accelerator.prepare(loader)
