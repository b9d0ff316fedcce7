"""Reading and writing pictures at the trust boundary: every --image goes through read_image.

read_image(path) -> (H, W, 3) uint8, whatever the file holds:
  * only regular files (a FIFO would block, a device would never end), at most IMAGE_MAX_BYTES;
  * at most IMAGE_MAX_PIXELS, checked from the header before anything is decoded (a 17 KB PNG
    can claim 12000 x 12000 pixels: 432 MB as RGB, gigabytes in a decoder);
  * 16-bit and 32-bit grey scaled to 8 bits (Pillow's convert("RGB") clips them to white),
    palette/alpha/CMYK/YCbCr/1-bit converted by Pillow, EXIF orientation applied;
  * .npy read with allow_pickle=False, its header (shape, dtype) checked before the data is read.

write_image(path, rgb) writes the format the suffix names (.png, .jpg/.jpeg, .bmp, .tif/.tiff,
.webp, .npy), atomically, with the umask's file mode.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from pathlib import Path

import numpy as np

from .fileio import InputFileError, atomic_write_bytes, check_regular_file

IMAGE_MAX_PIXELS = 40_000_000          # 40 Mpixel (e.g. 7700 x 5200): 120 MB as RGB
IMAGE_MAX_BYTES = 256 * 1024 * 1024    # the file itself
NPY_HEADER_MAX_BYTES = 64 * 1024       # numpy's own header is < 64 KiB (format 2.0 allows more)

EXIF_ORIENTATION = 0x0112             # the EXIF tag ImageOps.exif_transpose applies

WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".webp": "WEBP"}


class ImageError(InputFileError):
    """An image file cannot be read (or written): the message names the file and why."""


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: image is {width}x{height} pixels, nothing to read")
    if width * height > IMAGE_MAX_PIXELS:
        raise ImageError(f"{path}: image is {width}x{height} = {width * height} pixels, more than the "
                         f"{IMAGE_MAX_PIXELS} hwconv reads (hwconv.imageio.IMAGE_MAX_PIXELS); scale it down first")


def read_image(path: str | Path) -> np.ndarray:
    """The picture at `path` as (H, W, 3) uint8; ImageError (a ValueError) for anything else."""
    path = Path(path)
    check_regular_file(path, what="image", limit=IMAGE_MAX_BYTES, error=ImageError)
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    return _read_pillow(path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the picture at `path` from its header, nothing decoded; the same checks
    as read_image (regular file, byte and pixel caps), so a size read here can be loaded later."""
    path = Path(path)
    check_regular_file(path, what="image", limit=IMAGE_MAX_BYTES, error=ImageError)
    if path.suffix.lower() == ".npy":
        shape = _npy_header(path)
        return int(shape[1]), int(shape[0])
    with _opened(path, "read the image header") as im:   # reads the header only
        width, height = im.size
        turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # read_image turns these
        return (height, width) if turned else (width, height)


def _npy_header(path: Path) -> tuple[int, ...]:
    """The shape of an image .npy from its header, dtype and shape checked, no data read."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=NPY_HEADER_MAX_BYTES)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=NPY_HEADER_MAX_BYTES)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ImageError(f"{path}: not a readable .npy file ({exc})") from None
    if dtype != np.uint8:
        raise ImageError(f"{path}: .npy dtype {dtype}, an image must be uint8")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ImageError(f"{path}: .npy shape {shape}, an image is (H, W, 3), (H, W, 1) or (H, W) uint8")
    _check_pixels(path, shape[1], shape[0])
    return tuple(shape)


def _read_npy(path: Path) -> np.ndarray:
    shape = _npy_header(path)
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageError(f"{path}: not a readable .npy file ({exc})") from None
    if a.shape != tuple(shape) or a.dtype != np.uint8:  # the header was read twice: same answer
        raise ImageError(f"{path}: .npy changed while being read")
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(np.broadcast_to(a, a.shape[:2] + (3,)))


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import ImageOps

    with _opened(path, "decode the image") as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return _to_rgb8(path, im)


@contextlib.contextmanager
def _opened(path: Path, action: str):
    """The Pillow image at `path`, header read and pixel count checked; Pillow's errors as ImageError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap is lower
            with Image.open(path) as im:   # reads the header only
                _check_pixels(path, *im.size)
                yield im
    except Image.DecompressionBombError as exc:  # Pillow's own refusal, at twice its MAX_IMAGE_PIXELS
        raise ImageError(f"{path}: image claims more than the {IMAGE_MAX_PIXELS} pixels hwconv reads "
                         f"(hwconv.imageio.IMAGE_MAX_PIXELS; Pillow: {exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{path}: cannot {action} ({type(exc).__name__}: {exc})") from None


def _to_rgb8(path: Path, im) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG, TIFF): scale to 8 bits; "I" holds 16-bit samples widened to int32
        a = np.asarray(im).astype(np.int64)
        bits = 16 if mode.startswith("I;16") or a.max(initial=0) <= 0xFFFF else 32
        a = np.clip(a, 0, (1 << bits) - 1) >> (bits - 8)
        g = a.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "F":
        raise ImageError(f"{path}: floating-point image (mode F): save it as an 8- or 16-bit image")
    if mode != "RGB":
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"{path}: decoded to {a.dtype} {a.shape}, expected (H, W, 3) uint8")
    return a


def _as_rgb8(rgb: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise ImageError(f"{where}: image to write is {a.dtype}, expected uint8")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or 0 in a.shape:
        raise ImageError(f"{where}: image to write has shape {a.shape}, expected (H, W, 3) or (H, W)")
    return np.ascontiguousarray(a)


def encode_image(rgb: np.ndarray, suffix: str, *, where: str = "image") -> bytes:
    """The bytes of `rgb` in the format `suffix` names (".png", ".jpg", ..., ".npy")."""
    a = _as_rgb8(rgb, where)
    suffix = suffix.lower()
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()
    fmt = WRITE_FORMATS.get(suffix)
    if fmt is None:
        raise ImageError(f"{where}: cannot tell the image format from the suffix {suffix!r}; use one of "
                         f"{', '.join(sorted(WRITE_FORMATS))} or .npy")
    from PIL import Image

    Image.fromarray(a).save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write `rgb` ((H, W, 3) or (H, W) uint8) to `path` in the format its suffix names, atomically."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(rgb, path.suffix, where=str(path)))
    return path
