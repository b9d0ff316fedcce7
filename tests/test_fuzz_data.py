"""Bounded-time fuzz of the VOC and COCO readers (issue 11, must show), used read-only: a
dataset folder whose annotation is damaged must fail as DataFormatError (a ValueError naming the
file) or load; nothing else may escape, and a load stays under an allocation cap.

Leaks this found are the named regression tests at the end: each is refused as DataFormatError now."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hwconv.quant.data.base import DataFormatError
from hwconv.quant.data.coco import COCODetection
from hwconv.quant.data.voc import VOCDetection

FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ALLOC_CAP = 64 * 1024 * 1024

VOC_XML = """<annotation><filename>a.jpg</filename>
<size><width>32</width><height>24</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>
<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>32</xmax><ymax>24</ymax></bndbox></object>
</annotation>"""

COCO = {"images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 8], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}]}


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), 100, np.uint8)).save(path)


def _voc(root: Path, xml: bytes | str, ids: bytes | str = "a\n") -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    _jpeg(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_bytes(xml.encode() if isinstance(xml, str) else xml)
    (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(ids.encode() if isinstance(ids, str) else ids)
    return root


def _coco(root: Path, text: bytes | str) -> tuple[Path, Path]:
    _jpeg(root / "images" / "a.jpg")
    (root / "ann.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return root / "images", root / "ann.json"


def _bounded(fn) -> None:
    tracemalloc.start()
    try:
        try:
            ds = fn()
            for i in range(len(ds)):
                ds.load(i)
        except DataFormatError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOC_CAP, f"a reader allocated {peak} bytes"


def test_clean_folders_load(tmp_path):
    ds = VOCDetection(_voc(tmp_path / "voc", VOC_XML), classes=("cat", "dog"))
    assert len(ds) == 1 and ds.load(0)[1].shape == (2, 4)
    ds = COCODetection(*_coco(tmp_path / "coco", json.dumps(COCO)))
    assert len(ds) == 1 and ds.class_names == ("dog", "cat")


# ------------------------------------------------------------------------------ VOC

@FUZZ
@given(data=st.data())
def test_fuzz_voc_xml_bytes(tmp_path_factory, data):
    raw = bytearray(VOC_XML.encode())
    for _ in range(data.draw(st.integers(1, 5))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.sampled_from(b"<>/\"'&;=x0-.9 \n\x00\xff"))
    root = _voc(tmp_path_factory.mktemp("voc"), bytes(raw))
    _bounded(lambda: VOCDetection(root, classes=("cat", "dog")))


_voc_values = st.one_of(st.sampled_from(["", " ", "-1", "0", "1e308", "inf", "nan", "1e400", "33", "12.5",
                                         "99999999999999999999", "x", "&amp;", "0x10"]),
                        st.text(alphabet="0123456789.-e+ ", max_size=8))


@FUZZ
@given(tag=st.sampled_from(["width", "height", "xmin", "ymin", "xmax", "ymax", "name", "difficult", "filename"]),
       value=_voc_values)
def test_fuzz_voc_fields(tmp_path_factory, tag, value):
    xml = VOC_XML.replace(f"<{tag}>", f"<{tag}>{value}<!--", 1).replace(f"</{tag}>", f"--></{tag}>", 1)
    root = _voc(tmp_path_factory.mktemp("voc"), xml)
    _bounded(lambda: VOCDetection(root, classes=("cat", "dog")))


# ------------------------------------------------------------------------------ COCO

_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.floats(),
                               st.text(max_size=6)),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=8)


@FUZZ
@given(path=st.sampled_from([("images",), ("images", 0), ("images", 0, "id"), ("images", 0, "width"),
                             ("images", 0, "height"), ("annotations",), ("annotations", 0),
                             ("annotations", 0, "image_id"), ("annotations", 0, "category_id"),
                             ("annotations", 0, "bbox"), ("annotations", 0, "bbox", 2), ("annotations", 0, "iscrowd"),
                             ("categories",), ("categories", 0), ("categories", 1, "id"),
                             ("categories", 0, "name")]),
       value=_json)
def test_fuzz_coco_fields(tmp_path_factory, path, value):
    data = json.loads(json.dumps(COCO))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    image_dir, ann = _coco(tmp_path_factory.mktemp("coco"), json.dumps(data))
    _bounded(lambda: COCODetection(image_dir, ann))


@FUZZ
@given(data=st.data())
def test_fuzz_coco_bytes(tmp_path_factory, data):
    raw = bytearray(json.dumps(COCO).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.sampled_from(b"{}[]\",:0-9e.tfn \xff"))
    image_dir, ann = _coco(tmp_path_factory.mktemp("coco"), bytes(raw))
    _bounded(lambda: COCODetection(image_dir, ann))


# ------------------------------------------------------------------------------ leaks found, now refused
# Each reproduced one leak in hwconv/quant/data; the readers now go through hwconv.fileio/imageio.

def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def _refused(fn) -> None:
    with pytest.raises(DataFormatError):
        ds = fn()
        for i in range(len(ds)):
            ds.load(i)


def test_leak_coco_huge_integer_bbox(tmp_path):
    text = json.dumps(COCO).replace("[2, 3, 10, 8]", "[2, 3, 1" + "0" * 400 + ", 8]")
    _refused(lambda: COCODetection(*_coco(tmp_path, text)))


def test_leak_coco_deep_json(tmp_path):
    text = '{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "annotations": [], "categories": []}'
    _refused(lambda: COCODetection(*_coco(tmp_path, text)))


def test_leak_voc_non_utf8_split_list(tmp_path):
    _refused(lambda: VOCDetection(_voc(tmp_path, VOC_XML, b"a\n\xff\xfe\n"), classes=("cat", "dog")))


@pytest.mark.parametrize("reader", ["voc", "coco"])
def test_leak_decompression_bomb(tmp_path, reader):
    from PIL import Image as PILImage

    if reader == "voc":
        root = _voc(tmp_path, VOC_XML.replace("<width>32</width><height>24</height>",
                                              "<width>20000</width><height>20000</height>"))
        (root / "JPEGImages" / "a.jpg").write_bytes(_png_claiming(20000, 20000))
        fn = lambda: VOCDetection(root, classes=("cat", "dog"))  # noqa: E731
    else:
        image_dir, ann = _coco(tmp_path, json.dumps({**COCO, "images": [
            {"id": 1, "file_name": "a.jpg", "width": 20000, "height": 20000}]}))
        (image_dir / "a.jpg").write_bytes(_png_claiming(20000, 20000))
        fn = lambda: COCODetection(image_dir, ann)  # noqa: E731
    try:
        _refused(fn)
    except PILImage.DecompressionBombError:
        pytest.fail("DecompressionBombError escaped")


class Blocked(BaseException):
    """Raised from SIGALRM: not an OSError (TimeoutError is one, and the readers catch OSError)."""


@pytest.mark.parametrize("reader", ["voc", "coco"])
def test_leak_fifo_annotation_hangs(tmp_path, reader):
    import os
    import signal

    if reader == "voc":
        root = _voc(tmp_path, VOC_XML)
        (root / "Annotations" / "a.xml").unlink()
        os.mkfifo(root / "Annotations" / "a.xml")
        fn = lambda: VOCDetection(root, classes=("cat", "dog"))  # noqa: E731
    else:
        image_dir, ann = _coco(tmp_path, "{}")
        ann.unlink()
        os.mkfifo(ann)
        fn = lambda: COCODetection(image_dir, ann)  # noqa: E731

    def timeout(*_):
        raise Blocked("reader blocked on a FIFO for 2 s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(2)
    try:
        _refused(fn)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_leak_coco_file_name_outside_the_image_folder(tmp_path):
    outside = tmp_path / "outside.jpg"
    _jpeg(outside)
    data = json.loads(json.dumps(COCO))
    data["images"][0]["file_name"] = str(outside)
    _refused(lambda: COCODetection(*_coco(tmp_path / "c", json.dumps(data))))


def test_leak_coco_file_name_with_dotdot_or_backslash(tmp_path):
    _jpeg(tmp_path / "outside.jpg")
    for name in ("../outside.jpg", "sub/../../outside.jpg", "..\\outside.jpg", "C:\\x.jpg", ""):
        data = json.loads(json.dumps(COCO))
        data["images"][0]["file_name"] = name
        with pytest.raises(DataFormatError, match=r"images\[0\] file_name"):
            COCODetection(*_coco(tmp_path / "c", json.dumps(data)))


def test_coco_file_name_in_a_subfolder_still_loads(tmp_path):
    image_dir, ann = _coco(tmp_path, json.dumps({**COCO, "images": [
        {"id": 1, "file_name": "sub/b.jpg", "width": 32, "height": 24}]}))
    _jpeg(image_dir / "sub" / "b.jpg")
    assert COCODetection(image_dir, ann).load(0)[0].shape == (24, 32, 3)


def test_leak_voc_names_outside_the_folder(tmp_path):
    outside = tmp_path / "outside.jpg"
    _jpeg(outside)
    root = _voc(tmp_path / "v1", VOC_XML.replace("<filename>a.jpg</filename>", f"<filename>{outside}</filename>"))
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DataFormatError, match="<filename>.*relative"):
        VOCDetection(root, classes=("cat", "dog"))
    root = _voc(tmp_path / "v2", VOC_XML, "../../a\n")
    with pytest.raises(DataFormatError, match=r"trainval.txt: id #1"):
        VOCDetection(root, classes=("cat", "dog"))


def test_messages_name_the_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"trainval.txt: split list is not UTF-8"):
        VOCDetection(_voc(tmp_path / "v", VOC_XML, b"a\n\xff\xfe\n"), classes=("cat", "dog"))
    text = json.dumps(COCO).replace("[2, 3, 10, 8]", "[2, 3, 1" + "0" * 400 + ", 8]")
    with pytest.raises(DataFormatError, match=r"ann.json: annotations\[0\]: bbox must be 4 finite"):
        COCODetection(*_coco(tmp_path / "c1", text))
    with pytest.raises(DataFormatError, match=r"ann.json: JSON nests 1001 levels"):
        COCODetection(*_coco(tmp_path / "c2", "[" * 1001 + "]" * 1001))


def test_fifo_split_list_and_fifo_image_are_refused(tmp_path):
    import os

    root = _voc(tmp_path / "v", VOC_XML)
    ids = root / "ImageSets" / "Main" / "trainval.txt"
    ids.unlink()
    os.mkfifo(ids)
    with pytest.raises(DataFormatError, match="split list must be a regular file, this is a FIFO"):
        VOCDetection(root, classes=("cat", "dog"))
    root = _voc(tmp_path / "v2", VOC_XML.replace("<size><width>32</width><height>24</height><depth>3</depth></size>", ""))
    (root / "JPEGImages" / "a.jpg").unlink()
    os.mkfifo(root / "JPEGImages" / "a.jpg")
    with pytest.raises(DataFormatError, match="image missing"):  # not a regular file: never opened
        VOCDetection(root, classes=("cat", "dog"))


def test_voc_without_size_reads_the_capped_header(tmp_path):
    root = _voc(tmp_path, VOC_XML.replace("<size><width>32</width><height>24</height><depth>3</depth></size>", ""))
    (root / "JPEGImages" / "a.jpg").write_bytes(_png_claiming(20000, 20000))
    with pytest.raises(DataFormatError, match=r"a.jpg: image claims more than the \d+ pixels hwconv reads"):
        VOCDetection(root, classes=("cat", "dog"))
