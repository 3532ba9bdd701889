"""Robust image reading (EXIF orientation, damaged files) and the on-disk resize cache."""

import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from iqs.data import images
from iqs.data.dataset import ManifestDataset, collate_skip_none
from iqs.data.images import CacheReport, ImageCache, UnreadableImage, read_rgb

# A portrait (taller than wide) crop of a natural photo: orientation mistakes change the shape.
PHOTO = skimage.data.astronaut()[:, 64:448]  # 512 x 384


def _jpeg(path: Path, rgb: np.ndarray = PHOTO, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif)
    return path


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _truncated(tmp_path: Path) -> Path:
    data = _jpeg(tmp_path / "whole.jpg").read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_read_rgb_decodes_and_downscales_without_upscaling(tmp_path):
    path = _jpeg(tmp_path / "a.jpg")
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 384, 3) and rgb.flags.writeable
    assert _diff(rgb, PHOTO) < 3
    small = read_rgb(path, max_side=128)
    assert small.dtype == np.uint8 and small.shape == (128, 96, 3)
    expected = cv2.resize(PHOTO, (96, 128), interpolation=cv2.INTER_AREA)
    assert _diff(small, expected) < 4  # decoder downscaling looks like an area resize
    assert read_rgb(path, max_side=1000).shape == (512, 384, 3)
    assert read_rgb(path, max_side=512).shape == (512, 384, 3)


def test_read_rgb_converts_other_modes_to_rgb(tmp_path):
    grey = Image.fromarray(PHOTO[..., 1])
    grey.save(tmp_path / "grey.jpg", quality=95)
    rgb = read_rgb(tmp_path / "grey.jpg")
    assert rgb.shape == (512, 384, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    clear = np.zeros((8, 6, 4), np.uint8)  # fully transparent black: shown on white
    Image.fromarray(clear).save(tmp_path / "clear.png")
    assert (read_rgb(tmp_path / "clear.png") == 255).all()
    deep = np.full((8, 6), 40000, np.uint16)  # 16-bit greyscale is scaled, not clipped
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert (read_rgb(tmp_path / "deep.png") == 40000 // 257).all()
    # a dark 16-bit PGM (Pillow's mode "I") stays dark, whatever its brightest pixel
    (tmp_path / "dark.pgm").write_bytes(b"P5 4 2 65535\n" + np.full(8, 200, ">u2").tobytes())
    assert (read_rgb(tmp_path / "dark.pgm") == 0).all()
    # a colour marked transparent (tRNS) in an RGB or greyscale PNG is shown on white too
    for mode, key in (("RGB", (0, 0, 0)), ("L", 0)):
        Image.new(mode, (4, 2)).save(tmp_path / f"trns_{mode}.png", transparency=key)
        assert (read_rgb(tmp_path / f"trns_{mode}.png") == 255).all(), mode
    Image.fromarray(PHOTO).save(tmp_path / "photo.png")
    small = read_rgb(tmp_path / "photo.png", max_side=128)  # no decoder reduction: area resize
    assert small.shape == (128, 96, 3)
    assert _diff(small, cv2.resize(PHOTO, (96, 128), interpolation=cv2.INTER_AREA)) < 1


def test_read_rgb_applies_exif_orientation(tmp_path):
    path = _jpeg(tmp_path / "rotated.jpg", orientation=6)  # display: 90 degrees clockwise
    rgb = read_rgb(path)
    assert rgb.shape == (384, 512, 3)
    assert _diff(rgb, np.rot90(PHOTO, k=-1)) < 3
    assert _diff(rgb, np.rot90(PHOTO, k=1)) > 20  # the wrong way round is far off
    small = read_rgb(path, max_side=128)
    assert small.shape == (96, 128, 3)
    expected = np.rot90(cv2.resize(PHOTO, (96, 128), interpolation=cv2.INTER_AREA), k=-1)
    assert _diff(small, expected) < 4


def test_cache_stores_copies_already_rotated(tmp_path):
    path = _jpeg(tmp_path / "rotated.jpg", orientation=6)
    cache = ImageCache(tmp_path / "cache", max_side=128)
    rgb = cache.read(path, "folder", "folder:rotated.jpg")
    assert rgb.shape == (96, 128, 3)
    with Image.open(cache.path_for(path, "folder", "folder:rotated.jpg")) as im:
        assert im.size == (128, 96)
        assert im.getexif().get(0x0112, 1) == 1
        stored = np.asarray(im.convert("RGB"))
    small = cv2.resize(PHOTO, (96, 128), interpolation=cv2.INTER_AREA)
    assert _diff(stored, np.rot90(small, k=-1)) < 4
    assert _diff(stored, np.rot90(small, k=1)) > 20


def test_big_jpeg_is_reduced_while_decoding(tmp_path, monkeypatch):
    """A rotated 1152 x 1536 photo read at 128 px is decoded at 1/8 (144 x 192), then finished
    to exactly 128 on the longer displayed side."""
    big = cv2.resize(PHOTO, (1152, 1536), interpolation=cv2.INTER_CUBIC)
    path = _jpeg(tmp_path / "big.jpg", big, orientation=6)
    drafted = []
    real = JpegImageFile.draft

    def spy(im, mode, size):
        result = real(im, mode, size)
        drafted.append(im.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    rgb = read_rgb(path, max_side=128)
    assert drafted == [(144, 192)]
    assert rgb.shape == (96, 128, 3)
    expected = np.rot90(cv2.resize(PHOTO, (96, 128), interpolation=cv2.INTER_AREA), k=-1)
    assert _diff(rgb, expected) < 5
    drafted.clear()
    assert read_rgb(path).shape == (1152, 1536, 3) and drafted == []


@pytest.mark.parametrize("max_side", [None, 64])
@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing", "folder"])
def test_unreadable_files_raise_naming_the_path(tmp_path, kind, max_side):
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.touch()
    elif kind == "truncated":
        path = _truncated(tmp_path)
    elif kind == "text":
        path.write_text("this is not a photo\n")
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(UnreadableImage) as caught:
        read_rgb(path, max_side)
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path)
    expected = {"empty": "empty", "truncated": "truncated", "text": "not an image",
                "missing": "missing", "folder": "not a regular file"}  # fmt: skip
    assert expected[kind] in caught.value.reason


def test_truncated_jpeg_raises_even_if_pillow_was_told_to_load_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(UnreadableImage, match="truncated"):
        read_rgb(_truncated(tmp_path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_is_unreadable(tmp_path, monkeypatch):
    path = _jpeg(tmp_path / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        read_rgb(path, max_side=64)


def test_unreadable_image_survives_pickling():
    error = pickle.loads(pickle.dumps(UnreadableImage("/x/a.jpg", "empty file")))
    assert (error.path, error.reason) == ("/x/a.jpg", "empty file")
    assert str(error) == "unreadable image /x/a.jpg: empty file"


def test_cache_paths_are_safe_and_distinct(tmp_path):
    cache = ImageCache(tmp_path, max_side=256)
    photo = _jpeg(tmp_path / "a.jpg")
    ids = [
        "ava:953619",
        "ava_953619",
        "ava/953619",
        "folder:holiday/IMG_1.jpg",
        "..",
        "",
        "a" * 999,
    ]
    paths = [cache.path_for(photo, "my source", i) for i in ids]
    assert len(set(paths)) == len(ids)
    for p in paths:
        assert p.parent.parent.parent == tmp_path and p.parent.name == "256px"
        assert p.suffix == ".jpg" and not p.name.startswith(".") and len(p.name) < 200
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name)
    plain = cache.path_for(photo, "ava", "ava953619")
    assert plain.parent == tmp_path / "ava" / "256px"
    assert re.fullmatch(r"ava953619\.[0-9a-f]{12}\.jpg", plain.name)


def test_cache_writes_reuses_and_rebuilds_when_the_original_changes(tmp_path, monkeypatch):
    path = _jpeg(tmp_path / "a.jpg")
    calls = []
    real = images.read_rgb
    monkeypatch.setattr(images, "read_rgb", lambda *a, **k: calls.append(a) or real(*a, **k))
    cache = ImageCache(tmp_path / "cache", max_side=128)
    cached = cache.path_for(path, "ava", "ava:1")

    first = cache.read(path, "ava", "ava:1")
    assert first.shape == (128, 96, 3) and len(calls) == 1
    assert cached.parent == tmp_path / "cache" / "ava" / "128px" and cached.is_file()
    second = cache.read(path, "ava", "ava:1")
    # the first read returns the stored copy's pixels too: a warm or cold cache, same input
    assert len(calls) == 1 and np.array_equal(second, first)

    later = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    cache.read(path, "ava", "ava:1")
    assert len(calls) == 2 and cache.path_for(path, "ava", "ava:1") != cached


def test_cache_never_serves_another_or_an_older_photo(tmp_path):
    cache = ImageCache(tmp_path / "cache", max_side=64)
    red, blue = np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 220, 220
    photo = _jpeg(tmp_path / "a.jpg", red)
    old_blue = _jpeg(tmp_path / "old" / "a.jpg", blue)
    os.utime(old_blue, ns=(10**18, 10**18))  # older than the red photo
    assert cache.read(photo, "s", "s:a.jpg")[..., 0].mean() > 200
    shutil.copy2(old_blue, photo)  # `cp -p`: replaced by a copy with an older time
    assert cache.read(photo, "s", "s:a.jpg")[..., 2].mean() > 200
    # the same id under another folder (a `folder` source pointed elsewhere) is another photo
    assert cache.read(old_blue, "s", "s:a.jpg")[..., 2].mean() > 200
    assert cache.read(_jpeg(tmp_path / "b" / "a.jpg", red), "s", "s:a.jpg")[..., 0].mean() > 200


def test_an_unwritable_cache_still_serves_pixels_and_build_reports_it(tmp_path):
    cache = ImageCache(tmp_path / "cache", max_side=64)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "s").write_text("a file where the source's folder belongs")
    path = _jpeg(tmp_path / "a.jpg")
    assert cache.read(path, "s", "s:a").shape == (64, 48, 3)
    report = cache.build([(str(path), "s", "s:a")], progress=False)
    assert report.built == 0 and "cannot write its cache entry" in report.failed[0][1]


def test_cache_rebuilds_a_damaged_entry_and_never_caches_an_unreadable_original(tmp_path):
    cache = ImageCache(tmp_path / "cache", max_side=64)
    path = _jpeg(tmp_path / "a.jpg")
    cached = cache.path_for(path, "s", "s:a")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    assert cache.read(path, "s", "s:a").shape == (64, 48, 3)
    assert cv2.imread(str(cached)) is not None

    with pytest.raises(UnreadableImage, match="truncated"):
        cache.read(_truncated(tmp_path), "s", "s:t")
    assert not list((tmp_path / "cache" / "s" / "64px").glob("s_t-*"))
    cached.unlink()
    path.unlink()  # a cached copy of a deleted original is not served either
    with pytest.raises(UnreadableImage, match="missing"):
        cache.read(path, "s", "s:a")


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_build_reports_built_reused_and_failed(tmp_path, workers):
    good, bad = _jpeg(tmp_path / "good.jpg"), _truncated(tmp_path)
    rows = pd.DataFrame({"path": [str(good), str(bad)], "source": ["s", "s"],
                         "image_id": ["s:good", "s:bad"], "label": [0, 1]})  # fmt: skip
    cache = ImageCache(tmp_path / "cache", max_side=64)

    report = cache.build(rows, workers=workers, progress=False)
    assert (report.built, report.reused) == (1, 0)
    assert [p for p, _ in report.failed] == [str(bad)]
    assert "truncated" in report.failed[0][1]
    assert str(bad) in str(report) and "1 built" in str(report)

    again = cache.build(list(rows[["path", "source", "image_id"]].itertuples(index=False)),
                        workers=workers, progress=False)  # fmt: skip
    assert (again.built, again.reused, len(again.failed)) == (0, 1, 1)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files == [cache.path_for(good, "s", "s:good")]  # no temporary files left behind


def test_cache_report_summary_lists_the_first_failures():
    report = CacheReport(built=3, failed=[(f"/p/{i}.jpg", "empty file") for i in range(8)])
    text = str(report)
    assert text.startswith("3 built, 0 reused, 8 failed")
    assert "/p/0.jpg: empty file" in text and "/p/7.jpg" not in text and "3 more" in text


def _to_tensor(image: np.ndarray) -> dict[str, torch.Tensor]:
    return {"image": torch.from_numpy(cv2.resize(image, (32, 32))).permute(2, 0, 1)}


@pytest.mark.parametrize("cached", [False, True])
def test_dataset_skips_an_unreadable_row_and_warns_once(tmp_path, caplog, cached):
    good, bad = _jpeg(tmp_path / "good.jpg"), _truncated(tmp_path)
    df = pd.DataFrame({"path": [str(good), str(bad), str(good)], "source": ["b", "a", "b"],
                       "image_id": ["b:1", "a:2", "b:3"], "label": [2, 0, 1],
                       "score": [0.9, 0.1, 0.5]})  # fmt: skip
    cache = ImageCache(tmp_path / "cache", max_side=64) if cached else None
    ds = ManifestDataset(df, ["a", "b"], _to_tensor, cache=cache)
    assert ds.source_name(0) == "b" and ds.image_ids[1] == "a:2"

    with caplog.at_level(logging.WARNING, logger="iqs.data.dataset"):
        items = [ds[i] for i in range(3)]
        assert ds[1] is None
    warnings = [r for r in caplog.records if r.name == "iqs.data.dataset"]
    assert len(warnings) == 1 and str(bad) in warnings[0].getMessage()
    assert "truncated" in warnings[0].getMessage()
    if cached:
        assert (
            cache.path_for(good, "b", "b:1").is_file()
            and cache.path_for(good, "b", "b:3").is_file()
        )

    batch = collate_skip_none(items)
    assert batch["image"].shape == (2, 3, 32, 32)
    assert batch["label"].tolist() == [2, 1] and batch["source"].tolist() == [1, 1]
    assert batch["skipped"].item() == 1
    assert collate_skip_none([items[0]])["skipped"].item() == 0
    assert set(collate_skip_none([None, None])) == {"skipped"}


def test_a_batch_of_only_unreadable_photos_is_counted(tmp_path, data_dir):
    from iqs.models.module import build_model
    from tests.conftest import compose_train

    model = build_model(compose_train([], tmp_path, data_dir), ["synthetic"])
    assert model.training_step(collate_skip_none([None, None, None]), 0) is None
    assert model.stage_metrics("train").skipped_images.compute() == 3


def test_under_ddp_a_batch_of_only_unreadable_photos_still_runs_backward(
    tmp_path, data_dir, monkeypatch
):
    # A process returning None skips backward while the others wait in DDP's all-reduce.
    from iqs.models import module as module_mod
    from iqs.models.module import build_model
    from tests.conftest import compose_train

    monkeypatch.setattr(module_mod, "_processes", lambda: 2)
    model = build_model(compose_train([], tmp_path, data_dir), ["synthetic"])
    loss = model.training_step(collate_skip_none([None, None]), 0)
    assert float(loss) == 0.0 and loss.requires_grad
    loss.backward()  # zero gradients for every trainable weight, as DDP needs
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters()
               if p.requires_grad)  # fmt: skip


class _NumberedImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict | None:
        if i == 3:
            return None  # unreadable
        return {"image": torch.full((3, 128, 128), i, dtype=torch.uint8), "label": np.int64(i),
                "score": np.float32(i / 4), "source": np.int64(1)}  # fmt: skip


def test_a_loader_worker_sends_the_per_sample_numbers_by_value():
    """Only the images travel in shared memory: PyTorch gives every tensor it passes between
    processes a shared-memory file and a descriptor handover of its own (1.5-4% of a 2-worker
    loader's speed for label, score, source and skipped)."""
    batch = collate_skip_none([_NumberedImages()[i] for i in range(4)])
    loader = torch.utils.data.DataLoader(
        _NumberedImages(), batch_size=4, num_workers=1, collate_fn=collate_skip_none
    )
    (received,) = list(loader)

    assert type(received) is dict and list(received) == list(batch)
    for key, value in batch.items():
        torch.testing.assert_close(received[key], value, rtol=0, atol=0)  # dtypes too
    assert batch["score"].dtype == torch.float32 and batch["skipped"].item() == 1
    assert received["image"].is_shared()  # PyTorch's own way for the images
    assert not any(received[key].is_shared() for key in ("label", "score", "source", "skipped"))


@pytest.mark.parametrize(
    ("min_side", "shape"),
    [(100, (188, 250, 3)), (300, (375, 500, 3)), (400, (750, 1000, 3)), (None, (1500, 2000, 3))],
)
def test_reduced_decode_keeps_both_sides_above_min_side(tmp_path, min_side, shape):
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), cv2.resize(PHOTO, (2000, 1500), interpolation=cv2.INTER_CUBIC))
    rgb = read_rgb(path, min_side=min_side)
    assert rgb.shape == shape  # 1/8, 1/4, 1/2, full: the largest reduction keeping min_side
    small = (120, 90)
    reference = cv2.resize(read_rgb(path), small, interpolation=cv2.INTER_AREA)
    assert _diff(cv2.resize(rgb, small, interpolation=cv2.INTER_AREA), reference) < 3


_FAULTS_PER_DECODE = """
import resource, sys
from iqs.data.images import read_rgb
path = sys.argv[1]
for _ in range(5):
    read_rgb(path)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    read_rgb(path)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not images.reuse_freed_memory(), reason="glibc's malloc settings only")
def test_decoding_reuses_freed_buffers_instead_of_faulting_in_new_pages(tmp_path):
    """A fresh process decoding the same 1024x768 photo again and again: its buffers (several
    of 2-3 MB each, ~600 pages apiece) come back from the heap, not as new pages that the kernel
    must map and zero (~1,900 faults per decode with glibc's default thresholds)."""
    path = _jpeg(tmp_path / "photo.jpg", cv2.resize(PHOTO, (1024, 768)))
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_DECODE, str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert float(out.stdout) < 30


_FAULTS_AFTER_FREEING_96_MB = """
import resource
import numpy as np
from iqs.data.images import reuse_freed_memory
reuse_freed_memory()
blocks = [np.ones(1 << 20, np.uint8) for _ in range(96)]  # 1 MB each: heap, not mmap
del blocks  # the top 96 MB of the heap is free now
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = [np.ones(1 << 20, np.uint8) for _ in range(96)]
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not images.reuse_freed_memory(), reason="glibc's malloc settings only")
def test_a_step_sized_heap_is_kept_for_the_next_step():
    """A CPU training step frees ~70 MB of activations; glibc's default would hand the free top
    of the heap back (trimming above 64 MB) and fault it in again next step (16,353 faults for
    these 96 MB, measured with those settings)."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_AFTER_FREEING_96_MB],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert int(out.stdout) < 1000
