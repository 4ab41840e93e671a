"""build_transforms: shapes, determinism of eval, normalisation with the given mean/std."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from simsearch.data.transforms import build_transforms

MEAN, STD = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)


def _photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("train", [True, False])
def test_shape_and_dtype(train: bool) -> None:
    transform = build_transforms(32, MEAN, STD, train=train)
    for h, w in [(48, 64), (20, 90), (300, 31)]:
        out = transform(_photo(h, w))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_eval_is_deterministic_and_centre_crops() -> None:
    transform = build_transforms(32, MEAN, STD, train=False, resize_ratio=1.0)
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, 16:48] = 255  # white centre square, black side bands
    out = transform(image)
    assert torch.equal(out, transform(image))
    # resize_ratio=1 keeps 32x64 and the 32x32 centre crop is all white: (1 - m) / s
    expected = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)])
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_normalisation_uses_given_mean_and_std() -> None:
    """A constant image of value mean*255 normalises to ~0 in every channel."""
    image = np.empty((40, 40, 3), dtype=np.uint8)
    image[:] = [round(m * 255) for m in MEAN]  # 51, 102, 153
    for train in (True, False):
        out = build_transforms(24, MEAN, STD, train=train, color_jitter=0.0)(image)
        torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-4, rtol=0)


def test_train_is_random_and_hflip_zero_respected() -> None:
    transform = build_transforms(32, MEAN, STD, train=True)
    image = _photo()
    assert not torch.equal(transform(image), transform(image))
    steps = [type(t).__name__ for t in transform.pipeline.transforms]
    assert steps == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter", "Normalize",
                     "ToTensorV2"]
    bare = build_transforms(32, MEAN, STD, train=True, hflip=0.0, color_jitter=0.0)
    assert [type(t).__name__ for t in bare.pipeline.transforms] == [
        "RandomResizedCrop", "Normalize", "ToTensorV2"]


def test_bad_arguments_and_input() -> None:
    with pytest.raises(ValueError, match="std"):
        build_transforms(32, MEAN, (0.1, 0.0, 0.2), train=False)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        build_transforms(32, MEAN, STD, train=False)(np.zeros((8, 8), dtype=np.uint8))


def test_picklable() -> None:
    transform = build_transforms(16, MEAN, STD, train=False)
    image = _photo()
    assert torch.equal(pickle.loads(pickle.dumps(transform))(image), transform(image))


class _SameImage(Dataset):
    def __init__(self) -> None:
        self.transform = build_transforms(16, MEAN, STD, train=True)
        self.image = _photo()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)


def test_workers_do_not_repeat_each_others_augmentations() -> None:
    """Forked workers would share albumentations' random state without reseeding."""
    loader = DataLoader(_SameImage(), batch_size=1, num_workers=2)
    first, second = list(loader)[:2]  # item 0 from worker 0, item 1 from worker 1
    assert not torch.equal(first, second)


def test_eval_transform_follows_the_config_and_the_backbone():
    """The one eval pipeline: data.image_size (else the backbone's size), its mean/std, the resize ratio."""
    from simsearch.config import load
    from simsearch.data.transforms import eval_transform
    from simsearch.models.backbones import DataConfig

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    dc = DataConfig(48, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    own = eval_transform(load([], ["data.eval_resize_ratio=1.3"]), dc)(img)
    assert own.shape == (3, 48, 48)
    by_hand = build_transforms(48, dc.mean, dc.std, train=False, resize_ratio=1.3)(img)
    assert torch.equal(own, by_hand)
    assert not torch.equal(own, build_transforms(48, dc.mean, dc.std, train=False, resize_ratio=1.0)(img))
    assert eval_transform(load([], ["data.image_size=32"]), dc)(img).shape == (3, 32, 32)
