"""One preprocessing definition (hwconv.driver.preprocess) behind training, evaluation and the
driver (issue 16), and CenterNet's training augmentation on top of it (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from hwconv.driver.preprocess import boxes_to_image, boxes_to_input, letterbox
from hwconv.quant.data import DetectionDataset, Letterbox
from hwconv.quant.data.prepare import Augment, PreparedSet
from hwconv.quant.evaluate import to_image_coordinates


class Squares(DetectionDataset):
    """Images of given sizes, each with one white square object on black."""

    class_names = ("square",)

    def __init__(self, sizes: list[tuple[int, int]], box: tuple[int, int, int, int] = (40, 30, 100, 90)):
        self.sizes, self.box = sizes, box

    def __len__(self) -> int:
        return len(self.sizes)

    def load(self, index: int):
        h, w = self.sizes[index]
        img = np.zeros((h, w, 3), np.uint8)
        x1, y1, x2, y2 = self.box
        img[y1:y2, x1:x2] = 255
        return img, np.float32([self.box]), np.int64([0])


def test_training_letterbox_is_the_driver_letterbox():
    rng = np.random.default_rng(0)
    img = (rng.random((375, 500, 3)) * 255).astype(np.uint8)
    boxes = np.float32([[10, 20, 300, 370]])
    pic, b, _ = Letterbox(128)(img, boxes, np.int64([0]))
    want, (sx, sy) = letterbox(img, 128, 128)
    assert np.array_equal(pic, want) and np.array_equal(b, boxes_to_input(boxes, sx, sy))
    assert (sx, sy) == (128 / 500, 96 / 375) and (pic[96:] == 0).all()


def test_prepared_set_trains_in_input_pixels_and_scores_in_original_pixels():
    ds = PreparedSet(Squares([(375, 500), (128, 128), (64, 48)]), 128)
    image, target = ds[0]
    assert tuple(image.shape) == (3, 128, 128)
    sx, sy, h, w = ds.geometry(0)
    assert (h, w) == (375, 500)
    assert np.allclose(target["boxes"].numpy(), [[40 * sx, 30 * sy, 100 * sx, 90 * sy]])
    assert ds.annotation(0)[:2] == (375, 500) and np.array_equal(ds.annotation(0)[2], [[40, 30, 100, 90]])
    assert ds.geometry(1)[:2] == (1.0, 1.0)  # the input size itself: no resampling
    assert np.array_equal(ds.load(1)[0], Squares([(128, 128)]).load(0)[0])
    # Detections at the input's boxes map back onto the original boxes, clipped to the image.
    dets = [{"boxes": ds[i][1]["boxes"].numpy(), "scores": np.ones(1), "labels": np.zeros(1, np.int64)}
            for i in range(3)]
    back = to_image_coordinates(dets, ds)
    assert np.allclose(back[0]["boxes"], [[40, 30, 100, 90]], atol=1e-3)
    assert np.allclose(back[2]["boxes"], [[40, 30, 48, 64]], atol=1e-3)  # clipped to the 48x64 image
    assert np.allclose(boxes_to_image([[0, 0, 200, 200]], 0.5, 0.5, 50, 60), [[0, 0, 60, 50]])


def test_augment_moves_the_boxes_with_the_pixels():
    ds = PreparedSet(Squares([(200, 200)] * 6), 128, augment=Augment(seed=3, colour=0.0, lighting=0.0))
    moved = 0
    for i in range(6):
        image, boxes, labels = ds.sample(i)
        assert image.shape == (128, 128, 3) and len(boxes) == len(labels)
        for x1, y1, x2, y2 in boxes:
            inner = image[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
            assert inner.size and inner.min() >= 250, (i, boxes)  # the box still covers the white square
        moved += not np.allclose(boxes, ds.load(i)[1], atol=0.5)
    assert moved >= 4  # scale, placement and flip change almost every sample


def test_augment_is_a_function_of_seed_epoch_and_index():
    ds = PreparedSet(Squares([(200, 200)] * 2), 128, augment=Augment(seed=1))
    a = ds.sample(0)
    ds.set_epoch(1)
    b = ds.sample(0)
    ds.set_epoch(0)
    c = ds.sample(0)
    assert all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], b[0])


@pytest.mark.parametrize("scale", [(0.6, 0.6), (1.4, 1.4)])
def test_augment_scale_extremes_keep_the_canvas_and_clip_boxes(scale):
    aug = Augment(seed=0, scale=scale, flip=1.0)
    img = np.full((128, 128, 3), 255, np.uint8)
    out, boxes, labels = aug(img, np.float32([[0, 0, 128, 128]]), np.int64([0]), np.random.default_rng(0))
    assert out.shape == img.shape
    assert ((boxes >= 0) & (boxes <= 128)).all() and len(labels) == 1
