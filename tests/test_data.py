"""Manifest contract, leak-free splits and the built-in synthetic data set."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from iqs.data import manifest as mf
from iqs.data.datamodule import IQSDataModule
from iqs.data.labels import LabelRule
from iqs.data.sources.base import SourceError
from iqs.data.sources.synthetic import CLEAN, SyntheticSource, dead_leaves, detail, ssim_score
from iqs.data.splits import assign_group_splits

DEFECTS = {
    "gaussian_blur": {
        "transform": "albumentations.GaussianBlur",
        "params": {"blur_limit": 0, "sigma_limit": [1.0, 3.0]},
    },
    "gaussian_noise": {
        "transform": "albumentations.GaussNoise",
        "params": {"std_range": [0.05, 0.2]},
    },
    "jpeg": {"transform": "albumentations.ImageCompression", "params": {"quality_range": [5, 30]}},
}
FIXED = {"astronaut": "train", "coffee": "train", "rocket": "train", "flower": "val",
         "chelsea": "test"}  # fmt: skip


def _source(cache: Path, seed: int = 0, **kw) -> SyntheticSource:
    kw = {
        "photos": list(FIXED),
        "fixed_split": FIXED,
        "crops_per_photo": 3,
        "variants_per_crop": 3,
        "crop_size": 64,
        "zoom_range": (0.4, 0.8),
        "min_detail": 20,
        "rotate": True,
        "defects": DEFECTS,
        "clean_augment": [
            {"transform": "albumentations.HueSaturationValue", "params": {"p": 0.8}},
            {"transform": "albumentations.ChannelShuffle", "params": {"p": 0.5}},
        ],
        "dead_leaves": 2,
        **kw,
    }
    return SyntheticSource("synthetic", cache, seed=seed, **kw)


def _relative(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    return df.assign(path=[str(Path(p).relative_to(root)) for p in df["path"]])


def test_synthetic_manifest_is_deterministic_for_a_seed(tmp_path):
    a = _source(tmp_path / "a").manifest()
    b = _source(tmp_path / "b").manifest()
    pd.testing.assert_frame_equal(_relative(a, tmp_path / "a"), _relative(b, tmp_path / "b"))
    for pa, pb in zip(a["path"], b["path"]):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    c = _source(tmp_path / "c", seed=1).manifest()
    assert not np.allclose(a["score"], c["score"])


def test_synthetic_rows_follow_the_contract(tmp_path):
    src = _source(tmp_path)
    df = src.manifest()
    assert len(df) == len(FIXED) * 3 * 3 + 2 * 3  # photos x crops x variants + dead leaves
    assert set(df["split"]) == {"train", "val", "test"}
    leaves = df[df["photo"] == "dead_leaves"]
    assert len(leaves) == 2 * 3 and (leaves["split"] == "train").all()
    assert df.groupby("group")["split"].nunique().max() == 1  # one split per photograph
    assert df["score"].between(0, 1).all()
    np.testing.assert_array_equal(df["label"], LabelRule.from_edges([0.6, 0.85])(df["score"]))
    assert (df.loc[df["defect"] == CLEAN, "score"] == 1.0).all()
    assert (df.loc[df["defect"] != CLEAN, "score"] < 1.0).all()
    assert all(Path(p).is_file() for p in df["path"])
    # The stored score is the SSIM of the stored (lossless) crop against its clean crop.
    df["crop"] = df["image_id"].str.rsplit("_v", n=1).str[0]
    pairs = df.groupby("crop").filter(lambda g: (g["defect"] == CLEAN).any() and len(g) > 1)
    crop = pairs[pairs["defect"] == CLEAN].iloc[0]["crop"]
    rows = pairs[pairs["crop"] == crop]
    clean = cv2.imread(rows[rows["defect"] == CLEAN].iloc[0]["path"])
    for _, row in rows[rows["defect"] != CLEAN].iterrows():
        degraded = cv2.imread(row["path"])
        assert degraded.shape == (64, 64, 3)
        expected = ssim_score(clean[..., ::-1], degraded[..., ::-1])
        assert row["score"] == pytest.approx(expected, abs=1e-6)


def test_synthetic_cache_is_reused(tmp_path):
    src = _source(tmp_path)
    src.prepare()
    stamp = src.manifest_path.stat().st_mtime_ns
    again = _source(tmp_path)
    assert again.cache == src.cache
    again.prepare()
    assert again.manifest_path.stat().st_mtime_ns == stamp
    assert _source(tmp_path, crop_size=48).cache != src.cache  # other settings, other cache


def test_synthetic_from_a_folder_of_own_photos(tmp_path, caplog):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        img = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(photos / ("sub" if i == 4 else "") / f"own_{i}.jpg"), img)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cv2.imwrite(str(photos / "tiny.png"), np.zeros((20, 20, 3), np.uint8))
    src = _source(
        tmp_path / "cache", photos_dir=photos, crops_per_photo=2, variants_per_crop=2, dead_leaves=0
    )
    df = src.manifest()
    assert (df["split"] == "").all()  # the data module splits them by photo
    assert df["group"].nunique() == 5
    assert "synthetic:sub_own_4.jpg" in set(df["group"])
    assert "skipped 2 unreadable photo(s)" in caplog.text and "broken.jpg" in caplog.text
    split = assign_group_splits(df, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert split.groupby("group")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}


def test_own_photos_with_odd_names_links_and_clashing_names(tmp_path):
    import os

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / ".thumbnails").mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "a.png", os.fsdecode(b"caf\xe9.jpg"), ".thumbnails/t.jpg"):
        img = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imencode(Path(name).suffix, img)[1].tofile(photos / name)  # any name, any format
    (photos / "gone.jpg").symlink_to(photos / "nowhere.jpg")  # a broken link: not a photo
    src = _source(tmp_path / "c1", photos_dir=photos, crops_per_photo=1, variants_per_crop=1,
                  dead_leaves=0)  # fmt: skip
    groups = set(src.manifest()["group"])  # OpenCV's imread crashed the process on the Latin-1
    assert groups == {
        "synthetic:a.jpg",
        "synthetic:a.png",
        "synthetic:" + os.fsdecode(b"caf\xe9.jpg"),
    }

    cv2.imwrite(str(photos / "sub" / "b.jpg"), img)
    cv2.imwrite(str(photos / "sub_b.jpg"), img)
    with pytest.raises(SourceError, match=r"share the name\(s\) \['sub_b\.jpg'\]"):
        _source(tmp_path / "c2", photos_dir=photos, dead_leaves=0).manifest()


def test_clean_augmentations_draw_independently(tmp_path):
    """Two 50 % flips of the clean crops: each of the four outcomes happens (seeded alike, each
    transform drew the same number, and the two flips always came together)."""
    flips = [{"transform": f"albumentations.{t}", "params": {"p": 0.5}}
             for t in ("HorizontalFlip", "VerticalFlip")]  # fmt: skip
    src = _source(tmp_path, clean_augment=flips)
    img = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        out = src._augment(img, rng)
        seen.add((np.array_equal(out, img[:, ::-1]), np.array_equal(out, img[::-1]),
                  np.array_equal(out, img[::-1, ::-1])))  # fmt: skip
    assert seen == {(False, False, False), (True, False, False), (False, True, False),
                    (False, False, True)}  # fmt: skip


def test_min_detail_avoids_flat_crops(tmp_path):
    kw = {"photos": ["rocket"], "crops_per_photo": 12, "variants_per_crop": 1, "rotate": False,
          "clean_augment": [], "clean_fraction": 1.0, "dead_leaves": 0}  # fmt: skip
    plain = _source(tmp_path / "a", min_detail=0, **kw)
    picky = _source(tmp_path / "b", min_detail=40, **kw)
    details = []
    for src in (plain, picky):
        df = src.manifest()
        clean = df[df["defect"] == CLEAN]
        details.append([detail(cv2.imread(p)[..., ::-1]) for p in clean["path"]])
    assert np.mean(details[1]) > np.mean(details[0])  # rocket is mostly sky
    assert np.mean(np.array(details[1]) >= 40) >= 0.8


def test_dead_leaves_image_is_covered_and_deterministic():
    a = dead_leaves(32, np.random.default_rng(5))
    b = dead_leaves(32, np.random.default_rng(5))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20  # many discs, anti-aliased edges


def test_ssim_score_orders_degradations():
    rng = np.random.default_rng(0)
    clean = cv2.GaussianBlur(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (0, 0), 1.5)
    mild = np.clip(clean + rng.normal(0, 3, clean.shape), 0, 255).astype(np.uint8)
    strong = np.clip(clean + rng.normal(0, 30, clean.shape), 0, 255).astype(np.uint8)
    assert ssim_score(clean, clean) == 1.0
    assert 1.0 > ssim_score(clean, mild) > ssim_score(clean, strong) >= 0.0


def test_group_split_is_seeded_and_never_splits_a_group():
    df = pd.DataFrame(
        {"group": [f"g{i // 3}" for i in range(90)], "split": "", "source": "s", "label": 0}
    )
    df.loc[0, "split"] = "test"  # an official split is kept, for the row's whole group
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    a = assign_group_splits(df, fractions, seed=1)
    b = assign_group_splits(df, fractions, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(assign_group_splits(df, fractions, seed=2)["split"])
    assert (a.loc[:2, "split"] == "test").all()
    assert a.groupby("group")["split"].nunique().max() == 1
    assert a["split"].value_counts()["train"] == pytest.approx(0.8 * 90, abs=6)


def test_manifest_errors_name_column_and_rows():
    good = {"path": "a.png", "source": "s", "image_id": "s:1", "group": "s:1", "split": "",
            "score": 0.5, "label": 1, "histogram": ""}  # fmt: skip
    df = pd.DataFrame([good, {**good, "image_id": "s:2", "score": 1.5}])
    with pytest.raises(mf.ManifestError, match=r"score outside \[0, 1\].*rows 1"):
        mf.validate(df)
    with pytest.raises(mf.ManifestError, match=r"missing column.*label"):
        mf.validate(df.drop(columns="label"))
    with pytest.raises(mf.ManifestError, match=r"duplicate image_id\(s\) \['s:1'\]"):
        mf.validate(pd.DataFrame([good, good]))
    leak = pd.DataFrame([{**good, "split": "train"}, {**good, "image_id": "s:2", "split": "test"}])
    with pytest.raises(mf.ManifestError, match="more than one split"):
        mf.check_no_leak(leak)


def test_manifest_round_trips_through_csv(tmp_path):
    df = _source(tmp_path).manifest()
    mf.save(df, tmp_path / "m.csv")
    pd.testing.assert_frame_equal(mf.load(tmp_path / "m.csv"), df)


def test_datamodule_saves_manifest_and_serves_batches(tmp_path):
    dm = IQSDataModule(
        {"synthetic": _source(tmp_path / "cache")},
        image_size=48,
        batch_size=4,
        manifest_path=tmp_path / "run" / "manifest.csv",
    )
    dm.prepare_data()
    dm.setup("fit")
    saved = mf.load(tmp_path / "run" / "manifest.csv")
    assert len(saved) == len(dm.manifest)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48)
    assert set(batch) == {"image", "label", "score", "source", "skipped"}
    assert dm.summary().loc[("synthetic", "test"), "total"] == 9  # chelsea: 3 crops x 3 variants


def test_unreadable_image_is_skipped(tmp_path):
    dm = IQSDataModule({"synthetic": _source(tmp_path / "cache")}, image_size=48, batch_size=64)
    dm.setup("fit")
    broken = dm.datasets["val"].paths[0]
    Path(broken).write_bytes(b"not an image")
    batch = next(iter(dm.val_dataloader()))
    assert len(batch["label"]) == len(dm.datasets["val"]) - 1


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_is_reproducible(tmp_path, workers):
    """Same seeds, same augmented batches (albumentations is seeded, also in workers)."""

    def images(torch_seed: int, seed: int) -> torch.Tensor:
        torch.manual_seed(torch_seed)
        dm = IQSDataModule({"synthetic": _source(tmp_path / "cache")}, image_size=48,
                           batch_size=16, num_workers=workers, seed=seed)  # fmt: skip
        dm.setup("fit")
        return torch.cat([b["image"] for b in dm.train_dataloader()])

    first = images(7, 3)
    torch.testing.assert_close(images(7, 3), first, rtol=0, atol=0)
    assert not torch.equal(images(8, 4), first)  # other seeds: other order and flips


def test_flip_is_drawn_independently_of_the_crop(tmp_path):
    """Each sample's augmentation draws crop and flip from one seeded stream: seeding every
    transform alone with the same seed made the flip follow the crop size (correlation -0.4)."""
    from iqs.data.dataset import ManifestDataset
    from iqs.data.transforms import train_transform

    ramp = np.tile(np.linspace(0, 255, 512), (384, 1)).astype(np.uint8)
    path = tmp_path / "ramp.png"
    cv2.imwrite(str(path), np.repeat(ramp[..., None], 3, axis=2))
    row = {"path": str(path), "source": "s", "image_id": "s:1", "label": 0, "score": 0.5}
    tf = train_transform(64, (0.5,) * 3, (0.5,) * 3, scale=(0.2, 1.0), normalize=False)
    ds = ManifestDataset(pd.DataFrame([row]), ["s"], tf, seed=3)
    rows = np.stack([ds[(0, epoch)]["image"][0, 32].numpy() for epoch in range(400)])
    rows = rows.astype(float)
    flipped = rows[:, 0] > rows[:, -1]
    span = np.abs(rows[:, -1] - rows[:, 0])  # how much of the ramp the crop kept
    assert 0.4 < flipped.mean() < 0.6 and span.std() > 10
    assert abs(np.corrcoef(flipped, span)[0, 1]) < 0.15
    again = ManifestDataset(pd.DataFrame([row]), ["s"], tf, seed=3)
    assert torch.equal(again[(0, 5)]["image"], ds[(0, 5)]["image"])  # same seed, same sample


@pytest.mark.parametrize("size", [299, 224, 64])
def test_digikam_resize_feeds_the_model_what_the_exported_graph_sees(size):
    """data.resize=digikam: 299 px nearest neighbour, then the graph's bilinear resize."""
    import skimage.data
    import torch.nn.functional as F

    from iqs.data.transforms import eval_transform
    from iqs.deploy import digikam_preprocess

    rgb = skimage.data.astronaut()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = eval_transform(size, mean, std, "digikam")(image=rgb)["image"][None]
    x = torch.from_numpy(digikam_preprocess(rgb))[None]
    if size != 299:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    want = ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert (got - want).abs().max() < 1e-3
    area = eval_transform(size, mean, std, "area")(image=rgb)["image"][None]
    assert (area - want).abs().max() > 1e-2  # the default differs: this test can tell them apart


def test_antialiased_resize_is_close_to_area_and_crops_like_albumentations():
    """data.resize=antialias: within a few grey levels of OpenCV's area interpolation on a photo,
    and the random resized crop draws albumentations' crops (same seed, same region)."""
    import albumentations as A
    import skimage.data

    from iqs.data.transforms import AntialiasedRandomResizedCrop, resize_antialiased

    rgb = cv2.resize(skimage.data.astronaut(), (512, 384), interpolation=cv2.INTER_AREA)
    for height, width in [(224, 224), (300, 200), (77, 101)]:
        got = resize_antialiased(rgb, height, width)
        assert got.shape == (height, width, 3) and got.dtype == np.uint8
        assert got.flags.c_contiguous
        area = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        assert np.abs(got.astype(float) - area).mean() < 3
    blank = resize_antialiased(np.zeros((384, 512, 3), np.uint8), 224, 224)
    assert np.abs(resize_antialiased(rgb, 224, 224).astype(float) - blank).mean() > 50
    kwargs = {"size": (160, 160), "scale": (0.2, 0.5), "ratio": (0.7, 1.4)}
    for seed in range(5):
        ours = A.Compose([AntialiasedRandomResizedCrop(**kwargs)], seed=seed)(image=rgb)["image"]
        theirs = A.Compose(
            [A.RandomResizedCrop(**kwargs, interpolation=cv2.INTER_AREA)], seed=seed
        )(image=rgb)["image"]
        assert np.abs(ours.astype(float) - theirs).mean() < 3


def test_transforms_end_in_contiguous_channels_first_tensors():
    """Only the memory layout differs from ToTensorV2's transposed view (and from a plain
    permute of the resize): contiguous C x H x W, so that collating a batch is a plain copy."""
    import albumentations as A
    import skimage.data
    import torch.nn.functional as F
    from albumentations.pytorch import ToTensorV2

    from iqs.data.transforms import (
        ToContiguousTensor,
        eval_transform,
        resize_antialiased,
        train_transform,
    )

    rgb = cv2.resize(skimage.data.astronaut(), (160, 120), interpolation=cv2.INTER_AREA)
    for image in (rgb, rgb[..., :1].copy(), rgb.astype(np.float32) / 255, rgb[..., 0].copy()):
        want = A.Compose([ToTensorV2()])(image=image)["image"]
        got = A.Compose([ToContiguousTensor()])(image=image)["image"]
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for image in (rgb, rgb[..., :1].copy()):
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
        want = F.interpolate(pixels, size=(50, 70), mode="bilinear", antialias=True)[0]
        got = resize_antialiased(image, 50, 70)
        assert got.flags.c_contiguous and got.shape == (50, 70, image.shape[2])
        torch.testing.assert_close(torch.from_numpy(got).permute(2, 0, 1), want, rtol=0, atol=0)
    stats = ((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    for tf in (train_transform(64, *stats, seed=0, normalize=False), eval_transform(64, *stats),
               eval_transform(64, *stats, resize="digikam")):  # fmt: skip
        out = tf(image=rgb)["image"]
        assert out.shape == (3, 64, 64) and out.is_contiguous()


def test_loaders_move_uint8_and_normalise_on_the_device(tmp_path):
    """Workers hand over uint8 pixels; normalisation after the transfer equals albumentations'."""
    from iqs.data.transforms import eval_transform

    dm = IQSDataModule({"synthetic": _source(tmp_path / "cache")}, image_size=48, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8
    got = dm.on_after_batch_transfer(batch, 0)["image"]
    rows = dm.datasets["val"]
    from iqs.data.images import read_rgb

    tf = eval_transform(48, dm.mean, dm.std, dm.resize)  # normalising inside albumentations
    expected = torch.stack([tf(image=read_rgb(rows.paths[i]))["image"] for i in range(4)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert dm.normalize(got) is got  # float batches (resize=digikam) pass through


def test_worker_and_pin_memory_defaults(tmp_path, monkeypatch):
    dm = IQSDataModule({"synthetic": _source(tmp_path / "cache")}, image_size=48,
                       num_workers="auto", pin_memory="auto")  # fmt: skip
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert dm.num_workers == 6
    dm.trainer = type("T", (), {"num_devices": 4})()  # 4 DDP processes share the cores
    assert dm.num_workers == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    dm.trainer = None
    assert dm.num_workers == 8
    assert dm.pin_memory == torch.cuda.is_available()
