"""The dataset interface every detection source implements, and the batch collate function.

Conventions, shared by all loaders, the CenterNet encoder and the COCO export:
- images are HxWx3 uint8 in numpy, 3xHxW float32 in [0, 1] as torch tensors;
- boxes are (N, 4) float32 xyxy in continuous pixel coordinates: pixel column i covers [i, i+1),
  so a box that covers columns 3..5 is x1=3, x2=6 (VOC's 1-based inclusive xmin=4, xmax=6);
- labels are (N,) int64 in [0, num_classes).
"""

from __future__ import annotations

import contextlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ...fileio import InputFileError

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image uint8 HxWx3, boxes (N,4), labels (N,)
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], Sample]
Annotation = tuple[int, int, np.ndarray, np.ndarray]  # height, width, boxes, labels


class DataFormatError(ValueError):
    """A user's annotation or image folder is malformed; the message names the file and field."""


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """hwconv.fileio/imageio refusals (a FIFO, a file over its cap, an image bomb, deep JSON) as
    DataFormatError, the one error a data set raises; their message already names the file."""
    try:
        yield
    except DataFormatError:
        raise
    except InputFileError as exc:
        raise DataFormatError(str(exc)) from None


def file_in(folder: Path, name: str, where: str) -> Path:
    """`folder / name` for a file name read from an annotation; refused by name when it could
    reach outside `folder` (absolute, a drive, a `..` part), so a data set reads only its own files."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (not name or name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts
            or "\0" in name):
        raise DataFormatError(f"{where}: file name {name!r} must be relative to {folder} (no absolute "
                              "path, no '..')")
    return folder / name


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


class DetectionDataset(Dataset):
    """A map-style dataset of (image 3xHxW float tensor, {"boxes", "labels", "image_id"})."""

    class_names: tuple[str, ...] = ()
    transform: Transform | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        """The raw sample, before `transform`."""
        raise NotImplementedError

    def raw_annotation(self, index: int) -> Annotation:
        """Image size and boxes without decoding pixels where the format allows; subclasses speed
        this up (VOC/COCO read sizes from the annotation files)."""
        image, boxes, labels = self.load(index)
        return image.shape[0], image.shape[1], boxes, labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {n}")
        return index

    def sample(self, index: int) -> Sample:
        """The sample with `transform` applied, still numpy."""
        image, boxes, labels = self.load(self._check_index(index))
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
        return image, boxes, labels

    def annotation(self, index: int) -> Annotation:
        """What an evaluator needs (size, boxes, labels) in the coordinates `__getitem__` returns."""
        index = self._check_index(index)
        if self.transform is None:
            return self.raw_annotation(index)
        image, boxes, labels = self.sample(index)
        return image.shape[0], image.shape[1], boxes, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, boxes, labels = self.sample(index)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            "image_id": torch.tensor(self._check_index(index), dtype=torch.int64),
        }
        return tensor, target


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
            ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images (they must share a size) and keep targets as a list: box counts differ."""
    images = [image for image, _ in batch]
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"collate needs images of one size, got {sorted(sizes)}; give the dataset "
                         f"a transform such as hwconv.quant.data.Letterbox(size)")
    return torch.stack(images), [target for _, target in batch]
