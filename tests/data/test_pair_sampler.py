"""PairSampler: positive share, honest pairs, determinism, coverage, ranks, resume, config switch."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from conftest import CONFIGS
from simsearch.config import load
from simsearch.data.sampler import PairSampler, PKSampler, build_batch_sampler

# 8 classes of unequal sizes (2..9 images): 44 images.
SIZES = [2, 3, 4, 5, 6, 7, 8, 9]
LABELS = [c for c, n in enumerate(SIZES) for _ in range(n)]


def _pairs(batch: list[int]) -> list[tuple[int, int]]:
    return list(zip(batch[0::2], batch[1::2], strict=True))


def _is_pos(pair: tuple[int, int]) -> bool:
    return LABELS[pair[0]] == LABELS[pair[1]]


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.85])
def test_positive_share_matches_the_ratio(ratio: float) -> None:
    pairs = 7  # ratio * 7 is fractional for all three: each batch holds floor or ceil of it
    sampler = PairSampler(LABELS, pairs, ratio, seed=1)
    n_pos = [sum(map(_is_pos, _pairs(b))) for e in range(150) for b in sampler.epoch_batches(e)]
    assert set(n_pos) == {math.floor(ratio * pairs), math.ceil(ratio * pairs)}
    # 450 batches: the share's standard error is below 0.005, so 0.02 is four of them
    assert abs(np.mean(n_pos) / pairs - ratio) < 0.02


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_every_pair_is_what_it_claims(ratio: float) -> None:
    for batch in PairSampler(LABELS, 5, ratio, seed=2).epoch_batches(0):
        assert len(batch) == 10
        for a, b in _pairs(batch):
            assert a != b  # a positive pair is two different images of one class
            if ratio == 1.0:
                assert _is_pos((a, b))
            if ratio == 0.0:
                assert not _is_pos((a, b))


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = PairSampler(LABELS, 4, seed=7), PairSampler(LABELS, 4, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    first = list(a)
    assert first == list(b) == PairSampler(LABELS, 4, seed=7).epoch_batches(3)
    assert a.epoch_batches(4) != first
    assert PairSampler(LABELS, 4, seed=8).epoch_batches(3) != first


def test_an_epoch_draws_about_the_data_and_anchors_do_not_repeat() -> None:
    # 44 images, 2 pairs per batch: 11 batches = 44 images, 22 of them anchors, all different
    # (anchors come from a shuffled pass over the images, so none repeats within a pass)
    sampler = PairSampler(LABELS, 2, 0.0, seed=4)
    batches = sampler.epoch_batches(0)
    assert len(batches) == len(sampler) == 11
    anchors = [p[0] for b in batches for p in _pairs(b)]
    assert len(anchors) == len(set(anchors)) == 22


def test_negative_partners_are_uniform_over_other_classes_images() -> None:
    # Partner of an anchor of class 0 (2 images): each of the 42 other images is equally likely.
    labels = [0, 0] + [1] * 40 + [2] * 2
    sampler = PairSampler(labels, 22, 0.0, seed=0)
    partners = Counter(b for e in range(600) for batch in sampler.epoch_batches(e)
                       for a, b in _pairs(batch) if labels[a] == 2)
    by_class = Counter(labels[i] for i in partners.elements())
    assert by_class[2] == 0
    assert by_class[1] / (by_class[0] + by_class[1]) == pytest.approx(40 / 42, abs=0.03)


def test_resume_from_state_dict_and_sampler_kind() -> None:
    sampler = PairSampler(LABELS, 2, seed=11)
    sampler.set_epoch(2)
    full = sampler.epoch_batches(2)
    it = iter(sampler)
    done = [next(it) for _ in range(4)]
    state = sampler.state_dict()
    assert state == {"seed": 11, "epoch": 2, "start_batch": 4, "num_replicas": 1, "sampler": "pairs"}
    resumed = PairSampler(LABELS, 2, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert done + list(resumed) == full
    with pytest.raises(ValueError, match="data.sampler=pairs, cannot resume with data.sampler=pk"):
        PKSampler(LABELS, 2, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="data.sampler=pk, cannot resume with data.sampler=pairs"):
        resumed.load_state_dict(PKSampler(LABELS, 2, 2).state_dict())


def test_ranks_get_disjoint_equal_shares() -> None:
    ranks = [PairSampler(LABELS, 4, seed=3, num_replicas=2, rank=r) for r in range(2)]
    # round(44 / 8) = 6 batches, already a multiple of 2
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0]) == 3
    full = ranks[0].epoch_batches(0)
    assert b0 == full[0::2] and b1 == full[1::2]


class _Indices(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, index: int) -> int:
        return index


def test_works_as_dataloader_batch_sampler() -> None:
    loader = DataLoader(_Indices(), batch_sampler=PairSampler(LABELS, 3, seed=2))
    assert [b.tolist() for b in loader] == PairSampler(LABELS, 3, seed=2).epoch_batches(0)


def test_impossible_configurations_name_the_key() -> None:
    with pytest.raises(ValueError, match="data.pair_pos_ratio must be in"):
        PairSampler(LABELS, 3, 1.5)
    with pytest.raises(ValueError, match="data.pairs_per_batch"):
        PairSampler(LABELS, 0)
    with pytest.raises(ValueError, match="only one class"):
        PairSampler([0, 0, 0], 2, 0.5)
    PairSampler([0, 0, 0], 2, 1.0)  # positives only: one class is enough
    with pytest.raises(ValueError, match="at least 2 images"):
        PairSampler([0, 1, 2], 2, 0.5)


def test_config_switch_builds_the_named_sampler() -> None:
    tiny = CONFIGS / "tiny_test.yaml"  # batch_p 4, batch_k 2
    assert isinstance(build_batch_sampler(load([tiny]), LABELS), PKSampler)
    pairs = build_batch_sampler(load([tiny], ["data.sampler=pairs", "data.pair_pos_ratio=0.25"]), LABELS)
    assert isinstance(pairs, PairSampler) and pairs.pairs == 4 and pairs.pos_ratio == 0.25
    assert build_batch_sampler(load([tiny], ["data.sampler=pairs", "data.pairs_per_batch=6"]), LABELS).pairs == 6
    with pytest.raises(ValueError, match="data.sampler: unknown sampler 'triples'"):
        build_batch_sampler(load([tiny], ["data.sampler=triples"]), LABELS)
