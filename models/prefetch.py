"""Training batches, drawn in the training loop or ahead of it by worker processes.

Every training batch is a pure function of (seed, step) (:mod:`lab.streams`), so workers
can draw them in any process, ahead of time, and the loop gets exactly the batches it
would draw itself. Drawing a batch is many small CPU operations (a task steps its
environments one position at a time); with ``workers`` > 0 a ``torch.utils.data.DataLoader``
draws them in that many processes, in step order, while the loop trains.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from lab.streams import TRAIN, generator
from tasks import Batch, Task

PREFETCH = 4
"""Steps each worker draws ahead."""


class _StepBatches(Dataset):
    """Item ``step``: each seed's training batch of that step, ``{seed: Batch}``."""

    def __init__(self, task: Task, seeds: list[int], batch_size: int):
        self.task, self.seeds, self.batch_size = task, seeds, batch_size

    def __getitem__(self, step: int) -> dict[int, Batch]:
        return {
            seed: self.task.sample(self.batch_size, generator(seed, TRAIN, step))
            for seed in self.seeds
        }


def training_batches(
    task: Task, seeds: list[int], batch_size: int, steps: range, workers: int = 0
) -> Iterator[dict[int, Batch]]:
    """Each step's ``{seed: training batch}``, for ``steps`` in order; drawn here when
    ``workers`` is 0, else by that many worker processes ahead of the loop."""
    dataset = _StepBatches(task, list(seeds), batch_size)
    if workers == 0:
        for step in steps:
            yield dataset[step]
        return
    loader = DataLoader(
        dataset,
        batch_size=None,  # items are whole steps
        sampler=steps,
        num_workers=workers,
        prefetch_factor=PREFETCH,
        generator=torch.Generator(),  # the workers' base seed: not from the global RNG
    )
    yield from loader
