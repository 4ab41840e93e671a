"""Data: robust image loading, sample lists and splits, datasets, P-K sampling, transforms."""
from simsearch.data.datasets import (
    BadSample,
    FlatImageDataset,
    ImageDataset,
    NamedImageDataset,
    Sample,
    SkippedImages,
    collate_skip_bad,
    drop_small_classes,
    list_image_files,
    read_manifest,
    relabel,
    scan_class_folders,
    split_train_val,
    stratified_subsample,
    to_float_tensor,
)
from simsearch.data.io import IMAGE_EXTENSIONS, ImageLoadError, is_image_file, load_image, to_rgb
from simsearch.data.manifest import ManifestItem, ManifestSpec, read_items
from simsearch.data.sampler import PKSampler
from simsearch.data.transforms import ImageTransform, build_transforms

__all__ = [
    "BadSample",
    "FlatImageDataset",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageLoadError",
    "ImageTransform",
    "ManifestItem",
    "ManifestSpec",
    "NamedImageDataset",
    "PKSampler",
    "Sample",
    "SkippedImages",
    "build_transforms",
    "collate_skip_bad",
    "drop_small_classes",
    "is_image_file",
    "list_image_files",
    "load_image",
    "read_items",
    "read_manifest",
    "relabel",
    "scan_class_folders",
    "split_train_val",
    "stratified_subsample",
    "to_float_tensor",
    "to_rgb",
]
