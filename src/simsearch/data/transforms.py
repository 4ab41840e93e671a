"""Train / eval image transforms (albumentations): HWC uint8 RGB array -> CHW float tensor.

Mean and std are always passed in: they belong to the backbone (CLIP and ImageNet
models differ), so a default here would silently mismatch some backbone.
"""
from __future__ import annotations

from collections.abc import Sequence

# No explicit `import simsearch` needed: the package __init__ (which sets
# NO_ALBUMENTATIONS_UPDATE) always runs before this submodule.
import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2


class ImageTransform:
    """Callable wrapper around an albumentations pipeline (picklable for spawn workers).

    albumentations' Compose owns its random state, so forked DataLoader workers would
    all inherit the same one and apply identical augmentations. Each worker therefore
    reseeds the pipeline from its own torch seed (which changes every epoch).
    """

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self._seeded_for: int | None = None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {image.shape} "
                             f"dtype {image.dtype}")
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._seeded_for:
            self._seeded_for = worker.seed
            self.pipeline.set_random_seed(worker.seed % 2**32)
        return self.pipeline(image=image)["image"]

    def set_random_seed(self, seed: int) -> None:
        """Reseed in the main process (num_workers=0), e.g. once per epoch from torch's RNG."""
        self.pipeline.set_random_seed(int(seed) % 2**32)

    def __repr__(self) -> str:
        return f"ImageTransform({self.pipeline!r})"


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    scale_min: float = 0.5,
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    resize_ratio: float = 1.14,
) -> ImageTransform:
    """Build the train (random crop/flip/jitter) or eval (resize + centre crop) pipeline.

    Output: float32 tensor (3, image_size, image_size), normalised with mean/std (0..1
    scale). Eval resizes the short side to round(image_size * resize_ratio) and crops
    the centre, as the backbones were pretrained. Downscaling uses area interpolation
    (no aliasing on large photos), upscaling bicubic.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
    normalize = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
    resize = {"interpolation": cv2.INTER_CUBIC, "area_for_downscale": "image"}
    if train:
        if not 0.0 < scale_min <= 1.0:
            raise ValueError(f"train_scale_min must be in (0, 1], got {scale_min}")
        steps: list[A.BasicTransform] = [
            A.RandomResizedCrop(size=(image_size, image_size), scale=(scale_min, 1.0), **resize),
        ]
        if hflip > 0:
            steps.append(A.HorizontalFlip(p=hflip))
        if color_jitter > 0:
            steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                       saturation=color_jitter, hue=min(0.05, color_jitter / 4),
                                       p=0.8))
    else:
        if resize_ratio < 1.0:
            raise ValueError(f"eval_resize_ratio must be >= 1, got {resize_ratio}")
        steps = [
            A.SmallestMaxSize(max_size=round(image_size * resize_ratio), **resize),
            A.CenterCrop(height=image_size, width=image_size),
        ]
    return ImageTransform(A.Compose([*steps, normalize, ToTensorV2()]))
