"""File input and output at the trust boundary.

Output: atomic writers (a reader never sees a half-written file, a failed write leaves the old
one) that give the modes the umask gives, as open() would (files 0666 & ~umask, folders 0777 &
~umask), not mkstemp's 0600; `check_output_path`, which a command calls before any work so a bad
-o is one line naming the option; `OutputSet`, which stages a command's outputs beside the
target and moves them in only when all of them were written.

Input: `read_capped` reads a regular file up to a stated size (a FIFO, a device or /dev/zero is
refused by name, a file that grows past the cap is refused before it is all in memory);
`loads_json` parses JSON with a nesting cap, so a 100k-deep document is one line, not a
RecursionError. Every error here is a ValueError subclass: `hwconv` prints it as one line, exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

JSON_MAX_DEPTH = 64  # nothing the tool writes nests deeper than ~6; 64 leaves room, far from the C stack


class InputFileError(ValueError):
    """A file the tool reads is unreadable, not a regular file, too large or malformed."""


class OutputPathError(ValueError):
    """An output path cannot be written: wrong kind (file vs folder), not writable, ..."""


# ------------------------------------------------------------------------------ modes

def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask has no getter)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder in `parent` with the umask's folder mode (mkdtemp alone gives 0700)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp


# ------------------------------------------------------------------------------ atomic writes

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------ output paths

def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_output_path(path: str | Path, *, option: str, kind: str = "file") -> Path:
    """Refuse an output path that cannot be written, before any work; returns it as a Path.

    kind "file": `path` will be a file (an existing folder there is refused);
    kind "dir":  `path` will be a folder (an existing file there is refused).
    Parents that do not exist yet are fine if the nearest existing one is a writable folder.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"check_output_path: kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{option}: empty path")
    if path.exists():
        if kind == "file" and path.is_dir():
            raise OutputPathError(f"{option} {path}: is a folder, a file name is needed here")
        if kind == "dir" and not path.is_dir():
            raise OutputPathError(f"{option} {path}: is a file, a folder is needed here")
        if kind == "file" and not path.is_file():
            raise OutputPathError(f"{option} {path}: is not a regular file")
        where = path if kind == "dir" else path.parent
        if not os.access(where, os.W_OK | os.X_OK):
            raise OutputPathError(f"{option} {path}: {where} is not writable")
        return path
    base = _nearest_existing(path.parent if str(path.parent) else Path("."))
    if not base.is_dir():
        raise OutputPathError(f"{option} {path}: {base} is a file, so nothing can be created under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path}: {base} is not writable")
    return path


class OutputSet:
    """A command's outputs written as a set: all of them land, or none.

        with OutputSet(out_dir, option="-o") as stage:
            (stage / "a.hwc").write_bytes(...)      # any files and folders under stage
        # here out_dir holds them all; on an exception nothing of them is in out_dir

    Files are staged in a hidden folder beside `target`. On success, a target that does not
    exist yet is the staging folder renamed; into an existing folder each staged file is moved
    with os.replace (files of the same name are replaced, nothing else there is touched). On
    failure only the staging folder is removed: the set never deletes what it did not create.
    """

    def __init__(self, target: str | Path, *, option: str = "-o"):
        self.target = check_output_path(target, option=option, kind="dir")
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        parent = self.target.parent if str(self.target.parent) else Path(".")
        self.stage = make_temp_dir(parent.resolve(), f".{self.target.name}.staging.")
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        stage, self.stage = self.stage, None
        if stage is None:
            return False
        if exc_type is not None:
            shutil.rmtree(stage, ignore_errors=True)
            return False
        try:
            self._commit(stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return False

    def _commit(self, stage: Path) -> None:
        if not self.target.exists():
            try:
                stage.rename(self.target)
                return
            except OSError:  # created meanwhile: merge below
                pass
        for src in sorted(stage.rglob("*")):
            rel = src.relative_to(stage)
            dst = self.target / rel
            if src.is_dir() and not src.is_symlink():
                if dst.exists() and not dst.is_dir():
                    raise OutputPathError(f"{dst}: is a file, the output needs a folder there")
                dst.mkdir(exist_ok=True)
            else:
                if dst.is_dir() and not dst.is_symlink():
                    raise OutputPathError(f"{dst}: is a folder, the output needs a file there")
                os.replace(src, dst)


# ------------------------------------------------------------------------------ reading

def read_capped(path: str | Path, *, limit: int, what: str = "file") -> bytes:
    """The bytes of regular file `path`, refusing anything else and anything over `limit` bytes.

    The size is checked on the open file (fstat) and again while reading, so a FIFO, a device
    (/dev/zero, /dev/stdin) or a file growing under us never makes the reader allocate past
    `limit + 1` bytes.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block open()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"{path}: {what} must be a regular file, this is {_kind(st.st_mode)}")
        if st.st_size > limit:
            raise InputFileError(f"{path}: {what} is {st.st_size} bytes, more than the {limit}-byte limit")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(st.st_size + 1)   # the size it has: a buffer of `limit` bytes is never made up front
            if st.st_size < len(data) <= limit:  # it grew meanwhile: the rest, still bounded
                data += f.read(limit + 1 - len(data))
        if len(data) > limit:
            raise InputFileError(f"{path}: {what} is more than the {limit}-byte limit")
        return data
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def check_regular_file(path: str | Path, *, what: str = "file", limit: int | None = None,
                       error: type[InputFileError] = InputFileError) -> Path:
    """Refuse a path that is not a regular file (FIFO, device, folder), or over `limit` bytes,
    before a library opens it (Pillow, numpy, torch would block on a FIFO or read a device forever)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {what} must be a regular file, this is {_kind(st.st_mode)}")
    if limit is not None and st.st_size > limit:
        raise error(f"{path}: {what} is {st.st_size} bytes, more than the {limit}-byte limit")
    return path


def json_depth(text: str | bytes) -> int:
    """Deepest [ / { nesting of a JSON text (brackets inside strings skipped), in linear time and
    without recursion; memory grows with the number of quotes and brackets, not the text."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    b = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(b == ord('"'))
    escaped = np.zeros(quotes.size, dtype=bool)  # preceded by an odd run of backslashes
    alive, k = np.arange(quotes.size), 1
    while alive.size:
        pos = quotes[alive] - k
        alive = alive[pos >= 0]
        alive = alive[b[quotes[alive] - k] == ord("\\")]
        escaped[alive] ^= True
        k += 1
    real = quotes[~escaped]
    brackets = np.flatnonzero((b == ord("[")) | (b == ord("{")) | (b == ord("]")) | (b == ord("}")))
    outside = np.searchsorted(real, brackets) % 2 == 0
    brackets = brackets[outside]
    step = np.where((b[brackets] == ord("[")) | (b[brackets] == ord("{")), 1, -1)
    return int(np.cumsum(step).max(initial=0))


def loads_json(text: str | bytes, *, source: str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """json.loads with a nesting cap and one-line errors naming `source`."""
    try:
        depth = json_depth(text)
    except UnicodeEncodeError:
        depth = 0
    if depth > max_depth:
        raise InputFileError(f"{source}: JSON nests {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        msg = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise InputFileError(f"{source}: not valid JSON: {msg}") from None


def read_json(path: str | Path, *, limit: int, what: str = "JSON file",
              max_depth: int = JSON_MAX_DEPTH) -> Any:
    """A JSON file read with read_capped and loads_json."""
    data = read_capped(path, limit=limit, what=what)
    return loads_json(data, source=str(path), max_depth=max_depth)
