"""Train / eval image transforms (albumentations): HWC uint8 RGB array -> CHW float tensor.

Mean and std are always passed in: they belong to the backbone (CLIP and ImageNet
models differ), so a default here would silently mismatch some backbone.

Domain augmentation (street photo against shop photo, as in Street2Shop or DeepFashion's
consumer-to-shop): query-domain images get a strong pipeline (crop, affine, perspective,
blur, colour), gallery-domain images a light one (colour jitter and flip on the eval
geometry), chosen per image by the dataset through :class:`DomainTransforms`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    _check_size_mean_std(image_size, mean, std)
    if train:
        steps = [_random_crop(image_size, scale_min), *_flip_and_jitter(hflip, color_jitter)]
    else:
        steps = _eval_geometry(image_size, resize_ratio)
    return _finish(steps, mean, std)


def eval_transform(cfg, data_config) -> ImageTransform:
    """The one eval pipeline of a config and a backbone: ``data.image_size`` (or the backbone's own
    size), the backbone's mean and std, and ``data.eval_resize_ratio``. Validation, the feature
    cache, inference, crops and second stages all embed through it, so none can drift."""
    return build_transforms(cfg.data.image_size or data_config.input_size, data_config.mean, data_config.std,
                            train=False, resize_ratio=cfg.data.eval_resize_ratio)


_RESIZE = {"interpolation": cv2.INTER_CUBIC, "area_for_downscale": "image"}


def _check_size_mean_std(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")


def _random_crop(image_size: int, scale_min: float) -> A.BasicTransform:
    if not 0.0 < scale_min <= 1.0:
        raise ValueError(f"train_scale_min must be in (0, 1], got {scale_min}")
    return A.RandomResizedCrop(size=(image_size, image_size), scale=(scale_min, 1.0), **_RESIZE)


def _eval_geometry(image_size: int, resize_ratio: float) -> list[A.BasicTransform]:
    if resize_ratio < 1.0:
        raise ValueError(f"eval_resize_ratio must be >= 1, got {resize_ratio}")
    return [A.SmallestMaxSize(max_size=round(image_size * resize_ratio), **_RESIZE),
            A.CenterCrop(height=image_size, width=image_size)]


def _flip_and_jitter(hflip: float, color_jitter: float) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = []
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                   saturation=color_jitter, hue=min(0.05, color_jitter / 4), p=0.8))
    return steps


def _finish(steps: list[A.BasicTransform], mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    normalize = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
    return ImageTransform(A.Compose([*steps, normalize, ToTensorV2()]))


# --------------------------------------------------------------------------- domain augmentation

QUERY, GALLERY = "query", "gallery"


class DomainTransforms:
    """One pipeline per domain; the dataset asks for the pipeline of each sample's domain.

    Reseeding reaches every pipeline (each with its own derived seed), so the engine's
    per-epoch reseed and the workers' reseed work as for a single ImageTransform.
    """

    def __init__(self, by_domain: Mapping[str, ImageTransform]) -> None:
        self.by_domain = dict(by_domain)

    def pick(self, domain: str) -> ImageTransform:
        if domain not in self.by_domain:
            raise KeyError(f"no transform for domain '{domain}' (have: {', '.join(self.by_domain)})")
        return self.by_domain[domain]

    def set_random_seed(self, seed: int) -> None:
        for i, name in enumerate(sorted(self.by_domain)):
            self.by_domain[name].set_random_seed(int(seed) + 7919 * i)

    def __repr__(self) -> str:
        return f"DomainTransforms({self.by_domain!r})"


def build_query_domain_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], scale_min: float = 0.5,
    hflip: float = 0.5, color_jitter: float = 0.2, blur_p: float = 0.5, affine_p: float = 0.7,
    perspective_p: float = 0.5,
) -> ImageTransform:
    """Strong pipeline for street-like photos: crop, flip, affine, perspective, blur, colour.

    Street photos are taken at an angle, off-centre, often out of focus; warping and
    blurring the training queries teaches the model to match them to clean shop shots.
    """
    _check_size_mean_std(image_size, mean, std)
    for key, p in (("query_blur_p", blur_p), ("query_affine_p", affine_p),
                   ("query_perspective_p", perspective_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"data.{key} must be a probability in [0, 1], got {p}")
    steps: list[A.BasicTransform] = [_random_crop(image_size, scale_min)]
    steps += _flip_and_jitter(hflip, 0.0)
    steps += [
        A.Affine(rotate=(-15, 15), scale=(0.85, 1.15), translate_percent=(-0.08, 0.08),
                 shear=(-8, 8), border_mode=cv2.BORDER_REFLECT_101, p=affine_p),
        A.Perspective(scale=(0.05, 0.12), border_mode=cv2.BORDER_REFLECT_101, p=perspective_p),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.5, 2.0)),
                 A.MotionBlur(blur_limit=(3, 7))], p=blur_p),
    ]
    steps += _flip_and_jitter(0.0, color_jitter)
    return _finish(steps, mean, std)


def build_gallery_domain_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], hflip: float = 0.5,
    color_jitter: float = 0.2, resize_ratio: float = 1.14,
) -> ImageTransform:
    """Light pipeline for shop photos: the eval geometry, then only flip and colour jitter.

    Shop photos are clean and centred, as the gallery will be at test time; cropping or
    warping them would teach invariances the gallery never needs.
    """
    _check_size_mean_std(image_size, mean, std)
    return _finish([*_eval_geometry(image_size, resize_ratio), *_flip_and_jitter(hflip, color_jitter)],
                   mean, std)
