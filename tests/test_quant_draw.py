"""hwconv.quant.draw: boxes land where the xyxy coordinates say, bad input is refused by name."""

import numpy as np
import pytest
from PIL import Image

from hwconv.quant.draw import PALETTE, draw_detections, montage, save_png, upscale


def _blank(h=64, w=80):
    return np.zeros((h, w, 3), np.uint8)


def test_box_outline_on_exclusive_edges_and_input_untouched():
    img = _blank()
    out = draw_detections(img, [[10, 20, 30, 40]], [0.9], [2])
    colour = np.array(PALETTE[2])
    assert (img == 0).all()  # a copy is drawn on
    assert (out[20, 10:30] == colour).all() and (out[39, 10:30] == colour).all()  # top, bottom (y2-1)
    assert (out[20:40, 10] == colour).all() and (out[20:40, 29] == colour).all()  # left, right (x2-1)
    assert (out[25:35, 15:25] == 0).all()  # inside stays clear
    assert not out[42:, :].any()


def test_threshold_clipping_and_empty():
    img = _blank()
    out = draw_detections(img, [[10, 10, 20, 20], [-50, -50, 500, 500], [200, 200, 300, 300]],
                          np.array([0.1, 0.8, 0.9]), np.array([0, 1, 3]), score_threshold=0.5)
    assert not out[12:18, 12:18].any()  # box 0 is under the threshold
    assert (out[0, :] == PALETTE[1]).all() and (out[:, -1] == PALETTE[1]).all()  # clipped to the frame
    assert not (out == PALETTE[3]).all(axis=-1).any()  # box 2 lies wholly outside
    assert (draw_detections(img, np.zeros((0, 4)), [], []) == img).all()


def test_accepts_torch_tensors_and_class_names():
    torch = pytest.importorskip("torch")
    out = draw_detections(_blank(), torch.tensor([[20.0, 20.0, 40.0, 40.0]]), torch.tensor([0.5]),
                          torch.tensor([1]), class_names=["cat", "dog"])
    assert (out[20, 20:40] == PALETTE[1]).all()
    assert out[:20, 20:80].any()  # the "dog 0.50" label above the box
    plain = draw_detections(_blank(), [[20, 20, 40, 40]], [0.5], [1])
    assert (plain[:20] != out[:20]).any() and (plain[20:] == out[20:]).all()  # "1 0.50": another label


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_uint8_hwc=np.zeros((8, 8, 3), np.float32)), "HxWx3 uint8"),
    (dict(image_uint8_hwc=np.zeros((8, 8), np.uint8)), "HxWx3 uint8"),
    (dict(boxes_xyxy=[[1, 2, 3]]), r"shape \(N, 4\)"),
    (dict(scores=[0.5, 0.4]), "1 boxes, 2 scores"),
    (dict(labels=[[1]]), "labels must be 1-D"),
    (dict(labels=[0.5]), "integer class"),
    (dict(labels=[5], class_names=["a", "b"]), "outside the 2 class names"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(image_uint8_hwc=_blank(), boxes_xyxy=[[1, 2, 3, 4]], scores=[0.5], labels=[1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        draw_detections(**args)


def test_montage_upscale_and_save_png(tmp_path):
    a, b = _blank(4, 6), _blank(4, 6) + 200
    m = montage([a, b, a], columns=2, gap=1)
    assert m.shape == (9, 13, 3) and (m[0:4, 7:13] == 200).all() and not m[5:9, 7:].any()
    big = upscale(b[:2, :3], 3)
    assert big.shape == (6, 9, 3)
    path = save_png(tmp_path / "sub" / "d.png", m)
    assert (np.asarray(Image.open(path)) == m).all()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["d.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="share one shape"):
        montage([a, _blank(5, 6)])
    with pytest.raises(ValueError, match="save_png"):
        save_png(tmp_path / "x.png", np.zeros((3, 3), np.uint8))


def test_quantize_writes_detections_png(tmp_path):
    from hwconv.quant.pipeline import quantize

    r = quantize("tiny", tmp_path, epochs=1, qat_epochs=1, batch_size=8, train_images=8, val_images=3,
                 progress=False)
    pic = np.asarray(Image.open(r["detections_png"]))
    assert r["detections_png"] == str(tmp_path / "detections.png")
    assert pic.shape == (256, 3 * 256 + 2 * 4, 3)  # 3 validation images at 2x, 4 px apart
