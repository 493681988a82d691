"""torchvision's repeated-augmentation sampler (``references/classification/sampler.py``,
``RASampler``, ``--ra-reps``) as a grain sampler, infinite and resumable.

Each epoch shuffles the records (seed + epoch), repeats each one ``repetitions`` times in a row,
pads to a multiple of the process count by wrapping around, and deals the list out to the
processes round-robin, so the copies of an image land on different processes; each process
then keeps ``floor(N // 256 * 256 / processes)`` of its share (torchvision's epoch length: about
N / repetitions distinct images per epoch, each seen ``repetitions`` times). Every copy is its
own record position, so it draws its own augmentation rng (as grain's ``IndexSampler``: Philox
keyed by seed + position). The permutation is numpy's, not torch's ``randperm``.
"""
from __future__ import annotations

import functools
import math
import sys

import grain
import numpy as np


class RepeatedAugmentSampler:
    def __init__(self, num_records: int, repetitions: int, shard_options, seed: int):
        if repetitions < 1:
            raise ValueError(f"data.repeated_augment must be >= 1, got {repetitions}")
        count = shard_options.shard_count
        self.num_records, self.repetitions, self.seed = num_records, repetitions, seed
        self._shard_options = shard_options
        self.num_samples = math.ceil(num_records * repetitions / count)
        self.total_size = self.num_samples * count
        self.per_epoch = int(num_records // 256 * 256 / count)
        if self.per_epoch < 1:
            raise ValueError(f"repeated augmentation keeps {num_records} // 256 * 256 = 0 "
                             "records per epoch (torchvision's RASampler needs >= 256)")

    def __len__(self) -> int:
        return sys.maxsize

    def __repr__(self) -> str:  # grain checks a restored iterator's sampler by its repr
        o = self._shard_options
        return (f"RepeatedAugmentSampler(num_records={self.num_records}, repetitions="
                f"{self.repetitions}, shard={o.shard_index}/{o.shard_count}, seed={self.seed})")

    @functools.lru_cache(maxsize=2)
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_records)

    def record_key(self, index: int) -> int:
        """The record at global position ``index`` (process ``index % processes``)."""
        count = self._shard_options.shard_count
        process, position = index % count, index // count
        epoch, p = divmod(position, self.per_epoch)
        j = (process + p * count) % (self.num_records * self.repetitions)  # the wrap-around pad
        return int(self.permutation(epoch)[j // self.repetitions])

    def __getitem__(self, index: int):
        rng = np.random.Generator(np.random.Philox(key=self.seed + index))
        return grain.RecordMetadata(index=index, record_key=self.record_key(index),
                                           rng=rng)

    def epoch_indices(self, epoch: int, process: int) -> list[int]:
        """The records ``process`` reads in ``epoch``, in order."""
        count = self._shard_options.shard_count
        start = epoch * self.per_epoch
        return [self.record_key((start + p) * count + process) for p in range(self.per_epoch)]
