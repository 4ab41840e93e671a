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
    sampler = PKSampler(LABELS, P, K, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # ceil(10 classes / 4)
    for batch in batches:
        assert len(batch) == P * K
        counts = Counter(_classes_of(batch))
        assert len(counts) == P and set(counts.values()) == {K}


def test_every_class_every_epoch() -> None:
    sampler = PKSampler(LABELS, P, K, seed=5)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen = {c for batch in sampler for c in _classes_of(batch)}
        assert seen == set(range(len(SIZES)))


def test_small_class_sampled_with_replacement() -> None:
    """Class 0 (2 images, K=3) and class 9 (1 image) repeat images; larger ones do not."""
    members = {c: {i for i, y in enumerate(LABELS) if y == c} for c in range(len(SIZES))}
    for batch in PKSampler(LABELS, P, K, seed=1):
        for c in set(_classes_of(batch)):
            picked = [i for i in batch if LABELS[i] == c]
            assert set(picked) <= members[c]
            if len(members[c]) >= K:
                assert len(set(picked)) == K
            else:  # every image of the class, plus repeats
                assert set(picked) == members[c]


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = PKSampler(LABELS, P, K, seed=7), PKSampler(LABELS, P, K, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    first = list(a)
    assert first == list(b)
    a.set_epoch(3)
    assert list(a) != first
    a.set_epoch(2)
    assert list(a) == first
    assert list(PKSampler(LABELS, P, K, seed=8)) != list(PKSampler(LABELS, P, K, seed=7))


def test_iteration_moves_to_next_epoch() -> None:
    sampler = PKSampler(LABELS, P, K, seed=0)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sampler.epoch == 2 and epoch0 != epoch1
    assert epoch1 == PKSampler(LABELS, P, K, seed=0).epoch_batches(1)


def test_ranks_get_disjoint_equal_shares_covering_all_classes() -> None:
    # 10 classes with P=2 -> 5 batches, padded to 6 for 2 ranks
    ranks = [PKSampler(LABELS, 2, K, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0]) == 3
    assert not {tuple(b) for b in b0} & {tuple(b) for b in b1}
    assert b0 == ranks[0].epoch_batches(1)[0::2] and b1 == ranks[1].epoch_batches(1)[1::2]
    seen = {c for batch in b0 + b1 for c in _classes_of(batch)}
    assert seen == set(range(len(SIZES)))


def test_resume_from_state_dict() -> None:
    sampler = PKSampler(LABELS, 2, K, seed=11)  # 5 batches per epoch
    sampler.set_epoch(4)
    full = sampler.epoch_batches(4)
    iterator = iter(sampler)
    done = [next(iterator) for _ in range(3)]
    state = sampler.state_dict()
    assert state == {"seed": 11, "epoch": 4, "start_batch": 3, "num_replicas": 1}

    resumed = PKSampler(LABELS, 2, K, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a training loop calls this at the top of the epoch: no reset
    assert done + list(resumed) == full
    assert resumed.state_dict()["epoch"] == 5 and resumed.state_dict()["start_batch"] == 0
    with pytest.raises(ValueError, match="num_replicas=1"):
        PKSampler(LABELS, 2, K, num_replicas=2).load_state_dict(state)


def test_short_last_batch_without_drop_last() -> None:
    batches = list(PKSampler(LABELS, P, K, seed=0, drop_last=False))
    assert [len(b) for b in batches] == [P * K, P * K, 2 * K]
    assert Counter(c for b in batches for c in _classes_of(b)) == dict.fromkeys(range(10), K)


def test_rejects_impossible_configuration() -> None:
    with pytest.raises(ValueError, match="only 10 classes"):
        PKSampler(LABELS, 11, K)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(LABELS, P, K, num_replicas=2, rank=2)


class _Indices(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, index: int) -> int:
        return index


def test_works_as_dataloader_batch_sampler() -> None:
    sampler = PKSampler(LABELS, P, K, seed=2)
    loader = DataLoader(_Indices(), batch_sampler=sampler)
    assert len(loader) == 3
    batches = [b.tolist() for b in loader]
    assert all(isinstance(b, list) and len(b) == P * K for b in batches)
    assert batches == PKSampler(LABELS, P, K, seed=2).epoch_batches(0)
    assert torch.is_tensor(next(iter(loader)))
