"""PKSampler: P classes x K images, full class coverage, determinism, ranks, resume."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from simsearch.data.sampler import PKSampler

# 10 classes; class c has c + 2 images except class 9, which has a single image.
SIZES = [c + 2 for c in range(9)] + [1]
LABELS = [c for c, n in enumerate(SIZES) for _ in range(n)]
P, K = 4, 3


def _classes_of(batch: list[int]) -> list[int]:
    return [LABELS[i] for i in batch]


def test_batches_are_p_classes_times_k_images() -> None:
    sampler = PKSampler(LABELS, P, K, rounds=1, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # ceil(10 classes / 4)
    for batch in batches:
        assert len(batch) == P * K
        counts = Counter(_classes_of(batch))
        assert len(counts) == P and set(counts.values()) == {K}


def test_every_class_every_epoch() -> None:
    sampler = PKSampler(LABELS, P, K, rounds=1, seed=5)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen = {c for batch in sampler for c in _classes_of(batch)}
        assert seen == set(range(len(SIZES)))


def test_small_class_sampled_with_replacement() -> None:
    """Class 0 (2 images, K=3) and class 9 (1 image) repeat images; larger ones do not."""
    members = {c: {i for i, y in enumerate(LABELS) if y == c} for c in range(len(SIZES))}
    for batch in PKSampler(LABELS, P, K, rounds=1, seed=1):
        for c in set(_classes_of(batch)):
            picked = [i for i in batch if LABELS[i] == c]
            assert set(picked) <= members[c]
            if len(members[c]) >= K:
                assert len(set(picked)) == K
            else:  # every image of the class, plus repeats
                assert set(picked) == members[c]


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = PKSampler(LABELS, P, K, rounds=1, seed=7), PKSampler(LABELS, P, K, rounds=1, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    first = list(a)
    assert first == list(b)
    a.set_epoch(3)
    assert list(a) != first
    a.set_epoch(2)
    assert list(a) == first
    assert list(PKSampler(LABELS, P, K, rounds=1, seed=8)) != list(PKSampler(LABELS, P, K, rounds=1, seed=7))


def test_iteration_moves_to_next_epoch() -> None:
    sampler = PKSampler(LABELS, P, K, rounds=1, seed=0)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sampler.epoch == 2 and epoch0 != epoch1
    assert epoch1 == PKSampler(LABELS, P, K, rounds=1, seed=0).epoch_batches(1)


def test_ranks_get_disjoint_equal_shares_covering_all_classes() -> None:
    # 10 classes with P=2 -> 5 batches, padded to 6 for 2 ranks
    ranks = [PKSampler(LABELS, 2, K, rounds=1, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0]) == 3
    assert not {tuple(b) for b in b0} & {tuple(b) for b in b1}
    assert b0 == ranks[0].epoch_batches(1)[0::2] and b1 == ranks[1].epoch_batches(1)[1::2]
    seen = {c for batch in b0 + b1 for c in _classes_of(batch)}
    assert seen == set(range(len(SIZES)))


def test_resume_from_state_dict() -> None:
    sampler = PKSampler(LABELS, 2, K, rounds=1, seed=11)  # 5 batches per epoch
    sampler.set_epoch(4)
    full = sampler.epoch_batches(4)
    iterator = iter(sampler)
    done = [next(iterator) for _ in range(3)]
    state = sampler.state_dict()
    assert state == {"seed": 11, "epoch": 4, "start_batch": 3, "num_replicas": 1}

    resumed = PKSampler(LABELS, 2, K, rounds=1, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a training loop calls this at the top of the epoch: no reset
    assert done + list(resumed) == full
    assert resumed.state_dict()["epoch"] == 5 and resumed.state_dict()["start_batch"] == 0
    with pytest.raises(ValueError, match="num_replicas=1"):
        PKSampler(LABELS, 2, K, rounds=1, num_replicas=2).load_state_dict(state)


def test_short_last_batch_without_drop_last() -> None:
    batches = list(PKSampler(LABELS, P, K, rounds=1, seed=0, drop_last=False))
    assert [len(b) for b in batches] == [P * K, P * K, 2 * K]
    assert Counter(c for b in batches for c in _classes_of(b)) == dict.fromkeys(range(10), K)


def test_rejects_impossible_configuration() -> None:
    with pytest.raises(ValueError, match="only 10 classes"):
        PKSampler(LABELS, 11, K)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(LABELS, P, K, rounds=1, num_replicas=2, rank=2)


class _Indices(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, index: int) -> int:
        return index


def test_works_as_dataloader_batch_sampler() -> None:
    sampler = PKSampler(LABELS, P, K, rounds=1, seed=2)
    loader = DataLoader(_Indices(), batch_sampler=sampler)
    assert len(loader) == 3
    batches = [b.tolist() for b in loader]
    assert all(isinstance(b, list) and len(b) == P * K for b in batches)
    assert batches == PKSampler(LABELS, P, K, rounds=1, seed=2).epoch_batches(0)
    assert torch.is_tensor(next(iter(loader)))


def test_auto_rounds_draw_about_the_whole_dataset_per_epoch() -> None:
    # 40 classes of 20 images, P=8, K=4: one pass is 5 batches (160 images); auto takes
    # round(800 / 32 / 5) = 5 passes, so an epoch draws 800 images, every one of them once.
    labels = [c for c in range(40) for _ in range(20)]
    sampler = PKSampler(labels, 8, 4, seed=0)
    assert sampler.rounds == 5 and len(sampler) == 25
    drawn = [i for batch in sampler.epoch_batches(0) for i in batch]
    assert len(drawn) == 800 and len(set(drawn)) == 800
    for batch in sampler.epoch_batches(0):
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 8 and set(counts.values()) == {4}


def test_repeated_class_wraps_around_with_distinct_images() -> None:
    # class 0 has 5 images, K=4, drawn in 3 rounds: each draw has 4 distinct images and the
    # first 5 draws of an image cover all five before any repeats.
    labels = [0] * 5 + [1] * 5
    sampler = PKSampler(labels, 2, 4, seed=3, rounds=3)
    per_batch = [[i for i in b if labels[i] == 0] for b in sampler.epoch_batches(0)]
    assert all(len(set(b)) == 4 for b in per_batch)
    assert set(per_batch[0] + per_batch[1][:1]) == {0, 1, 2, 3, 4}
