"""A batch that lost every image is skipped on every rank together (a rank stepping alone would hang DDP)."""

from __future__ import annotations

import pytest
import torch

from simsearch.training.engine import _skip_batch


class TwoRanks:
    """An Accelerator stand-in for one of two processes: ``reduce`` adds the other rank's value."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, other_empty: bool) -> None:
        self.other = float(other_empty)
        self.reduced: list[str] = []

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        self.reduced.append(reduction)
        return tensor + self.other


class OneRank:
    num_processes = 1
    device = torch.device("cpu")

    def reduce(self, tensor, reduction="sum"):
        raise AssertionError("one process needs no collective")


@pytest.mark.parametrize("mine, other, skipped", [
    (False, False, False), (True, False, True), (False, True, True), (True, True, True)])
def test_two_ranks_agree(mine: bool, other: bool, skipped: bool) -> None:
    acc = TwoRanks(other)
    assert _skip_batch(mine, acc) is skipped and acc.reduced == ["sum"]


def test_one_process_decides_alone() -> None:
    assert _skip_batch(True, OneRank()) is True and _skip_batch(False, OneRank()) is False
