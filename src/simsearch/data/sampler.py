"""P-K batch sampler: P classes x K images per batch, every class in every epoch.

Metric losses need several images of a class in one batch (positives) and many
classes (negatives); random batches from thousands of classes contain almost no
positives. The sampler is self-contained for multi-process training: give each rank
its own instance with its ``rank``/``num_replicas`` and do not pass the DataLoader
through ``accelerator.prepare`` (which would shard the batches a second time).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of P*K dataset indices, grouped class by class.

    Epoch order: the classes are shuffled and cut into groups of P; an incomplete last
    group is filled with other randomly chosen classes (drop_last=True, every batch is
    full) or yielded short (drop_last=False). A class gives K images without
    replacement, or, with fewer than K, all of its images plus random repeats.

    The order is a pure function of (seed, epoch). Batch i of the epoch goes to rank
    i % num_replicas; extra random batches pad the epoch so that every rank gets
    ``len(self)`` batches (DDP needs equal step counts).

    Resuming: ``state_dict()`` = {seed, epoch, start_batch, num_replicas}, where
    start_batch counts the batches this rank's iterator has handed out this epoch. A
    DataLoader with workers takes batches ahead of the training loop (up to
    num_workers * prefetch_factor), so with workers save the loop's own count of
    finished steps as start_batch. Iterating to the end of an epoch moves on to the
    next epoch; call ``set_epoch(epoch)`` at the start of each epoch anyway.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
        rounds: int | None = None,
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            groups[int(label)].append(index)
        if len(groups) < p:
            raise ValueError(f"P={p} classes per batch, but the data has only {len(groups)} "
                             "classes; lower train.batch_p")
        self.classes = sorted(groups)
        self._members = [np.asarray(groups[c], dtype=np.int64) for c in self.classes]
        self.p, self.k = p, k
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank
        self.drop_last = drop_last
        # Passes over all classes per epoch. Auto: enough that an epoch draws about as many
        # images as the data holds (fast-reid's identity sampler does the same), instead of
        # one pass that would see only C*K images however large each class is.
        one_pass = math.ceil(len(self.classes) / p)
        self.rounds = rounds or max(1, round(len(labels) / (p * k) / one_pass))
        self.epoch = 0
        self.start_batch = 0

    # ------------------------------------------------------------------ epoch plan

    def _num_global_batches(self) -> int:
        """Batches of one epoch over all ranks, padded to a multiple of num_replicas."""
        batches = math.ceil(len(self.classes) / self.p) * self.rounds
        return math.ceil(batches / self.num_replicas) * self.num_replicas

    def _class_groups(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Positions (into self.classes) of the classes of each batch of the epoch."""
        n_classes = len(self.classes)
        groups: list[np.ndarray] = []
        for _ in range(self.rounds):
            order = rng.permutation(n_classes)
            part = [order[i:i + self.p] for i in range(0, n_classes, self.p)]
            short = self.p - len(part[-1])
            if short and self.drop_last:
                others = np.setdiff1d(np.arange(n_classes), part[-1])
                part[-1] = np.concatenate([part[-1], rng.choice(others, short, replace=False)])
            groups += part
        while len(groups) < self._num_global_batches():  # padding for equal rank shares
            groups.append(rng.choice(n_classes, self.p, replace=False))
        return groups

    def _pick(self, c: int, rng: np.random.Generator, queues: dict[int, list[int]]) -> np.ndarray:
        """K images of class c; a class with fewer than K gives all + random repeats.

        A class drawn again in a later round continues through one shuffled pass of its
        images before any image repeats.
        """
        members = self._members[c]
        if len(members) < self.k:
            extra = rng.choice(members, self.k - len(members), replace=True)
            return rng.permutation(np.concatenate([members, extra]))
        queue = queues.setdefault(c, [])
        if len(queue) < self.k:
            rest = np.setdiff1d(members, queue)  # keep K distinct when wrapping around
            queue += rng.permutation(rest).tolist()
        picked, queues[c] = queue[:self.k], queue[self.k:]
        return np.asarray(picked, dtype=np.int64)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` over all ranks (batch i belongs to rank i % num_replicas)."""
        rng = np.random.default_rng([self.seed, epoch])
        queues: dict[int, list[int]] = {}
        return [
            [int(i) for c in group for i in self._pick(int(c), rng, queues)]
            for group in self._class_groups(rng)
        ]

    # ------------------------------------------------------------------ Sampler API

    def __len__(self) -> int:
        return self._num_global_batches() // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_batches(self.epoch)[self.rank::self.num_replicas]
        for i in range(self.start_batch, len(mine)):
            self.start_batch = i + 1  # counted as soon as it is handed out
            yield mine[i]
        self.epoch += 1
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a position restored by load_state_dict for it is kept."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.start_batch = 0

    def state_dict(self) -> dict[str, Any]:
        """Where this rank stands: the epoch and the batches already handed out in it."""
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration skips the ``start_batch`` batches already used."""
        saved = state.get("num_replicas", self.num_replicas)
        if saved != self.num_replicas:
            raise ValueError(f"sampler state was saved with num_replicas={saved}, "
                             f"cannot resume with {self.num_replicas}")
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.start_batch = int(state.get("start_batch", 0))
