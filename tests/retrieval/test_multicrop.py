"""Multi-crop proposals (grid, a random-init YOLO), crop datasets and option checks."""
import numpy as np
import pytest
from PIL import Image

from simsearch.data.datasets import BadSample, to_float_tensor
from simsearch.retrieval.multicrop import (
    CropDataset,
    MultiCropOptions,
    YoloDetector,
    crop_items,
    grid_boxes,
    propose_boxes,
)


def test_grid_boxes_hand_case():
    boxes = grid_boxes(100, 60, grid=2, centre_frac=0.6)
    assert boxes == [(20, 12, 80, 48), (0, 0, 50, 30), (50, 0, 100, 30), (0, 30, 50, 60), (50, 30, 100, 60)]
    assert len(grid_boxes(90, 90, grid=3)) == 1 + 9
    assert grid_boxes(90, 90, grid=3)[-1] == (60, 60, 90, 90)


def test_propose_boxes_full_first_then_grid_capped():
    img = np.zeros((60, 100, 3), np.uint8)
    opts = MultiCropOptions(enabled=True, max_crops=3)
    assert propose_boxes(img, opts) == [(0, 0, 100, 60), (20, 12, 80, 48), (0, 0, 50, 30)]
    no_full = MultiCropOptions(enabled=True, include_full=False, max_crops=2)
    assert propose_boxes(img, no_full) == [(20, 12, 80, 48), (0, 0, 50, 30)]


def test_propose_boxes_filters_clips_and_dedups_detector_boxes():
    img = np.zeros((100, 100, 3), np.uint8)

    def detector(_):
        return [(-10, -10, 50, 50), (0, 0, 50, 50), (10, 10, 12, 12), (60, 60, 140, 100)]

    opts = MultiCropOptions(enabled=True, detector="yolo:x.pt", min_box_frac=0.05, max_crops=5)
    # (-10,-10,50,50) clips to (0,0,50,50); its repeat and the 2x2 px box (0.04% of the area) go
    assert propose_boxes(img, opts, detector) == [(0, 0, 100, 100), (0, 0, 50, 50), (60, 60, 100, 100)]
    nothing = MultiCropOptions(enabled=True, detector="yolo:x.pt", include_full=False)
    assert propose_boxes(img, nothing, lambda _: []) == [(0, 0, 100, 100)]  # a query always gets a crop


def test_crop_dataset_returns_the_boxed_pixels_and_marks_unreadable(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_text("not an image")
    items, owner = crop_items([tmp_path / "a.png", tmp_path / "bad.jpg"], MultiCropOptions(enabled=True))
    assert owner.tolist() == [0] * 5 + [1] and items[-1][1] is None
    ds = CropDataset(items, to_float_tensor)
    x0, y0, x1, y1 = items[2][1]  # the centre crop
    tensor, label, index = ds[2]
    assert index == 2 and label == -1
    assert np.array_equal((tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), arr[y0:y1, x0:x1])
    assert isinstance(ds[5], BadSample)


@pytest.mark.parametrize("changes, key", [({"fusion": "mean"}, "fusion"), ({"detector": "ssd"}, "detector"),
                                          ({"max_crops": 0}, "max_crops"), ({"centre_frac": 0.0}, "centre_frac")])
def test_bad_options_name_the_key(changes, key):
    with pytest.raises(ValueError, match=f"infer.multicrop.{key}"):
        MultiCropOptions.from_config({"enabled": True}, **changes)


def test_missing_yolo_weights_are_an_error_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        YoloDetector(tmp_path / "missing.pt")


def test_random_init_yolo_from_its_yaml_proposes_boxes_inside_the_image():
    """ultralytics builds yolov8n from its packaged yaml without any download."""
    det = YoloDetector("yolov8n.yaml", conf=0.0, imgsz=64)
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    raw = det(img)
    assert raw and all(len(b) == 4 for b in raw)
    opts = MultiCropOptions(enabled=True, detector="yolo:yolov8n.yaml", min_box_frac=0.0, max_crops=4)
    boxes = propose_boxes(img, opts, det)
    assert boxes[0] == (0, 0, 64, 48) and 1 <= len(boxes) <= 4
    assert all(0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48 for x0, y0, x1, y1 in boxes)
