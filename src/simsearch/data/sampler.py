"""Batch samplers: P-K batches for metric losses, pair batches for Siamese training.

Metric losses need several images of a class in one batch (positives) and many
classes (negatives); random batches from thousands of classes contain almost no
positives. Siamese losses instead compare two images at a time, so their batches are
pairs with a chosen share of same-class pairs.

Both samplers are self-contained for multi-process training: give each rank its own
instance with its ``rank``/``num_replicas`` and do not pass the DataLoader through
``accelerator.prepare`` (which would shard the batches a second time). Both share the
epoch, seed, rank and resume logic of :class:`EpochBatchSampler`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import Sampler

__all__ = ["EpochBatchSampler", "PKSampler", "PairSampler", "SAMPLERS", "build_batch_sampler"]

SAMPLERS = ("pk", "pairs")


class EpochBatchSampler(Sampler[list[int]]):
    """Epoch plan = a pure function of (seed, epoch); batch i goes to rank i % num_replicas.

    Subclasses give ``epoch_batches(epoch)`` (all ranks' batches, padded to a multiple of
    num_replicas so that DDP sees equal step counts) and ``_num_global_batches()``.

    Resuming: ``state_dict()`` = {seed, epoch, start_batch, num_replicas}, where
    start_batch counts the batches this rank's iterator has handed out this epoch. A
    DataLoader with workers takes batches ahead of the training loop (up to
    num_workers * prefetch_factor), so with workers save the loop's own count of
    finished steps as start_batch. Iterating to the end of an epoch moves on to the
    next epoch; call ``set_epoch(epoch)`` at the start of each epoch anyway.
    """

    kind = ""  # the data.sampler value; recorded in the state of all samplers but the original P-K

    def __init__(self, seed: int, num_replicas: int, rank: int) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.start_batch = 0

    def _num_global_batches(self) -> int:
        raise NotImplementedError

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

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
        state = {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch,
                 "num_replicas": self.num_replicas}
        if self.kind != "pk":  # P-K states predate this key; a missing key means pk
            state["sampler"] = self.kind
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration skips the ``start_batch`` batches already used."""
        saved_kind = state.get("sampler", "pk")
        if saved_kind != self.kind:
            raise ValueError(f"sampler state was saved with data.sampler={saved_kind}, "
                             f"cannot resume with data.sampler={self.kind}")
        saved = state.get("num_replicas", self.num_replicas)
        if saved != self.num_replicas:
            raise ValueError(f"sampler state was saved with num_replicas={saved}, "
                             f"cannot resume with {self.num_replicas}")
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.start_batch = int(state.get("start_batch", 0))


class PKSampler(EpochBatchSampler):
    """Batch sampler yielding lists of P*K dataset indices, grouped class by class.

    Epoch order: the classes are shuffled and cut into groups of P; an incomplete last
    group is filled with other randomly chosen classes (drop_last=True, every batch is
    full) or yielded short (drop_last=False). A class gives K images without
    replacement, or, with fewer than K, all of its images plus random repeats.

    The order is a pure function of (seed, epoch). Batch i of the epoch goes to rank
    i % num_replicas; extra random batches pad the epoch so that every rank gets
    ``len(self)`` batches (DDP needs equal step counts). Resume: see EpochBatchSampler.
    """

    kind = "pk"

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
        super().__init__(seed, num_replicas, rank)
        groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            groups[int(label)].append(index)
        if len(groups) < p:
            raise ValueError(f"P={p} classes per batch, but the data has only {len(groups)} "
                             "classes; lower train.batch_p")
        self.classes = sorted(groups)
        self._members = [np.asarray(groups[c], dtype=np.int64) for c in self.classes]
        self.p, self.k = p, k
        self.drop_last = drop_last
        # Passes over all classes per epoch. Auto: enough that an epoch draws about as many
        # images as the data holds (fast-reid's identity sampler does the same), instead of
        # one pass that would see only C*K images however large each class is.
        one_pass = math.ceil(len(self.classes) / p)
        self.rounds = rounds or max(1, round(len(labels) / (p * k) / one_pass))

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


class PairSampler(EpochBatchSampler):
    """Batches of image pairs for Siamese losses, flat as ``[a0, b0, a1, b1, ...]``.

    Pair i of a batch sits at positions (2i, 2i+1); a pair-aware collate keeps that
    alignment when an image is unreadable (it drops the whole pair). A share
    ``pos_ratio`` of the pairs are same-class (positive) pairs: each batch holds
    floor(pos_ratio * pairs) positives plus one more with probability equal to the
    remainder, so the share over an epoch matches ``pos_ratio`` and no batch is more
    than one pair off it. Positives and negatives are shuffled together.

    Positive pair: an anchor taken in turn from shuffled passes over the images whose
    class has at least 2 images, and another image of its class, uniformly. Negative
    pair: an anchor from shuffled passes over all images, and an image of another class,
    uniformly over images. Taking anchors in passes means every image is an anchor
    about equally often. An epoch has round(N / (2 * pairs)) batches (at least one), so
    it draws about as many images as the data holds, padded to a multiple of
    num_replicas as in PKSampler.
    """

    kind = "pairs"

    def __init__(
        self,
        labels: Sequence[int],
        pairs: int,
        pos_ratio: float = 0.5,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if pairs < 1:
            raise ValueError(f"data.pairs_per_batch must be >= 1, got {pairs}")
        if not 0.0 <= pos_ratio <= 1.0:
            raise ValueError(f"data.pair_pos_ratio must be in [0, 1], got {pos_ratio}")
        self.labels = np.asarray(labels, dtype=np.int64)
        # Images sorted by class: class c occupies order[start[c]:start[c] + size[c]].
        self._order = np.argsort(self.labels, kind="stable")
        classes, self._start, self._size = np.unique(self.labels[self._order], return_index=True,
                                                     return_counts=True)
        self._class_pos = {int(c): i for i, c in enumerate(classes)}
        self._rank_in_class = np.empty(len(self.labels), dtype=np.int64)
        self._rank_in_class[self._order] = np.arange(len(self.labels)) - np.repeat(self._start, self._size)
        self._pos_anchors = np.flatnonzero(self._size[self._class_index(self.labels)] >= 2)
        if pos_ratio > 0 and len(self._pos_anchors) == 0:
            raise ValueError("data.pair_pos_ratio > 0 needs a class with at least 2 images; "
                             "every class has one")
        if pos_ratio < 1 and len(classes) < 2:
            raise ValueError("data.pair_pos_ratio < 1 needs negative pairs, but the data has "
                             "only one class")
        self.pairs, self.pos_ratio = pairs, pos_ratio

    def _class_index(self, images: np.ndarray) -> np.ndarray:
        return np.asarray([self._class_pos[int(c)] for c in images], dtype=np.int64)

    def _num_global_batches(self) -> int:
        batches = max(1, round(len(self.labels) / (2 * self.pairs)))
        return math.ceil(batches / self.num_replicas) * self.num_replicas

    def _partner(self, anchor: int, positive: bool, rng: np.random.Generator) -> int:
        """Another image of the anchor's class, or an image of another class (uniform)."""
        c = self._class_pos[int(self.labels[anchor])]
        start, size = int(self._start[c]), int(self._size[c])
        if positive:  # skip the anchor itself
            r = int(rng.integers(size - 1))
            r += r >= self._rank_in_class[anchor]
            return int(self._order[start + r])
        r = int(rng.integers(len(self.labels) - size))  # skip the anchor's class block
        return int(self._order[r + size if r >= start else r])

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` over all ranks (batch i belongs to rank i % num_replicas)."""
        rng = np.random.default_rng([self.seed, epoch])
        pools = {True: self._pos_anchors, False: np.arange(len(self.labels))}
        queues: dict[bool, list[int]] = {True: [], False: []}

        def next_anchor(positive: bool) -> int:
            if not queues[positive]:
                queues[positive] = rng.permutation(pools[positive]).tolist()
            return queues[positive].pop()

        whole, frac = divmod(self.pos_ratio * self.pairs, 1.0)
        batches = []
        for _ in range(self._num_global_batches()):
            n_pos = int(whole) + int(rng.random() < frac)
            kinds = rng.permutation([True] * n_pos + [False] * (self.pairs - n_pos))
            batch: list[int] = []
            for positive in kinds:
                anchor = next_anchor(bool(positive))
                batch += [anchor, self._partner(anchor, bool(positive), rng)]
            batches.append(batch)
        return batches


def build_batch_sampler(cfg: DictConfig, labels: Sequence[int], num_replicas: int = 1,
                        rank: int = 0) -> EpochBatchSampler:
    """The training batch sampler named by ``data.sampler``, sized by train.batch_p/batch_k.

    ``pairs`` batches hold ``data.pairs_per_batch`` pairs, by default as many images as a
    P-K batch (batch_p * batch_k / 2 pairs), so switching samplers keeps the batch size.
    """
    d, t = cfg.data, cfg.train
    if d.sampler == "pk":
        return PKSampler(labels, t.batch_p, t.batch_k, seed=cfg.seed, num_replicas=num_replicas,
                         rank=rank, rounds=d.pk_rounds)
    if d.sampler == "pairs":
        pairs = d.pairs_per_batch if d.pairs_per_batch is not None else (t.batch_p * t.batch_k) // 2
        return PairSampler(labels, pairs, d.pair_pos_ratio, seed=cfg.seed, num_replicas=num_replicas,
                           rank=rank)
    raise ValueError(f"data.sampler: unknown sampler '{d.sampler}' (choose one of {', '.join(SAMPLERS)})")
