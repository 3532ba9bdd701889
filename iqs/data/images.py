"""Reading photos robustly, and an on-disk cache of their downscaled copies.

:func:`read_rgb` decodes with Pillow rather than OpenCV: OpenCV returns a grey-filled image for a
truncated JPEG, Pillow raises, so a damaged file is reported instead of trained on.
:class:`ImageCache` keeps EXIF-oriented, downscaled JPEG copies so that epochs after the first do
not decode 12 MP originals again.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import multiprocessing
import os
import platform
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from iqs.utils import atomic_write

log = logging.getLogger(__name__)

# OpenCV >= 4.10 decodes straight to RGB; older versions decode to BGR.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_ORIENTATION = 0x0112  # EXIF tag


class UnreadableImage(OSError):
    """An image file that cannot be decoded; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"unreadable image {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __reduce__(self):  # pickles with its two arguments (the default passes only the message)
        return type(self), (self.path, self.reason)


def read_rgb(
    path: str | os.PathLike, max_side: int | None = None, min_side: int | None = None
) -> np.ndarray:
    """Decode ``path`` to an EXIF-oriented RGB uint8 ``H x W x 3`` array.

    With ``max_side``, the longer side is downscaled to ``max_side`` (never upscaled). JPEGs are
    then reduced by the decoder itself (1/2, 1/4 or 1/8), which is much faster for big photos.
    With ``min_side`` (and no ``max_side``), a JPEG is decoded reduced as far as both sides stay
    at least ``min_side``, and not resized further: for a caller that resizes anyway.
    Raises :class:`UnreadableImage` for a missing, empty, truncated or undecodable file.
    The first call tunes the process's allocator (see :func:`reuse_freed_memory`).
    """
    path = os.fspath(path)
    reuse_freed_memory()
    _refuse_truncated_images()
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImage(path, "not a regular file")
    if st.st_size == 0:
        raise UnreadableImage(path, "empty file")
    try:
        with Image.open(path) as im:
            if max_side is not None:
                _draft(im, max_side)
            elif min_side is not None and min(im.size) >= 2 * min_side:
                im.draft("RGB", (min_side, min_side))  # never below min_side on either side
            im.load()
            rgb = _to_rgb(_exif_transpose(im, path))
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, f"decompression bomb: {e}") from e
    except Exception as e:  # any decoder failure is a property of this file, not of the run
        raise UnreadableImage(path, _reason(e)) from e
    if max_side is not None:
        rgb = _shrink(rgb, max_side)
    # Arrays made from Pillow images are read-only; augmentations may write in place.
    return rgb if rgb.flags.writeable else rgb.copy()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed buffers for reuse (once per process; loader workers
    inherit it). Returns whether it could (only glibc has these settings).

    A decode passes megabytes through several buffers (Pillow's image, its bytes, the writable
    copy), a CPU training step tens of megabytes of activations. By default glibc maps such
    buffers afresh and unmaps them when freed, or trims its heap after them, so the next photo's
    or step's pages are faulted in and zeroed again: a 1024x768 photo measured 4.5 or 8.7 ms
    (1,900 page faults) depending on the process's history. Here buffers up to 32 MB (the most
    glibc allows) come from the heap, and the heap is trimmed only above 512 MB of free memory
    (glibc's own adaptation stops at 64 MB, which a CPU step of the default model at batch 32
    exceeds: it gave back and faulted in again ~70 MB, 16,000-39,000 faults, every step). A
    process keeps what it freed, up to that much, for its next photo or step.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 512 << 20))


def _refuse_truncated_images() -> None:
    # A library that sets this global makes Pillow grey-fill truncated files, as OpenCV does.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set; reset so damage is reported")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _draft(im: Image.Image, max_side: int) -> None:
    # Ask for the target size in the stored orientation: the scale is the same for both sides,
    # so an EXIF rotation applied later does not change it. Draft never goes below that box.
    longer = max(im.size)
    if longer > max_side:
        im.draft("RGB", tuple(max(1, -(-side * max_side // longer)) for side in im.size))


def _exif_transpose(im: Image.Image, path: str) -> Image.Image:
    try:
        if im.getexif().get(_ORIENTATION, 1) in range(2, 9):
            return ImageOps.exif_transpose(im)
    except Exception as e:  # broken EXIF: the pixels are still good, only unrotated
        log.debug("ignoring the EXIF orientation of %s: %s", path, e)
    return im  # no copy: exif_transpose copies 36 MB of a 12 MP photo even when upright


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert() would clip to 0..255 instead of scaling. "I" too
        # holds 0..65535 (Pillow scales a PGM's maxval to it): scaled by the range, not by the
        # pixels, so that a dark 16-bit photo stays dark.
        a = np.asarray(im).astype(np.int64) // 257
        return np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # Transparent pixels hold arbitrary colours; show them on white, as a viewer would.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    size = (max_side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), max_side)
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError):  # Pillow's own: "image file is truncated", "broken data stream"
        return e.strerror or str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(key: str, max_len: int = 120) -> str:
    """``key`` as one file name: unsafe characters become ``_`` and, when anything had to change,
    a short hash of ``key`` is appended so that distinct keys keep distinct names."""
    safe = _UNSAFE.sub("_", key)
    if safe == key and safe and not safe.startswith(".") and len(safe) <= max_len:
        return safe
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{safe.lstrip('.')[:max_len]}-{digest}"


@dataclass
class CacheReport:
    """What :meth:`ImageCache.build` did."""

    built: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __str__(self) -> str:
        text = f"{self.built} built, {self.reused} reused, {len(self.failed)} failed"
        shown = [f"\n  {path}: {reason}" for path, reason in self.failed[:5]]
        more = len(self.failed) - len(shown)
        return text + "".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")


class ImageCache:
    """Decoded, EXIF-oriented copies of images downscaled to ``max_side``, as JPEG files under
    ``root/<source>/<max_side>px/<image id>.<digest>.jpg``.

    The digest covers the original's absolute path, size, modification and change times and
    the JPEG quality, so an edited, replaced (even by an older copy) or moved original, or
    another photo with the same id, never finds an old entry; entries of changed originals stay
    behind until the cache folder is deleted. Entries are written atomically, so DataLoader
    workers may fill one cache concurrently (the worst case is an image decoded twice). Every
    read, the first included, returns the pixels of the stored JPEG, so a run's input does not
    depend on whether the cache was warm.
    """

    def __init__(self, root: str | os.PathLike, max_side: int = 512, quality: int = 95) -> None:
        self.root = Path(root)
        self.max_side = int(max_side)
        self.quality = int(quality)

    def __repr__(self) -> str:
        return f"ImageCache({str(self.root)!r}, max_side={self.max_side}, quality={self.quality})"

    def path_for(self, path: str | os.PathLike, source: str, image_id: str) -> Path:
        """The entry of the original ``path`` as it is now."""
        return self._entry(path, source, image_id, _stat(path))

    def read(self, path: str | os.PathLike, source: str, image_id: str) -> np.ndarray:
        """The cached copy of ``path``, made first if there is none of the original as it is."""
        before = _stat(path)
        cached = self._entry(path, source, image_id, before)
        rgb = _decode(cached)
        if rgb is not None:
            return rgb
        if cached.exists():
            log.warning("rebuilding damaged cache entry %s", cached)
        data = self._encode(read_rgb(path, self.max_side), path)
        if _same_file(before, _stat(path)):  # else it changed while being read: not stored
            try:
                _store(cached, data)
            except OSError as e:  # a full or read-only disk slows training but must not stop it
                _warn_once(str(self.root), f"cannot write to the image cache {self.root}: {e}")
        return _decode_bytes(data, path)

    def build(
        self,
        rows: Iterable[tuple[str, str, str]] | pd.DataFrame,
        workers: int = 0,
        progress: bool = True,
    ) -> CacheReport:
        """Make the missing or stale entries of ``rows`` ((path, source, image_id) tuples or a
        table with those columns); ``workers`` > 0 decodes in that many processes."""
        if isinstance(rows, pd.DataFrame):
            rows = rows[["path", "source", "image_id"]].itertuples(index=False, name=None)
        rows = [tuple(map(str, row)) for row in rows]
        report = CacheReport()
        bar = tqdm(total=len(rows), desc=f"image cache {self.max_side}px", disable=not progress)
        if workers > 0:
            with multiprocessing.Pool(workers) as pool:
                self._collect(pool.imap(self._build_one, rows, chunksize=4), report, bar)
        else:
            self._collect(map(self._build_one, rows), report, bar)
        bar.close()
        return report

    @staticmethod
    def _collect(results: Iterable[tuple[str, str, str]], report: CacheReport, bar) -> None:
        for status, path, reason in results:
            if status == "built":
                report.built += 1
            elif status == "reused":
                report.reused += 1
            else:
                report.failed.append((path, reason))
            bar.update()

    def _build_one(self, row: tuple[str, str, str]) -> tuple[str, str, str]:
        path, source, image_id = row
        try:
            before = _stat(path)
            cached = self._entry(path, source, image_id, before)
            if cached.is_file():
                return "reused", path, ""
            data = self._encode(read_rgb(path, self.max_side), path)
            if not _same_file(before, _stat(path)):
                return "failed", path, "changed while it was being read; run again"
            _store(cached, data)
        except UnreadableImage as e:
            return "failed", path, e.reason
        except OSError as e:
            return "failed", path, f"cannot write its cache entry: {e}"
        return "built", path, ""

    def _entry(
        self, path: str | os.PathLike, source: str, image_id: str, st: os.stat_result
    ) -> Path:
        original = os.fsencode(os.path.abspath(path))
        signature = b"\0".join([original, *(str(v).encode() for v in (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.quality))])  # fmt: skip
        digest = hashlib.sha1(signature).hexdigest()[:12]
        folder = self.root / safe_name(source) / f"{self.max_side}px"
        return folder / f"{safe_name(image_id)}.{digest}.jpg"

    def _encode(self, rgb: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        # Full-resolution colour (4:4:4): the copies are training input of a quality model, so
        # the cache should add as little JPEG damage of its own as is affordable.
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        ok, data = cv2.imencode(".jpg", bgr, params)
        if not ok:
            raise UnreadableImage(path, "OpenCV cannot encode its cache copy")
        return data


def _store(cached: Path, data: np.ndarray) -> None:
    with atomic_write(cached, "wb") as f:
        f.write(data.tobytes())


def _stat(path: str | os.PathLike) -> os.stat_result:
    # A cached copy of a deleted original is not served: the manifest points at nothing.
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise UnreadableImage(path, "missing") from None
    except OSError as e:
        raise UnreadableImage(path, e.strerror or str(e)) from e
    except ValueError as e:  # a NUL byte in the path
        raise UnreadableImage(path, str(e)) from e


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _decode(path: Path) -> np.ndarray | None:
    """The pixels of a cache entry; None when it is missing, unreadable or damaged."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    try:
        return _decode_bytes(data, path)
    except UnreadableImage:
        return None


def _decode_bytes(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    if _IMREAD_RGB is not None:
        rgb = cv2.imdecode(data, _IMREAD_RGB)
    else:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb is None:
        raise UnreadableImage(path, "its cache copy does not decode")
    return rgb
