"""The built-in data set: clean photographs cut into crops and degraded by digiKam's four defects.

A technical-quality stand-in for the real data sets, so that iqs trains out of the box with no
download. Each crop of a clean photograph is either left untouched or degraded by one defect
(blur, noise, exposure, compression) at a random strength; its score is the full-reference
similarity (SSIM) of the degraded crop to the clean one, and its class follows from that score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
from hydra.utils import get_class
from skimage.metrics import structural_similarity

from iqs.data import manifest as mf
from iqs.data.dataset import reseed
from iqs.data.images import UnreadableImage, read_rgb
from iqs.data.labels import LabelRule
from iqs.data.sources.base import Source, SourceError
from iqs.utils import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}
CLEAN = "clean"
# Bump when the generation procedure changes, so old caches are not reused.
# 2: clean_augment transforms draw from one stream (they repeated each other's draws).
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class Photo:
    name: str
    rgb: np.ndarray


def builtin_photo_loaders() -> dict[str, Any]:
    """Clean natural colour photographs that ship inside installed packages (no download)."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_image

    def grace_hopper() -> np.ndarray:
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return cv2.cvtColor(
                cv2.imdecode(np.frombuffer(f.read(), np.uint8), 1), cv2.COLOR_BGR2RGB
            )

    return {
        "astronaut": skimage.data.astronaut,  # portrait, studio
        "coffee": skimage.data.coffee,  # still life, close-up
        "rocket": skimage.data.rocket,  # outdoor, sky, machinery
        "china": lambda: load_sample_image("china.jpg"),  # architecture, landscape
        "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],  # indoor object, clutter
        "flower": lambda: load_sample_image("flower.jpg"),  # macro, nature
        "chelsea": skimage.data.chelsea,  # animal, fur
        "grace_hopper": grace_hopper,  # portrait, old photograph
    }


BUILTIN_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "rocket", "china", "motorcycle", "flower", "chelsea", "grace_hopper",
)  # fmt: skip


class SyntheticSource(Source):
    """Degraded crops of clean photographs, generated once into a cache and reused.

    Args:
        name: source name in the manifest.
        cache_dir: folder under which generated crops are cached (one sub-folder per setting).
        seed: generation seed; the same seed gives the same crops, degradations and scores.
        photos_dir: a folder of the user's own clean photos; ``None`` uses the built-in ones.
        photos: built-in photo names to use (ignored with ``photos_dir``).
        fixed_split: photo name -> split for the built-in photos; photos not named get their split
            from the data module's seeded split. Ignored with ``photos_dir``.
        crops_per_photo: clean crops cut from each photograph.
        variants_per_crop: samples made from each clean crop (each untouched or degraded).
        crop_size: side of the square crops in pixels; defects are applied at this size.
        zoom_range: each clean crop covers ``crop_size / zoom`` pixels of the photo, downscaled
            (area interpolation: the crop stays clean) to ``crop_size``, with ``zoom`` drawn
            from this range. Zooming out shows more varied content than a few photos have.
        rotate: also rotate clean crops by a random multiple of 90 degrees.
        min_detail: crops whose clean version has a mean Sobel gradient magnitude (grey levels)
            below this are redrawn (up to 20 times, then the most detailed draw is kept): in flat
            sky or bokeh, blur and compression change nothing and look the same as no defect,
            so their SSIM label cannot be learnt without the reference.
        max_side: photographs with a longer side are downscaled to it first, so that crops of
            large camera photos still show scene content.
        clean_fraction: share of samples left untouched.
        defects: defect name -> ``{transform: albumentations class path, params: {...}}``; the
            strength is drawn from the ranges in ``params``.
        label_edges: two score edges separating rejected / pending / accepted.
        dead_leaves: number of extra training-only clean images drawn from the dead-leaves model
            (random occluding discs with power-law radii: edges and flat areas at every scale,
            like natural images). They add content that is not any one photo's, and never enter
            validation or test.
        clean_augment: ``{transform, params}`` specs applied to each clean crop before it is
            degraded (e.g. hue and channel changes): the same texture in other colours, so a
            model cannot key on the colours of a few photos.
    """

    def __init__(
        self,
        name: str,
        cache_dir: str | os.PathLike,
        seed: int = 0,
        photos_dir: str | os.PathLike | None = None,
        photos: Sequence[str] = BUILTIN_PHOTOS,
        fixed_split: Mapping[str, str] | None = None,
        crops_per_photo: int = 64,
        variants_per_crop: int = 4,
        crop_size: int = 144,
        zoom_range: Sequence[float] = (1.0, 1.0),
        rotate: bool = False,
        min_detail: float = 0.0,
        max_side: int = 768,
        clean_fraction: float = 0.2,
        defects: Mapping[str, Mapping[str, Any]] | None = None,
        label_edges: Sequence[float] = (0.6, 0.85),
        clean_augment: Sequence[Mapping[str, Any]] = (),
        dead_leaves: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.seed = int(seed)
        self.photos_dir = Path(photos_dir).expanduser() if photos_dir else None
        self.photos = list(photos)
        self.fixed_split = dict(fixed_split or {}) if self.photos_dir is None else {}
        self.crops_per_photo = int(crops_per_photo)
        self.variants_per_crop = int(variants_per_crop)
        self.crop_size = int(crop_size)
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        if not 0 < self.zoom_range[0] <= self.zoom_range[1] <= 1:
            raise SourceError(f"{name}: zoom_range must satisfy 0 < low <= high <= 1")
        self.rotate = bool(rotate)
        self.min_detail = float(min_detail)
        self.max_side = int(max_side)
        self.clean_fraction = float(clean_fraction)
        self.defects = {k: _plain(v) for k, v in (defects or {}).items()}
        self.label_edges = [float(e) for e in label_edges]
        self.rule = LabelRule.from_edges(self.label_edges)
        self.clean_augment = [_plain(spec) for spec in clean_augment]
        # Built once and reseeded at each use: a defect is one transform with its own seed;
        # the clean augmentations share one stream (see iqs.data.dataset.reseed).
        self._defect_ops = {k: _transform({**spec, "p": 1.0}) for k, spec in self.defects.items()}
        self._clean_ops = A.Compose([_transform(spec) for spec in self.clean_augment])
        self.dead_leaves = int(dead_leaves)
        if not self.defects and self.clean_fraction < 1:
            raise SourceError(f"{name}: no defects configured but clean_fraction < 1")
        bad = {s for s in self.fixed_split.values() if s not in mf.SPLITS}
        if bad:
            raise SourceError(f"{name}: fixed_split uses unknown split(s) {bad}")
        unknown = set(self.photos) - set(BUILTIN_PHOTOS)
        if self.photos_dir is None and unknown:
            raise SourceError(
                f"{name}: unknown built-in photo(s) {sorted(unknown)}; known: {BUILTIN_PHOTOS}"
            )
        self.cache = Path(cache_dir).expanduser() / self._key()

    # -- public API ---------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.cache / "manifest.csv"

    def prepare(self) -> None:
        if self.manifest_path.exists():
            log.info("%s: reusing cached crops in %s", self.name, self.cache)
            return
        log.info("%s: generating crops into %s (once)", self.name, self.cache)
        rows = []
        for photo in self._load_photos():
            rows.extend(self._generate(photo))
        rows.extend(self._generate_dead_leaves())
        df = pd.DataFrame(rows)
        df["label"] = self.rule(df["score"].to_numpy())
        df = mf.validate(df, where=f"{self.name} generator")
        atomic_write_text(self.cache / "settings.json", json.dumps(self._settings(), indent=2))
        mf.save(df, self.manifest_path)  # written last: its presence marks a complete cache

    def manifest(self) -> pd.DataFrame:
        self.prepare()
        df = mf.load(self.manifest_path)
        df["path"] = [str(self.cache / p) for p in df["path"]]
        return df

    # -- generation ---------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "photos": self._photo_fingerprints(),
            "fixed_split": self.fixed_split,
            "crops_per_photo": self.crops_per_photo,
            "variants_per_crop": self.variants_per_crop,
            "crop_size": self.crop_size,
            "zoom_range": list(self.zoom_range),
            "rotate": self.rotate,
            "min_detail": self.min_detail,
            "max_side": self.max_side,
            "clean_fraction": self.clean_fraction,
            "defects": self.defects,
            "label_edges": self.label_edges,
            "clean_augment": self.clean_augment,
            "dead_leaves": self.dead_leaves,
        }

    def _key(self) -> str:
        blob = json.dumps(self._settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def _photo_files(self) -> list[Path]:
        assert self.photos_dir is not None
        if not self.photos_dir.is_dir():
            raise SourceError(f"{self.name}: photos_dir {self.photos_dir} is not a folder")
        files = sorted(
            p for p in self.photos_dir.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()  # not a broken link
            and not any(part.startswith(".") for part in p.relative_to(self.photos_dir).parts)
        )  # fmt: skip
        if len(files) < 3:
            raise SourceError(
                f"{self.name}: {self.photos_dir} holds {len(files)} photo(s); at least 3 are "
                "needed (one each for train, val and test)"
            )
        return files

    def _photo_fingerprints(self) -> list[str]:
        if self.photos_dir is None:
            return list(self.photos)
        return [
            f"{p.relative_to(self.photos_dir)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in self._photo_files()
        ]

    def _load_photos(self) -> list[Photo]:
        if self.photos_dir is None:
            loaders = builtin_photo_loaders()
            photos = []
            for name in self.photos:
                rgb = self._fit(np.ascontiguousarray(loaders[name]()[..., :3]))
                if rgb is None:
                    raise SourceError(f"{self.name}: crop_size {self.crop_size} exceeds {name}")
                photos.append(Photo(name, rgb))
            return photos
        photos, skipped = [], []
        files = self._photo_files()
        # One name per photo (its crops' ids and files): the relative path, suffix included.
        names = [str(p.relative_to(self.photos_dir)).replace(os.sep, "_") for p in files]
        clash = sorted(n for n, count in Counter(names).items() if count > 1)
        if clash:
            both = [str(p) for p, n in zip(files, names) if n in clash]
            raise SourceError(
                f"{self.name}: photos in {self.photos_dir} would share the name(s) {clash[:3]} "
                f"(sub/a.jpg and sub_a.jpg do): rename one of {both[:4]}"
            )
        for path, name in zip(files, names):
            try:  # EXIF orientation, CMYK, 16-bit; any file name (OpenCV's imread crashed on some)
                rgb = self._fit(read_rgb(path))
            except UnreadableImage:
                rgb = None
            if rgb is None:
                skipped.append(str(path))
                continue
            photos.append(Photo(name, rgb))
        if skipped:
            log.warning(
                "%s: skipped %d unreadable photo(s) or photo(s) smaller than %d px: %s",
                self.name, len(skipped), self.crop_size, ", ".join(skipped[:5]),
            )  # fmt: skip
        if len(photos) < 3:
            raise SourceError(f"{self.name}: fewer than 3 usable photos in {self.photos_dir}")
        return photos

    def _fit(self, rgb: np.ndarray) -> np.ndarray | None:
        """Downscale to ``max_side``; ``None`` when the photo is smaller than one crop."""
        h, w = rgb.shape[:2]
        scale = self.max_side / max(h, w)
        if scale < 1:
            rgb = cv2.resize(
                rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
        return rgb if min(rgb.shape[:2]) >= self.crop_size else None

    def _generate(self, photo: Photo) -> list[dict[str, Any]]:
        # One stream per photo, so adding a photo does not change the crops of the others.
        rng = np.random.default_rng(
            [self.seed, zlib.crc32(photo.name.encode(errors="surrogateescape"))]
        )
        split = self.fixed_split.get(photo.name, "")
        cleans = [self._clean_crop(photo.rgb, rng) for _ in range(self.crops_per_photo)]
        return self._variants(photo.name, split, cleans, rng)

    def _generate_dead_leaves(self) -> list[dict[str, Any]]:
        if not self.dead_leaves:
            return []
        rng = np.random.default_rng([self.seed, zlib.crc32(b"dead_leaves")])
        cleans = [
            self._augment(dead_leaves(self.crop_size, rng), rng) for _ in range(self.dead_leaves)
        ]
        return self._variants("dead_leaves", "train", cleans, rng)

    def _variants(
        self, photo: str, split: str, cleans: list[np.ndarray], rng: np.random.Generator
    ) -> list[dict[str, Any]]:
        (self.cache / "images" / photo).mkdir(parents=True, exist_ok=True)
        defects = sorted(self.defects)
        rows = []
        for c, clean in enumerate(cleans):
            for v in range(self.variants_per_crop):
                if not defects or rng.random() < self.clean_fraction:
                    defect, img = CLEAN, clean
                else:
                    defect = defects[int(rng.integers(len(defects)))]
                    img = self._degrade(clean, defect, int(rng.integers(2**31)))
                rel = Path("images") / photo / f"c{c:04d}_v{v}.png"
                _write_png(self.cache / rel, img)
                rows.append(
                    {
                        "path": str(rel),
                        "source": self.name,
                        "image_id": f"{self.name}:{photo}/c{c:04d}_v{v}",
                        "group": f"{self.name}:{photo}",
                        "split": split,
                        "score": ssim_score(clean, img),
                        "label": 0,
                        "histogram": "",
                        "defect": defect,
                        "photo": photo,
                    }
                )
        return rows

    def _clean_crop(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        best, best_detail = None, -1.0
        for _ in range(20):
            zoom = rng.uniform(*self.zoom_range)
            side = min(round(self.crop_size / zoom), h, w)
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            crop = rgb[y : y + side, x : x + side]
            if side != self.crop_size:
                size = (self.crop_size, self.crop_size)
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            value = detail(crop)
            if value > best_detail:
                best, best_detail = crop, value
            if value >= self.min_detail:
                break
        assert best is not None
        if self.rotate:
            best = np.rot90(best, int(rng.integers(4)))
        return self._augment(np.ascontiguousarray(best), rng)

    def _augment(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.clean_augment:
            return clean
        reseed(self._clean_ops, int(rng.integers(2**31)))
        return self._clean_ops(image=clean)["image"]

    def _degrade(self, img: np.ndarray, defect: str, seed: int) -> np.ndarray:
        op = self._defect_ops[defect]
        op.set_random_seed(seed)
        return op(image=img)["image"]


def dead_leaves(
    size: int, rng: np.random.Generator, discs: int = 1500, oversample: int = 4
) -> np.ndarray:
    """A dead-leaves image: opaque discs of random colour with radii ~ r^-3 (scale invariant,
    like natural images), drawn ``oversample`` times larger and area-downscaled so that edges
    are anti-aliased as a camera's are."""
    big = size * oversample
    # no speckle finer than ~1.5 px: it would pass for noise
    r_min, r_max = 1.5 * oversample, big / 2
    u = rng.random(discs)
    lo, hi = r_min**-2, r_max**-2
    radii = (lo - u * (lo - hi)) ** -0.5  # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
    centres = rng.uniform(0, big, (discs, 2))
    # mostly muted colours, as in photographs: a grey level plus a modest colour cast
    grey = rng.uniform(20, 235, (discs, 1))
    colours = np.clip(grey + rng.normal(0, 35, (discs, 3)), 0, 255)
    canvas = np.full((big, big, 3), colours[0], np.uint8)
    for (x, y), r, colour in zip(centres, radii, colours):
        cv2.circle(canvas, (int(x), int(y)), int(r), tuple(float(c) for c in colour), -1)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def detail(rgb: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the grey image, in grey levels."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    return float(np.mean(np.hypot(gx, gy)))


def ssim_score(clean: np.ndarray, degraded: np.ndarray) -> float:
    """SSIM of ``degraded`` against ``clean`` (Wang et al. 2004 settings), clipped to [0, 1]."""
    value = structural_similarity(
        clean,
        degraded,
        channel_axis=-1,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(np.clip(value, 0.0, 1.0))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """PNG: lossless, so the file adds no compression artefact of its own."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SourceError(f"could not encode {path}")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def _transform(spec: Mapping[str, Any]) -> A.BasicTransform:
    """An albumentations transform from ``{transform: class path, params: {...}, p: ...}``."""
    params = dict(spec.get("params", {}))
    if "p" in spec:
        params["p"] = spec["p"]
    return get_class(spec["transform"])(**params)


def _plain(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A defect spec as plain JSON-able data (Hydra passes DictConfig; lists become lists)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(spec))
